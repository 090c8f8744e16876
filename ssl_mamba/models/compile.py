"""torch.compile of a network's blocks, in place, for training (`train.compile: true`).

Why blocks and not the whole network: the SS2D scan is our own Triton op (excluded from tracing in
`ops.ss2d`), so every VSS block breaks its graph there anyway; compiling block by block keeps each
graph small, lets blocks of one stage share their compiled code, and leaves the module tree, the
state-dict names and `make_graphed_callables` (train.cuda_graphs) untouched.  What inductor fuses
is the work around the scan: LayerNorms, casts, SiLU gating, residual adds, patch merging and
expanding (Mamba-UNet bf16 step at batch 24 on an H200: see benchmarks/RESULTS.md).

Only training-mode calls run compiled: validation feeds whole volumes whose slice count varies,
and static-shape compilation per count would cost more than it saves.
"""
import types
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

# Layer classes that mark themselves `compile_unit = True` (VSSBlock and the patch layers).
COMPILE_ATTRIBUTE = "compile_unit"


def compile_units(net: nn.Module) -> List[nn.Module]:
    """The submodules of `net` that declare themselves compile units, outermost first."""
    return [m for m in net.modules() if getattr(type(m), COMPILE_ATTRIBUTE, False)]


def compile_blocks(net: nn.Module, backend: str = "inductor") -> int:
    """Compile each compile unit of `net` for training-mode calls; returns how many were compiled.

    Static shapes (a training batch has one shape); the recompile limit is raised because each
    stage's blocks see their own shape.  One compiled function per layer class, taking the module
    as its argument: blocks of one class share it, and a deep copy of the network (an EMA teacher)
    runs its own weights through it.
    """
    _raise_recompile_limit(256)
    units = compile_units(net)
    for module in units:
        module.forward = types.MethodType(_dispatching_forward, module)
        _COMPILED.setdefault((type(module), backend),
                             torch.compile(type(module).forward, backend=backend, dynamic=False))
        module._compile_backend = backend
    return len(units)


_COMPILED: Dict[Tuple[type, str], Callable] = {}


def _dispatching_forward(self: nn.Module, *args, **kwargs):
    """A compile unit's forward: compiled in training mode, the class's eager forward otherwise.
    Bound as a method, so `copy.deepcopy` re-binds it to the copy."""
    if self.training:
        return _COMPILED[(type(self), self._compile_backend)](self, *args, **kwargs)
    return type(self).forward(self, *args, **kwargs)


def _raise_recompile_limit(limit: int) -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:  # renamed across torch versions
            setattr(config, name, limit)
