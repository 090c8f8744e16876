"""One optimizer and one lr schedule per `OptimizerGroup` of a method.

A group without `override` uses the experiment's train.optimizer / lr / momentum /
weight_decay / schedule; an override dict replaces any of those for that group only (the
adversarial method's discriminator uses {"type": "adam", "lr": 1e-4, "betas": (0.9, 0.99),
"schedule": "constant"}).  When an override switches the optimizer type, weight decay defaults to
0 (the optimizer's own default, as in the original Adam discriminator) rather than inheriting
the experiment's SGD value.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from ..config import TrainConfig
from ..errors import ConfigError
from .method import OptimizerGroup
from .schedules import LRSchedule

OPTIMIZERS = ("sgd", "adam", "adamw")
OVERRIDE_KEYS = ("type", "lr", "momentum", "weight_decay", "betas", "schedule", "poly_power")


@dataclass
class GroupSettings:
    """The resolved hyper-parameters of one optimizer group."""

    type: str
    lr: float
    momentum: float
    weight_decay: float
    betas: Optional[tuple]
    schedule: str
    poly_power: float


def resolve_group(group: OptimizerGroup, train: TrainConfig) -> GroupSettings:
    """Merge a group's override over the experiment defaults; unknown keys are ConfigErrors."""
    override: Dict[str, Any] = dict(group.override or {})
    unknown = [k for k in override if k not in OVERRIDE_KEYS]
    if unknown:
        raise ConfigError(
            f"optimizer group {group.name!r}: unknown override key {unknown[0]!r}; known: {', '.join(OVERRIDE_KEYS)}"
        )
    opt_type = override.get("type", train.optimizer)
    default_wd = train.weight_decay if opt_type == train.optimizer else 0.0
    settings = GroupSettings(
        type=opt_type,
        lr=float(override.get("lr", train.lr)),
        momentum=float(override.get("momentum", train.momentum)),
        weight_decay=float(override.get("weight_decay", default_wd)),
        betas=tuple(override["betas"]) if "betas" in override else None,
        schedule=override.get("schedule", train.schedule),
        poly_power=float(override.get("poly_power", train.poly_power)),
    )
    if settings.type not in OPTIMIZERS:
        raise ConfigError(f"optimizer group {group.name!r}: optimizer {settings.type!r}; choose one of {OPTIMIZERS}")
    return settings


def build_optimizer(group: OptimizerGroup, settings: GroupSettings) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay), Adam or AdamW over the group's parameters."""
    params = list(group.params)
    if not params:
        raise ConfigError(f"optimizer group {group.name!r} has no parameters")
    if settings.type == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    betas = settings.betas or (0.9, 0.999)
    cls = torch.optim.Adam if settings.type == "adam" else torch.optim.AdamW
    return cls(params, lr=settings.lr, betas=betas, weight_decay=settings.weight_decay)


def build_schedule(settings: GroupSettings, max_iterations: int) -> LRSchedule:
    return LRSchedule(settings.schedule, settings.lr, max_iterations, settings.poly_power)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr


def build_all(groups: List[OptimizerGroup], train: TrainConfig) -> tuple:
    """(optimizers, schedules) for the groups, in declaration order; names must be unique."""
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ConfigError(f"optimizer group names must be unique, got {names}")
    settings = [resolve_group(g, train) for g in groups]
    optimizers = [build_optimizer(g, s) for g, s in zip(groups, settings)]
    schedules = [build_schedule(s, train.max_iterations) for s in settings]
    return optimizers, schedules
