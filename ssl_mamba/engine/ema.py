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
    pairs = [(t, s_params[name].detach()) for name, t in t_params.items()]
    if not faithful:
        s_buffers = dict(student.named_buffers())
        for name, t in teacher.named_buffers():
            if t.is_floating_point():
                pairs.append((t, s_buffers[name]))
            else:
                t.copy_(s_buffers[name])
    _blend(pairs, alpha)


def _blend(pairs, alpha: float) -> None:
    """t <- alpha t + (1 - alpha) s for each (t, s): the original's mul_ then add_, as two foreach
    calls instead of two kernels per tensor (a UNet teacher has ~140 tensors, and per-tensor launches
    made the update ~2 ms of host time per iteration)."""
    groups = {}  # foreach ops take tensors of one device and dtype
    for t, s in pairs:
        teachers, students = groups.setdefault((t.device, t.dtype, s.dtype), ([], []))
        teachers.append(t)
        students.append(s)
    for teachers, students in groups.values():
        torch._foreach_mul_(teachers, alpha)
        torch._foreach_add_(teachers, students, alpha=1.0 - alpha)
