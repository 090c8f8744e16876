"""Learning-rate schedules as pure functions of the number of completed iterations.

A schedule holds no mutable state: the learning rate used for iteration `i` (0-based) is
`schedule(i)`, so a resumed run recomputes it from the checkpointed iteration alone.  The
trainer sets `schedule(i + 1)` on the optimizer right after step `i`, as the two-network
SSL4MIS scripts do (increment first), which puts lr(5000 of 10000) at 0.01 * 0.5**0.9.
"""
import math
from dataclasses import asdict, dataclass
from typing import Dict

from ..errors import ConfigError

SCHEDULES = ("poly", "cosine", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """lr(step) for one optimizer group; `name` is one of SCHEDULES."""

    name: str
    base_lr: float
    max_iterations: int
    power: float = 0.9

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"unknown lr schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.max_iterations < 1:
            raise ConfigError(f"lr schedule needs max_iterations >= 1, got {self.max_iterations}")

    def __call__(self, step: int) -> float:
        """The learning rate after `step` completed iterations (clamped to [0, max_iterations])."""
        progress = min(max(step, 0), self.max_iterations) / self.max_iterations
        if self.name == "poly":
            return poly_lr(self.base_lr, progress, self.power)
        if self.name == "cosine":
            return cosine_lr(self.base_lr, progress)
        return self.base_lr

    def state_dict(self) -> Dict[str, object]:
        return asdict(self)


def poly_lr(base_lr: float, progress: float, power: float = 0.9) -> float:
    """SSL4MIS poly decay: base * (1 - progress) ** power, progress in [0, 1]."""
    return base_lr * (1.0 - progress) ** power


def cosine_lr(base_lr: float, progress: float) -> float:
    """Half-cosine decay from base to 0 over progress in [0, 1] (no warm-up)."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))
