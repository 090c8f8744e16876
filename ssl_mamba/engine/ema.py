"""Exponential moving average teachers (Tarvainen & Valpola 2017, SSL4MIS `update_ema_variables`)."""
import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of `student` whose parameters never receive gradients."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def ema_alpha(step: int, decay: float) -> float:
    """alpha = min(1 - 1/(step + 1), decay): 0 at step 0, so the first update copies the student."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, decay: float, faithful: bool = False) -> None:
    """teacher <- alpha teacher + (1 - alpha) student, over parameters and (by default) buffers.

    Floating buffers (BatchNorm running mean/var) are averaged with the same alpha and integer
    buffers (num_batches_tracked) copied, so a teacher run in eval mode uses statistics that
    match its averaged weights.  `faithful=True` leaves every buffer untouched, as the original
    code does (it averages `parameters()` only; its teacher runs in train mode, so BN uses batch
    statistics and the stale buffers never matter there).
    """
    alpha = ema_alpha(step, decay)
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("ema_update: teacher and student have different parameter names")
    for name, t in t_params.items():
        t.mul_(alpha).add_(s_params[name].detach(), alpha=1.0 - alpha)
    if faithful:
        return
    s_buffers = dict(student.named_buffers())
    for name, t in teacher.named_buffers():
        s = s_buffers[name]
        if t.is_floating_point():
            t.mul_(alpha).add_(s, alpha=1.0 - alpha)
        else:
            t.copy_(s)
