"""Cross pseudo supervision (Chen et al., CVPR 2021), as SSL4MIS
`train_cross_pseudo_supervision_2D.py`: two networks (any backbones, independently
initialised); each learns, with the ramped weight, CE against the other's detached argmax on
the unlabeled rows.  Total = sum of both networks' losses, one optimizer group over both (SGD
keeps per-parameter state, so this equals the original's two optimizers).
"""
from torch.nn import functional as F

from ssl_mamba.engine.method import METHODS, Method, StepOutput

from ._common import labeled_supervised, pseudo_labels, ramp_weight, require_unlabeled


@METHODS.register("cps")
class CrossPseudoSupervision(Method):
    name = "cps"
    num_networks = (2, 2)

    def training_step(self, batch, step: int) -> StepOutput:
        require_unlabeled(batch, 1, self.name)
        n = batch.n_labeled
        logits1 = self.modules["net1"](batch.image)
        logits2 = self.modules["net2"](batch.image)
        sup1 = labeled_supervised(self, logits1, batch)
        sup2 = labeled_supervised(self, logits2, batch)
        ps1 = F.cross_entropy(logits1[n:], pseudo_labels(logits2[n:]))
        ps2 = F.cross_entropy(logits2[n:], pseudo_labels(logits1[n:]))
        weight = ramp_weight(self, step)
        loss = sup1 + sup2 + weight * (ps1 + ps2)
        logs = {
            "loss/sup1": float(sup1.detach()),
            "loss/sup2": float(sup2.detach()),
            "loss/pseudo1": float(ps1.detach()),
            "loss/pseudo2": float(ps2.detach()),
            "weight/consistency": weight,
        }
        return StepOutput(losses={"seg": loss}, logs=logs)
