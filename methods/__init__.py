"""Supervision strategies; importing this package registers them all with `METHODS`."""
from . import adversarial, co_training, cps, cross_teaching, entropy_min, ict, mean_teacher, supervised, uamt

__all__ = [
    "adversarial",
    "co_training",
    "cps",
    "cross_teaching",
    "entropy_min",
    "ict",
    "mean_teacher",
    "supervised",
    "uamt",
]
