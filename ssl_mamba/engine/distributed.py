"""Multi-process data-parallel training (torch.distributed), as launched by torchrun.

Design (issue 9):
* Launch: `torchrun --nproc_per_node=N -m ssl_mamba.cli train ...`.  torchrun sets RANK,
  WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; `init_distributed` joins the group (NCCL on CUDA,
  gloo on the CPU) and gives rank r the device cuda:LOCAL_RANK.  Without torchrun (WORLD_SIZE
  unset or 1) everything below is a no-op and a run is exactly the 1-process run.
* Batch semantics: method.batch_size (and labeled_batch_size) are GLOBAL.  Every rank draws
  the same global batch from the same seeded sampler and keeps rows r::world of its labeled part
  and rows r::world of its unlabeled part (`ShardedSampler` in the data layer), so the union
  over ranks is exactly the 1-process batch and each rank loads only its own slices.  Both parts
  must divide by the world size (a ConfigError says so otherwise).
* Gradients: instead of wrapping networks in DistributedDataParallel, the trainer all-reduces
  (averages) each optimizer group's gradients after that group's backward and before its step
  (`GradSync.reduce_grads`).  This suits the per-group sequential backward/step of the trainer
  and the adversarial method's thunk losses, and works for any number of networks.  With an
  equal split the averaged gradient is the gradient of the mean of the per-rank losses, so the
  lr stays unchanged: a step equals the 1-process step up to float summation order, for losses
  that are means over rows (CE, MSE).  SSL4MIS's Dice sums intersections over the whole batch
  before dividing, so its sharded mean is close to, not equal to, the global-batch Dice.
* No waiting: with the trainer's deferred read-back (step.py) an iteration queues its collectives
  and never reads a value back mid-step; the losses, logs, the stop vote and the ranks' agreement on
  which parameters had gradients are averaged in one all-reduce and read one iteration later.
* Replicas: rank 0's weights are broadcast at start, every rank then applies identical averaged
  gradients, so students - and EMA teachers computed from them in after_step - stay identical;
  buffers (BatchNorm running statistics) follow rank 0 after every step, as DDP's broadcast_buffers;
  `check_replicas` verifies it (a checksum per tensor) at every checkpoint and fails loudly.
* BatchNorm: per-rank batch statistics by default (each rank normalises over its own rows, so a
  network with BatchNorm in train mode is not exactly the 1-process network on the global batch);
  train.sync_bn converts BatchNorm layers to SyncBatchNorm (CUDA only).
* Randomness: model init is identical on every rank (same seed, then a broadcast); afterwards
  rank r > 0 reseeds its global RNGs from (seed, r), so dropout and teacher noise differ per
  rank; every rank's RNG state is checkpointed, so a resume is exact for the same world size.
* Validation: every rank scores every world_size-th validation volume and the ranks share the
  scores (`gather_results`), so all hold the one-process result; only rank 0 logs and writes files.
"""
import datetime
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, UserError
from ..utils.log import get_logger

log = get_logger("engine.distributed")

# Ranks wait for each other wherever one has more to do: rank 0 writing checkpoints and best weights,
# the first validation's compile and graph capture, the end of a run.  Allow long waits.
BARRIER_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class DistContext:
    """Where this process sits in the job.  world_size 1: single process, nothing distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when init_distributed created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def init_distributed(device_name: str) -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (or reuse one already initialised).

    The backend is NCCL when the run trains on CUDA and gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)
    return DistContext(rank, world, local_rank, owns_group=True)


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """A distributed CUDA run trains rank r on cuda:LOCAL_RANK (train.device cuda / auto), also made the
    current device: NCCL's object collectives (`gather_objects`) use the current one, and a process
    group created by the caller (not `init_distributed`) leaves it at cuda:0 on every rank."""
    if ctx.enabled and device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} CUDA device(s) "
                            "are visible; lower --nproc_per_node")
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


def shard_sizes(batch_size: int, labeled_batch_size: int, world_size: int) -> tuple:
    """(local labeled rows, local unlabeled rows) of the GLOBAL batch; ConfigError unless both divide."""
    unlabeled = batch_size - labeled_batch_size
    if labeled_batch_size % world_size or unlabeled % world_size:
        raise ConfigError(
            f"method.batch_size ({batch_size}, of which labeled_batch_size {labeled_batch_size} labeled and "
            f"{unlabeled} unlabeled) is the global batch: each part must divide by the number of processes "
            f"({world_size})"
        )
    return labeled_batch_size // world_size, unlabeled // world_size


def seed_rank(seed: int, ctx: DistContext) -> None:
    """Give rank r > 0 its own python / numpy / torch streams (dropout, noise); rank 0 keeps the run seed."""
    if not ctx.enabled or ctx.is_main:
        return
    derived = int(np.random.SeedSequence([seed, ctx.rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def convert_sync_bn(modules: nn.ModuleDict, device: torch.device) -> None:
    """train.sync_bn: BatchNorm -> SyncBatchNorm in every module (in place; parameters are kept)."""
    if device.type != "cuda":
        raise ConfigError(f"train.sync_bn is true but the run trains on {device}; SyncBatchNorm needs CUDA "
                          "(set train.sync_bn=false to keep per-process BatchNorm statistics)")
    for key in list(modules.keys()):
        modules[key] = nn.SyncBatchNorm.convert_sync_batchnorm(modules[key])


def broadcast_state(modules: nn.Module, ctx: DistContext, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters and buffers (or only buffers) to every rank.

    At start: identical replicas.  After each step (buffers only, as DDP's broadcast_buffers):
    BatchNorm running statistics, updated from each rank's own rows, and the EMA teachers'
    buffers averaged from them follow rank 0, so replicas stay identical and rank 0's checkpoint
    describes all of them.  One broadcast per dtype (the tensors travel as one flat buffer): a
    broadcast per tensor cost a collective launch for each of a network's dozens of buffers every step.
    """
    if not ctx.enabled:
        return
    tensors = list(modules.buffers()) if buffers_only else list(modules.parameters()) + list(modules.buffers())
    with torch.no_grad():
        for group in _by_dtype(t.data for t in tensors).values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.broadcast(flat, src=0)
            if not ctx.is_main:
                torch._foreach_copy_(group, _views_like(flat, group))


def _by_dtype(tensors: Iterable[torch.Tensor], dtype_of=lambda t: t.dtype) -> Dict[torch.dtype, List[torch.Tensor]]:
    groups: Dict[torch.dtype, List[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(dtype_of(t), []).append(t)
    return groups


def host_to_device(values: List[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host numbers as a device tensor without waiting for the device: on CUDA through pinned memory and a
    non-blocking copy (a plain `torch.tensor(..., device="cuda")` waits for everything queued)."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def _grad_dtype(p: torch.Tensor) -> torch.dtype:
    """The dtype p's gradient has (or would have): the parameter's, unless torch's `grad_dtype` says other."""
    return getattr(p, "grad_dtype", None) or p.dtype


def _views_like(flat: torch.Tensor, like: List[torch.Tensor]) -> List[torch.Tensor]:
    """`flat` cut into views shaped as the tensors of `like`, in order (no copy)."""
    pieces = torch.split(flat[:sum(t.numel() for t in like)], [t.numel() for t in like])
    return [piece.view_as(t) for piece, t in zip(pieces, like)]


class GradSync:
    """Collectives the training step needs: averaged gradients, losses and log scalars.

    Nothing here reads a value back to the host on the deferred path (`mean_` and `reduce_grads`
    only queue work on the device): every read-back is a wait for the GPU, and four of them per
    iteration left two H200s 15-30% idle (twelfth session).  Whether the ranks agreed on which
    parameters have gradients is accumulated on the device (`take_grad_mismatch`) and checked when
    the iteration's values are read back anyway.
    """

    def __init__(self, ctx: DistContext, device: torch.device):
        self.ctx, self.device = ctx, device
        self._presence: Dict[tuple, torch.Tensor] = {}  # cached 0/1 vectors, one per pattern and dtype
        self._mismatch: Optional[torch.Tensor] = None  # this iteration's disagreements so far (device)

    def mean_value(self, value: float) -> float:
        """The mean over ranks of a per-rank scalar (so every rank takes the same branch on NaN)."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.ctx.world_size

    def mean_scalars(self, values: Mapping[str, float]) -> Dict[str, float]:
        """Average a dict of scalars over ranks (every rank must pass the same keys)."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.ctx.world_size for k, v in zip(keys, t.tolist())}

    def mean_(self, values: torch.Tensor) -> torch.Tensor:
        """Average a device tensor over ranks, in place, without waiting for it."""
        dist.all_reduce(values)
        values /= self.ctx.world_size
        return values

    def reduce_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Average .grad over ranks for every parameter that has one, as one flat buffer per dtype.

        Every trainable parameter has a slot in the buffer (zeros where this rank has no gradient),
        followed by one 0/1 flag per parameter saying whether it has one: the buffers are the same size
        on every rank whatever each computed, so a method that used different parameters on different
        ranks cannot hang the collective, and the summed flags show it (each must be 0 or the world
        size).  A mismatch desynchronises the replicas (a rank without the gradient skips that parameter
        in its step) until `take_grad_mismatch`'s count is read back, one or two iterations later, and the
        run stops with an error; no checkpoint is written in between.
        """
        trainable = (p for p in params if p.requires_grad)
        # by gradient dtype, so a missing gradient's zeros match the other ranks' bytes
        for dtype, group in _by_dtype(trainable, _grad_dtype).items():
            flags = self._presence_flags(group, dtype)
            slots = [p.grad.reshape(-1).to(dtype) if p.grad is not None else p.new_zeros(p.numel(), dtype=dtype)
                     for p in group]
            flat = torch.cat(slots + [flags])
            self.mean_(flat)
            summed = flat[-len(group):] * self.ctx.world_size
            disagree = ((summed > 0.5) & (summed < self.ctx.world_size - 0.5)).sum()
            self._mismatch = disagree if self._mismatch is None else self._mismatch + disagree
            averaged = [(p.grad, view) for p, view in zip(group, _views_like(flat, group)) if p.grad is not None]
            if averaged:
                torch._foreach_copy_([g for g, _ in averaged], [view for _, view in averaged])

    def _presence_flags(self, group: List[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """1.0 for each parameter of `group` with a gradient, else 0.0, on the device (cached per pattern)."""
        key = (dtype, tuple(p.grad is not None for p in group))
        if key not in self._presence:
            self._presence[key] = host_to_device([float(x) for x in key[1]], dtype, self.device)
        return self._presence[key]

    def take_grad_mismatch(self) -> torch.Tensor:
        """How many parameters the ranks disagreed about (has a gradient on some ranks, not on others)
        since the last call, as a device scalar; resets the count."""
        mismatch, self._mismatch = self._mismatch, None
        return mismatch if mismatch is not None else torch.zeros((), device=self.device)


def check_grad_mismatch(mismatch: float) -> None:
    """Raise UserError for a nonzero count read back from `GradSync.take_grad_mismatch`."""
    if mismatch > 0:
        raise UserError(f"ranks disagree on which parameters received gradients ({int(round(mismatch))} "
                        "parameter(s) have one on some ranks only); a method must use the same parameters "
                        "on every rank")


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def gather_objects(obj: Any, ctx: DistContext) -> List[Any]:
    """Every rank's `obj`, in rank order (a one-element list when not distributed)."""
    if not ctx.enabled:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_results(compute: Callable[[], Any], ctx: DistContext, what: str) -> List[Any]:
    """Every rank's `compute()`, in rank order.  If it raises on any rank it raises on every rank: the
    failing rank its own exception, the others a UserError naming that rank and its error, so no rank
    is left waiting in a later collective for one that has gone."""
    if not ctx.enabled:
        return [compute()]
    try:
        value, error = compute(), None
    except Exception as exc:  # shared with the other ranks, then re-raised here
        value, error = None, exc
    parts = gather_objects((value, None if error is None else f"{type(error).__name__}: {error}"), ctx)
    if error is not None:
        raise error
    failed = [(rank, message) for rank, (_, message) in enumerate(parts) if message is not None]
    if failed:
        rank, message = failed[0]
        raise UserError(f"{what} failed on rank {rank}: {message}")
    return [value for value, _ in parts]


def tensor_checksums(modules: nn.Module) -> Dict[str, tuple]:
    """(sum, sum of squares, weighted sum) in float64 of every state tensor: a cheap replica fingerprint."""
    out = {}
    for name, t in modules.state_dict().items():
        x = t.detach().double().reshape(-1).cpu()
        weights = torch.arange(1, x.numel() + 1, dtype=torch.float64)
        out[name] = (float(x.sum()), float((x * x).sum()), float((x * weights).sum()))
    return out


def check_replicas(modules: nn.Module, ctx: DistContext, iteration: int) -> None:
    """Raise UserError when any rank's weights or buffers (students, EMA teachers...) differ from rank 0's."""
    if not ctx.enabled:
        return
    sums = gather_objects(tensor_checksums(modules), ctx)
    for rank, other in enumerate(sums[1:], start=1):
        for name, value in sums[0].items():
            if other.get(name) != value:
                raise UserError(f"iteration {iteration}: rank {rank}'s {name!r} differs from rank 0's; the "
                                "replicas diverged (a rank-dependent update outside the averaged gradients?)")


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if `init_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def replicate_rng(states: Optional[List[Any]], ctx: DistContext) -> Optional[Any]:
    """This rank's entry of a checkpoint's per-rank RNG states, or None when the world size changed."""
    if states is None or len(states) != ctx.world_size:
        return None
    return states[ctx.rank]
