"""Losses: SSL4MIS Dice, the supervised 0.5 (CE + Dice), ramps and consistency terms."""
from .consistency import (
    ProjectorHead,
    entropy_map,
    normalized_entropy,
    pixel_projector_consistency,
    pooled_logit_consistency,
    softmax_mse,
)
from .dice import DiceLoss, dice_per_class
from .ramps import consistency_weight, sigmoid_rampup
from .supervised import supervised_loss

__all__ = [
    "DiceLoss",
    "ProjectorHead",
    "consistency_weight",
    "dice_per_class",
    "entropy_map",
    "normalized_entropy",
    "pixel_projector_consistency",
    "pooled_logit_consistency",
    "sigmoid_rampup",
    "softmax_mse",
    "supervised_loss",
]
