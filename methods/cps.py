"""Cross pseudo supervision (Chen et al., CVPR 2021), as SSL4MIS
`train_cross_pseudo_supervision_2D.py`: two networks (any backbones, independently
initialised); each learns, with the ramped weight, CE against the other's detached argmax on
the unlabeled rows.  Total = sum of both networks' losses, one optimizer group over both (SGD
keeps per-parameter state, so this equals the original's two optimizers).
"""
from typing import Dict, Tuple

import torch
from torch.nn import functional as F

from ssl_mamba.engine.method import METHODS, Method, StepOutput

from ._common import labeled_supervised, pseudo_labels, ramp_weight, require_unlabeled


@METHODS.register("cps")
class CrossPseudoSupervision(Method):
    """Also the base of `cross_teaching`, which changes only the two hooks below."""

    name = "cps"
    num_networks = (2, 2)

    def pseudo_term(self, logits_u: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One network's unlabeled loss against the partner's hard labels (CPS: cross-entropy)."""
        return F.cross_entropy(logits_u, target)

    def extra_terms(self, logits1: torch.Tensor, logits2: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Further loss between the two networks over the whole batch, and its logs (CPS: none)."""
        return logits1.new_zeros(()), {}

    def training_step(self, batch, step: int) -> StepOutput:
        require_unlabeled(batch, 1, self.name)
        n = batch.n_labeled
        logits1 = self.modules["net1"](batch.image)
        logits2 = self.modules["net2"](batch.image)
        sup1 = labeled_supervised(self, logits1, batch)
        sup2 = labeled_supervised(self, logits2, batch)
        ps1 = self.pseudo_term(logits1[n:], pseudo_labels(logits2[n:]))
        ps2 = self.pseudo_term(logits2[n:], pseudo_labels(logits1[n:]))
        extra, extra_logs = self.extra_terms(logits1, logits2)
        weight = ramp_weight(self, step)
        loss = sup1 + sup2 + weight * (ps1 + ps2) + extra
        logs = {
            "loss/sup1": sup1.detach(),
            "loss/sup2": sup2.detach(),
            "loss/pseudo1": ps1.detach(),
            "loss/pseudo2": ps2.detach(),
            "weight/consistency": weight,
            **extra_logs,
        }
        return StepOutput(losses={"seg": loss}, logs=logs)
