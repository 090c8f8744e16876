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

Data-parallel runs pass `sync` (a `distributed.GradSync`): each group's gradients are averaged
over ranks between its backward and its optimizer step, and the loss values are averaged over ranks
before the finite check (every rank takes the same branch).

`defer=True` (on_nonfinite="stop") does not wait at all: the losses and logs start their copy to the
host and the iteration returns with `result.pending`; `finish_readback(result)` waits for them later,
once the next iteration is queued, so the GPU never idles while the host reads.  The check then comes
after the optimizer step: a non-finite loss still raises TrainingDiverged naming its iteration, but
the weights in memory have taken that step (and the next).  The trainer resolves every pending
iteration before it validates or writes a checkpoint, so no checkpoint ever holds them.  Under
`sync` the packed values are averaged over ranks on the device before their copy, together with
`votes` (host scalars the caller wants agreed, e.g. a stop request) and the ranks' agreement on which
parameters had gradients, so every rank reads the same numbers and raises, or stops, at the same
iteration.  Host-valued log entries (a ramp's weight, a float the method read back itself) ride
along and are averaged too, as the synchronous path averages every logged number.
"""
import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from ..errors import UserError
from .distributed import check_grad_mismatch, host_to_device
from .method import Method, StepOutput

GRAD_MISMATCH = "_ranks_disagree_on_gradients"  # rides with a deferred data-parallel read-back


class TrainingDiverged(UserError):
    """A loss became NaN or infinite and train.on_nonfinite is "stop"."""


@dataclass
class IterationResult:
    losses: Dict[str, float] = field(default_factory=dict)  # group name -> loss value
    logs: Dict[str, float] = field(default_factory=dict)
    images: Dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: Optional[str] = None  # why the iteration was skipped (non-finite loss), else None
    step: int = 0  # the 0-based iteration index
    pending: Optional["PendingValues"] = None  # deferred read-back not yet resolved (see finish_readback)


class PendingValues:
    """Scalars on their way to the host: one non-blocking copy into pinned memory, and an event."""

    def __init__(self, packed: torch.Tensor, groups: List[str], log_keys: List[str]):
        self.groups, self.log_keys = groups, log_keys
        cuda = packed.is_cuda
        self.host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=cuda)
        self.host.copy_(packed, non_blocking=cuda)
        self.event = torch.cuda.Event() if cuda else None
        if self.event is not None:
            self.event.record()

    def values(self) -> List[float]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


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


def _packed(losses: List[torch.Tensor], logs: Dict[str, object]) -> tuple:
    """(one 1-D tensor: the losses, then every tensor-valued log entry; those entries' keys)."""
    keys = [key for key, value in logs.items() if isinstance(value, torch.Tensor)]
    device = losses[0].device
    scalars = [loss.detach().float().reshape(()) for loss in losses]
    scalars += [logs[key].detach().float().reshape(()).to(device, non_blocking=True) for key in keys]
    return torch.stack(scalars), keys


def _pending(losses: List[torch.Tensor], groups: List[str], logs: Dict[str, object], sync,
             votes: Dict[str, float]) -> "PendingValues":
    """Start the deferred read-back: losses, tensor logs and votes in one tensor (under `sync`, with the
    host-valued logs and the gradient agreement count, all averaged over ranks first), one copy."""
    packed, keys = _packed(losses, logs)
    extra = dict(votes)
    if sync is not None:  # as the synchronous path's mean_scalars: every logged number is the ranks' mean
        extra.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
    parts = [packed]
    if extra:
        parts.append(host_to_device(list(extra.values()), torch.float32, packed.device))
        keys += list(extra)
    if sync is not None:
        parts.append(sync.take_grad_mismatch().float().reshape(1))
        keys.append(GRAD_MISMATCH)
        packed = sync.mean_(torch.cat(parts))
    elif len(parts) > 1:
        packed = torch.cat(parts)
    return PendingValues(packed, groups, keys)


def _read_back(loss: torch.Tensor, logs: Dict[str, object]) -> float:
    """The loss value, with every tensor-valued entry of `logs` replaced by its float (in place),
    from one device-to-host copy."""
    packed, keys = _packed([loss], logs)
    values = packed.tolist()
    logs.update(zip(keys, values[1:]))
    return values[0]


def _diverged(step: int, group: str, value: float, logs: Dict[str, float]) -> str:
    terms = _nonfinite_terms(logs) or [f"loss/{group}"]
    return (f"non-finite loss at iteration {step + 1} in optimizer group {group!r} "
            f"(value {value}; non-finite terms: {', '.join(terms)})")


DIVERGED_HINT = ("; the last checkpoint is kept. Lower train.lr, try train.amp=none, "
                 "or set train.on_nonfinite=skip")


def finish_readback(result: IterationResult) -> IterationResult:
    """Fill a deferred iteration's losses and logs (waiting for its copy if it is still under way);
    raise TrainingDiverged if a loss is not finite.  A no-op for an iteration read back already."""
    pending, result.pending = result.pending, None
    if pending is None:
        return result
    values = pending.values()
    n = len(pending.groups)
    result.logs.update(zip(pending.log_keys, values[n:]))
    result.losses = dict(zip(pending.groups, values[:n]))
    check_grad_mismatch(result.logs.pop(GRAD_MISMATCH, 0.0))
    for group, value in result.losses.items():
        _check_finite(result, group, value, "stop")
    return result


def _resolve_loss(out: StepOutput, name: str, amp_ctx_factory) -> torch.Tensor:
    if name not in out.losses:
        raise RuntimeError(f"training_step returned no loss for optimizer group {name!r}; got {sorted(out.losses)}")
    loss = out.losses[name]
    if callable(loss):
        with amp_ctx_factory():
            loss = loss()
    return loss


def run_iteration(method: Method, optimizers: list, batch, step: int, device: torch.device,
                  amp: str = "none", on_nonfinite: str = "stop", sync=None, graphs=None,
                  defer: bool = False, votes: Optional[Callable[[], Dict[str, float]]] = None) -> IterationResult:
    """Forward, per-group backward/step, after_step.  `step` is the 0-based iteration index;
    `graphs`: the run's `cuda_graphs.GraphedNetworks`, if its networks are CUDA-graphed; `defer` and
    `votes` (deferred only: called once the iteration's work is queued, so a request that arrived
    during it counts; the values come back in the result's logs): see the module docstring."""
    if defer and on_nonfinite != "stop":
        raise ValueError("a deferred read-back needs on_nonfinite='stop'")
    if votes and not defer:
        raise ValueError("votes ride with a deferred read-back (defer=True)")
    amp_ctx = lambda: autocast_context(device, amp, cache=graphs is None)  # noqa: E731  (a fresh one per use)
    if graphs is not None:
        graphs.new_iteration()
    with amp_ctx():
        out = method.training_step(batch, step)
    result = IterationResult(logs=dict(out.logs), images=dict(out.images), step=step)
    groups, losses = method.optimizer_groups(), []
    for index, (group, optimizer) in enumerate(zip(groups, optimizers)):
        loss = _resolve_loss(out, group.name, amp_ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not defer:
            result.skipped = _read_and_check(loss, group.name, result, index == 0, on_nonfinite, sync)
            if result.skipped:
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                return result
        if sync is not None:
            sync.reduce_grads(p for pg in optimizer.param_groups for p in pg["params"])
            if not defer:  # this path waits anyway; the deferred one checks at its read-back
                check_grad_mismatch(float(sync.take_grad_mismatch()))
        optimizer.step()
        losses.append(loss)
    method.after_step(step)
    if defer:  # the values leave in one copy, read by finish_readback
        result.pending = _pending(losses, [g.name for g in groups], result.logs, sync, votes() if votes else {})
    return result


def _read_and_check(loss: torch.Tensor, group: str, result: IterationResult, first: bool, on_nonfinite: str,
                    sync) -> Optional[str]:
    """The synchronous read-back of one group's loss (with the first group, the logs too): raises
    TrainingDiverged or returns the skip message for a non-finite loss, else None."""
    value = _read_back(loss, result.logs if first else {})
    if sync is not None:
        value = sync.mean_value(value)
    result.losses[group] = value
    return _check_finite(result, group, value, on_nonfinite)


def _check_finite(result: IterationResult, group: str, value: float, on_nonfinite: str) -> Optional[str]:
    """None for a finite loss; else TrainingDiverged (on_nonfinite "stop") or the skip message."""
    if math.isfinite(value):
        return None
    message = _diverged(result.step, group, value, result.logs)
    if on_nonfinite == "stop":
        raise TrainingDiverged(message + DIVERGED_HINT)
    return message
