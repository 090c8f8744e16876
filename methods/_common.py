"""Pieces shared by several methods: the ramped weight, the labeled-rows supervised term,
teacher inputs and forwards, pseudo labels, option checks and the EMA-teacher base class."""
import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from ssl_mamba.data.batch import Batch
from ssl_mamba.engine.ema import ema_update, make_teacher
from ssl_mamba.engine.method import Method
from ssl_mamba.errors import ConfigError
from ssl_mamba.losses import consistency_weight, supervised_loss


def ramp_weight(method: Method, step: int) -> float:
    """The consistency weight w(step) of the experiment's method section (§4.1 ramp)."""
    m = method.cfg.method
    return consistency_weight(step, m.consistency, m.consistency_rampup, m.rampup_epoch_iters)


def labeled_supervised(method: Method, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """0.5 (CE + Dice) on the labeled rows; `logits` rows follow the batch order (labeled first)."""
    n = batch.n_labeled
    return supervised_loss(logits[:n], batch.labeled_label, method.cfg.data.num_classes)


def pseudo_labels(logits: torch.Tensor) -> torch.Tensor:
    """Hard labels argmax_c, detached: (N, K, H, W) -> (N, H, W) int64."""
    return torch.argmax(logits.detach(), dim=1)


def teacher_noise(x: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    """x + clamp(N(0, 1) * std, -clip, clip), the mean-teacher input perturbation."""
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)


@contextlib.contextmanager
def module_mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Temporarily put `module` in train or eval mode, restoring its previous mode after."""
    was_training = module.training
    module.train(training)
    try:
        yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Run `module` without recording gradients for its parameters (inputs still get them)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def check_choice(method: Method, key: str, value: str, choices: Sequence[str]) -> None:
    """Raise ConfigError naming `method.options.<key>` when `value` is not one of `choices`."""
    if value not in choices:
        raise ConfigError(
            f"method {method.name!r}: 'method.options.{key}' is {value!r}; choose one of {', '.join(choices)}"
        )


def require_unlabeled(batch: Batch, minimum: int, method_name: str) -> None:
    """Methods with an unlabeled term need at least `minimum` unlabeled rows per batch."""
    if batch.n_unlabeled < minimum:
        raise ConfigError(
            f"method {method_name!r} needs at least {minimum} unlabeled image(s) per batch, got "
            f"{batch.n_unlabeled} (method.batch_size - method.labeled_batch_size)"
        )


@dataclass
class TeacherOptions:
    """Options of every EMA-teacher method.

    teacher_mode: "train" (default, as the originals: the teacher's dropout is on and its
        BatchNorm uses batch statistics, so its targets are perturbed like the student's, which
        Mean Teacher asks for and UA-MT's Monte-Carlo-dropout uncertainty needs) or "eval"
        (dropout off, BN running statistics).  On ACDC (7 cases, 30k iterations) "eval" made the
        student's validation Dice fall from 0.783 at 8k to 0.71, "train" held 0.77-0.80
        (results/README.md).
    average_buffers: EMA the BN buffers too (default); false leaves them as at creation, as the
        originals (the buffers only matter when the teacher runs in "eval" mode).
    noise_std / noise_clip: the teacher's input noise clamp(N(0,1) std, -clip, clip) where used.
    """

    teacher_mode: str = "train"
    average_buffers: bool = True
    noise_std: float = 0.1
    noise_clip: float = 0.2


class TeacherMethod(Method):
    """A single student `net1` plus its EMA teacher `ema1`, updated after every step."""

    Options = TeacherOptions

    def __init__(self, cfg, networks):
        super().__init__(cfg, networks)
        check_choice(self, "teacher_mode", self.options.teacher_mode, ("eval", "train"))
        self.modules["ema1"] = make_teacher(self.modules["net1"])

    @property
    def student(self) -> nn.Module:
        return self.modules["net1"]

    @property
    def teacher(self) -> nn.Module:
        return self.modules["ema1"]

    def no_grad_networks(self):
        return {"ema1": self.teacher}

    @torch.no_grad()
    def teacher_probs(self, x: torch.Tensor, noisy: bool) -> torch.Tensor:
        """softmax(teacher(x)) without gradients, with the configured mode and optional noise."""
        if noisy:
            x = teacher_noise(x, self.options.noise_std, self.options.noise_clip)
        with module_mode(self.teacher, self.options.teacher_mode == "train"):
            return torch.softmax(self.teacher(x), dim=1)

    def after_step(self, step: int) -> None:
        faithful = not self.options.average_buffers
        ema_update(self.teacher, self.student, step, self.cfg.method.ema_decay, faithful=faithful)
