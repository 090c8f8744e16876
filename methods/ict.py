"""Interpolation consistency training (Verma et al., IJCAI 2019), as SSL4MIS
`train_interpolation_consistency_training_2D.py`.

Unlabeled rows are paired (first half with second half), mixed with lambda ~ Beta(a, a) per
pair, and the student's softmax on the mix must match the same mix of the EMA teacher's
softmax on the two originals (no noise).  The original assumes |U| = labeled batch size; here
the pairs come from the actual unlabeled count (an odd last row is left out).
"""
from dataclasses import dataclass

import torch

from ssl_mamba.engine.method import METHODS, StepOutput
from ssl_mamba.errors import ConfigError
from ssl_mamba.losses import softmax_mse

from ._common import TeacherMethod, TeacherOptions, labeled_supervised, ramp_weight, require_unlabeled


@dataclass
class ICTOptions(TeacherOptions):
    """alpha: the Beta(alpha, alpha) mixing distribution (original `ict_alpha` 0.2)."""

    alpha: float = 0.2


@METHODS.register("ict")
class InterpolationConsistency(TeacherMethod):
    name = "ict"
    num_networks = (1, 1)
    Options = ICTOptions

    def __init__(self, cfg, networks):
        super().__init__(cfg, networks)
        if self.options.alpha <= 0:
            raise ConfigError(f"method 'ict': 'method.options.alpha' must be > 0, got {self.options.alpha}")

    def mix_factors(self, pairs: int, like: torch.Tensor) -> torch.Tensor:
        """lambda ~ Beta(alpha, alpha), one per pair, shape (pairs, 1, 1, 1)."""
        a = torch.tensor(self.options.alpha)
        lam = torch.distributions.Beta(a, a).sample((pairs, 1, 1, 1))
        return lam.to(device=like.device, dtype=like.dtype, non_blocking=True)  # no device sync for a small upload

    @staticmethod
    def mix_pairs(batch) -> int:
        return batch.unlabeled_image.shape[0] // 2

    def graph_input(self, batch):
        """The student sees the labeled rows and one mix per pair of unlabeled rows."""
        return batch.image[: batch.n_labeled + self.mix_pairs(batch)]

    def training_step(self, batch, step: int) -> StepOutput:
        require_unlabeled(batch, 2, self.name)
        unlabeled = batch.unlabeled_image
        pairs = self.mix_pairs(batch)
        u0, u1 = unlabeled[:pairs], unlabeled[pairs: 2 * pairs]
        lam = self.mix_factors(pairs, unlabeled)
        mixed = (1.0 - lam) * u0 + lam * u1
        logits = self.student(torch.cat([batch.labeled_image, mixed], dim=0))  # rows: labeled, then mixes
        sup = labeled_supervised(self, logits, batch)
        target = (1.0 - lam) * self.teacher_probs(u0, noisy=False) + lam * self.teacher_probs(u1, noisy=False)
        cons = softmax_mse(logits[batch.n_labeled:].softmax(dim=1), target)
        weight = ramp_weight(self, step)
        loss = sup + weight * cons
        logs = {"loss/sup": sup.detach(), "loss/consistency": cons.detach(), "weight/consistency": weight}
        return StepOutput(losses={"seg": loss}, logs=logs)
