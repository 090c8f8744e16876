"""Mean teacher (Tarvainen & Valpola, NeurIPS 2017), as in SSL4MIS `train_mean_teacher_2D.py`.

The student sees the clean batch; the EMA teacher sees the unlabeled rows plus clamped
Gaussian noise; the consistency is the mean squared difference of their softmax maps on the
unlabeled rows, weighted by the sigmoid ramp.  The teacher runs in train mode, as in the
original (reference §8 item 10 lists it as a defect; at 30k iterations on ACDC it is the better
choice, see `TeacherOptions`); the 1000-iteration zero gate is off by default: set
`average_buffers: false`, `zero_before: 1000` for the original exactly.
"""
from dataclasses import dataclass

from ssl_mamba.engine.method import METHODS, StepOutput
from ssl_mamba.losses import softmax_mse

from ._common import TeacherMethod, TeacherOptions, labeled_supervised, ramp_weight, require_unlabeled


@dataclass
class MeanTeacherOptions(TeacherOptions):
    """zero_before: iterations during which the consistency term is forced to 0 (original: 1000)."""

    zero_before: int = 0


@METHODS.register("mean_teacher")
class MeanTeacher(TeacherMethod):
    name = "mean_teacher"
    num_networks = (1, 1)
    Options = MeanTeacherOptions

    def training_step(self, batch, step: int) -> StepOutput:
        require_unlabeled(batch, 1, self.name)
        logits = self.student(batch.image)
        sup = labeled_supervised(self, logits, batch)
        target = self.teacher_probs(batch.unlabeled_image, noisy=True)
        student_u = logits[batch.n_labeled:].softmax(dim=1)
        cons = softmax_mse(student_u, target)
        weight = 0.0 if step < self.options.zero_before else ramp_weight(self, step)
        loss = sup + weight * cons
        logs = {"loss/sup": sup.detach(), "loss/consistency": cons.detach(), "weight/consistency": weight}
        return StepOutput(losses={"seg": loss}, logs=logs)
