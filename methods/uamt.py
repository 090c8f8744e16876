"""Uncertainty-aware mean teacher (Yu et al., MICCAI 2019), as SSL4MIS
`train_uncertainty_aware_mean_teacher_2D.py`.

The teacher's uncertainty is the entropy of its mean softmax over T noisy passes (4 rounds over
the unlabeled rows duplicated twice, for T = 8).  Pixels with entropy under
(0.75 + 0.25 sigmoid_rampup(step, max_iterations)) * ln(K) enter the masked MSE
sum(mask (p_s - p_t)^2) / (2 sum(mask) + 1e-16).  The original scales by ln 2 whatever K is:
`threshold_scale: ln_2` reproduces it; the default ln(K) is the maximum entropy for K classes.
"""
import math
from dataclasses import dataclass

import torch

from ssl_mamba.engine.method import METHODS, StepOutput
from ssl_mamba.errors import ConfigError
from ssl_mamba.losses import entropy_map, sigmoid_rampup

from ._common import TeacherMethod, TeacherOptions, check_choice, labeled_supervised, ramp_weight, require_unlabeled


@dataclass
class UAMTOptions(TeacherOptions):
    """passes: teacher passes T for the uncertainty (even); threshold_scale: ln_k | ln_2."""

    passes: int = 8
    threshold_scale: str = "ln_k"


def uncertainty_threshold(step: int, max_iterations: int, num_classes: int, scale: str) -> float:
    """(0.75 + 0.25 sigmoid_rampup(step, max_iterations)) * ln(K or 2)."""
    log_max = math.log(2) if scale == "ln_2" else math.log(num_classes)
    return (0.75 + 0.25 * sigmoid_rampup(step, max_iterations)) * log_max


@METHODS.register("uamt")
class UncertaintyAwareMeanTeacher(TeacherMethod):
    name = "uamt"
    num_networks = (1, 1)
    Options = UAMTOptions

    def __init__(self, cfg, networks):
        super().__init__(cfg, networks)
        check_choice(self, "threshold_scale", self.options.threshold_scale, ("ln_k", "ln_2"))
        if self.options.passes < 2 or self.options.passes % 2:
            raise ConfigError(f"method 'uamt': 'method.options.passes' must be an even int >= 2, got {self.options.passes}")

    @torch.no_grad()
    def uncertainty(self, unlabeled: torch.Tensor) -> torch.Tensor:
        """Entropy of the teacher's mean softmax over T noisy passes: (U, 1, H, W)."""
        rounds = self.options.passes // 2
        doubled = unlabeled.repeat(2, 1, 1, 1)  # (2U, 1, H, W): two noisy copies per round
        probs = torch.cat([self.teacher_probs(doubled, noisy=True) for _ in range(rounds)], dim=0)
        n_u = unlabeled.shape[0]
        mean_probs = probs.reshape(self.options.passes, n_u, *probs.shape[1:]).mean(dim=0)  # (T, U, K, H, W) -> (U, K, H, W)
        return entropy_map(mean_probs)

    def training_step(self, batch, step: int) -> StepOutput:
        require_unlabeled(batch, 1, self.name)
        logits = self.student(batch.image)
        sup = labeled_supervised(self, logits, batch)
        target = self.teacher_probs(batch.unlabeled_image, noisy=True)
        uncertainty = self.uncertainty(batch.unlabeled_image)
        threshold = uncertainty_threshold(
            step, self.cfg.train.max_iterations, self.cfg.data.num_classes, self.options.threshold_scale
        )
        mask = (uncertainty < threshold).float()  # (U, 1, H, W), broadcast over the K channels
        dist = (logits[batch.n_labeled:].softmax(dim=1) - target) ** 2
        cons = torch.sum(mask * dist) / (2 * torch.sum(mask) + 1e-16)
        weight = ramp_weight(self, step)
        loss = sup + weight * cons
        logs = {
            "loss/sup": sup.detach(),
            "loss/consistency": cons.detach(),
            "weight/consistency": weight,
            "uamt/threshold": threshold,
            "uamt/mask_fraction": mask.mean(),
        }
        return StepOutput(losses={"seg": loss}, logs=logs)
