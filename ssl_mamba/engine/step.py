"""One training iteration, exactly as the Method contract describes it.

    out = method.training_step(batch, step)            # under autocast when AMP is on
    for each optimizer group, in declaration order:
        loss = out.losses[name]  (a thunk is called now, after the earlier groups stepped)
        zero grads; loss.backward(); optimizer.step()
    method.after_step(step)

The loss is read back to the host after its backward is queued, together with the method's
tensor-valued logs, in one copy: reading it before the backward left the GPU idle while the host
waited and then queued the backward (one sync per log value made it worse).  A non-finite loss
is caught there, before the optimizer step, so no weight changes: with on_nonfinite="stop" it
raises TrainingDiverged (naming the iteration and the loss terms); with "skip" the gradients are
dropped, the rest of the iteration (remaining groups and after_step) is skipped and the caller
counts it.

Data-parallel runs pass `sync` (a `distributed.GradSync`): each group's loss value is averaged
over ranks before the finite check (every rank takes the same branch), and the group's
gradients are averaged over ranks between its backward and its optimizer step.
"""
import contextlib
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from ..errors import UserError
from .method import Method, StepOutput


class TrainingDiverged(UserError):
    """A loss became NaN or infinite and train.on_nonfinite is "stop"."""


@dataclass
class IterationResult:
    losses: Dict[str, float] = field(default_factory=dict)  # group name -> loss value
    logs: Dict[str, float] = field(default_factory=dict)
    images: Dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: Optional[str] = None  # why the iteration was skipped (non-finite loss), else None


def autocast_context(device: torch.device, amp: str, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast for amp == "bf16", a no-op otherwise.  cache=False turns off autocast's cache of
    low-precision weight copies, which CUDA-graphed networks require (the copies live in the graph)."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def _nonfinite_terms(logs: Dict[str, float]) -> List[str]:
    bad = []
    for key, value in logs.items():
        try:
            if not math.isfinite(float(value)):
                bad.append(key)
        except (TypeError, ValueError):
            continue
    return bad


def _read_back(loss: torch.Tensor, logs: Dict[str, object]) -> float:
    """The loss value, with every tensor-valued entry of `logs` replaced by its float (in place),
    from one device-to-host copy."""
    keys = [key for key, value in logs.items() if isinstance(value, torch.Tensor)]
    scalars = [loss.detach().float().reshape(())] + [logs[key].detach().float().reshape(()).to(loss.device)
                                                     for key in keys]
    values = torch.stack(scalars).tolist()
    logs.update(zip(keys, values[1:]))
    return values[0]


def _resolve_loss(out: StepOutput, name: str, amp_ctx_factory) -> torch.Tensor:
    if name not in out.losses:
        raise RuntimeError(f"training_step returned no loss for optimizer group {name!r}; got {sorted(out.losses)}")
    loss = out.losses[name]
    if callable(loss):
        with amp_ctx_factory():
            loss = loss()
    return loss


def run_iteration(method: Method, optimizers: list, batch, step: int, device: torch.device,
                  amp: str = "none", on_nonfinite: str = "stop", sync=None, graphs=None) -> IterationResult:
    """Forward, per-group backward/step, after_step.  `step` is the 0-based iteration index;
    `graphs`: the run's `cuda_graphs.GraphedNetworks`, if its networks are CUDA-graphed."""
    amp_ctx = lambda: autocast_context(device, amp, cache=graphs is None)  # noqa: E731  (a fresh one per use)
    if graphs is not None:
        graphs.new_iteration()
    with amp_ctx():
        out = method.training_step(batch, step)
    result = IterationResult(logs=dict(out.logs), images=dict(out.images))
    for index, (group, optimizer) in enumerate(zip(method.optimizer_groups(), optimizers)):
        loss = _resolve_loss(out, group.name, amp_ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = _read_back(loss, result.logs if index == 0 else {})
        if sync is not None:
            value = sync.mean_value(value)
        result.losses[group.name] = value
        if not math.isfinite(value):
            terms = _nonfinite_terms(result.logs) or [f"loss/{group.name}"]
            message = (f"non-finite loss at iteration {step + 1} in optimizer group {group.name!r} "
                       f"(value {value}; non-finite terms: {', '.join(terms)})")
            if on_nonfinite == "stop":
                raise TrainingDiverged(message + "; the last checkpoint is kept. "
                                       "Lower train.lr, try train.amp=none, or set train.on_nonfinite=skip")
            result.skipped = message
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            return result
        if sync is not None:
            sync.reduce_grads(p for pg in optimizer.param_groups for p in pg["params"])
        optimizer.step()
    method.after_step(step)
    return result
