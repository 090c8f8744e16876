"""torch.compile of a network's blocks, in place (`train.compile`, `eval.compile`).

Why blocks and not the whole network: compiling block by block keeps each graph small, lets blocks
of one stage share their compiled code, and leaves the module tree, the state-dict names and
`make_graphed_callables` (train.cuda_graphs) untouched.  On the triton scan backend a VSS block is
one graph: the fused SS2D kernels are the custom ops `ssl_mamba::ss2d_scan_fwd` / `_bwd`
(`ops.triton_ss2d`), opaque nodes with known output shapes, and the code around them (the x_dbl
projection, the fp32 widening of x, the sums over the four directions and over channel blocks,
the cast back to x's dtype) is traced, so inductor can fuse it with the LayerNorms, SiLU gating,
residual adds and gradient ops of the block.  The other backends (torch, mamba_ssm) are not traced
(`ops.ss2d._ss2d_scan_unfused`): there every VSS block breaks its graph at the scan.  Patch merging
and expanding compile as units too (Mamba-UNet bf16 step at batch 24 on an H200, before the custom
ops: see benchmarks/RESULTS.md), and so do Swin-UNet's Swin blocks (window attention, MLP, norms).

Training-mode and eval-mode calls are compiled separately, each on request: training with
static shapes; validation (eval.compile) feeds whole volumes whose slice count varies, so its
compiled code turns the batch dimension dynamic at the second size it sees instead of compiling
once per size.
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


def compile_blocks(net: nn.Module, backend: str = "inductor", train: bool = True, eval: bool = False) -> int:
    """Compile each compile unit of `net` for training-mode calls (`train`, static shapes: a
    training batch has one shape) and/or eval-mode calls (`eval`, shapes dynamic after the first
    change: validation batches are a volume's slices, 6-20 for ACDC); returns how many units.

    One compiled function per (layer class, mode) taking the module as its argument: blocks of one
    class share it, and a deep copy of the network (an EMA teacher) runs its own weights through it.
    The recompile limit is raised because each stage's blocks see their own shape.
    """
    modes = tuple(mode for mode, on in (("train", train), ("eval", eval)) if on)
    if not modes:
        raise ValueError("compile_blocks: nothing to compile (train and eval are both False)")
    _raise_recompile_limit(256)
    units = compile_units(net)
    for module in units:
        for mode in modes:
            _COMPILED.setdefault((type(module), backend, mode),
                                 torch.compile(type(module).forward, backend=backend,
                                               dynamic=False if mode == "train" else None))
        module._compile_backend = backend
        module._compile_modes = tuple(set(getattr(module, "_compile_modes", ())) | set(modes))  # a second call adds
        module.forward = types.MethodType(_dispatching_forward, module)
    return len(units)


_COMPILED: Dict[Tuple[type, str, str], Callable] = {}


def _dispatching_forward(self: nn.Module, *args, **kwargs):
    """A compile unit's forward: the compiled function of the current mode where that mode was
    compiled, the class's eager forward otherwise.  Bound as a method, so `copy.deepcopy` re-binds
    it to the copy."""
    mode = "train" if self.training else "eval"
    if mode in self._compile_modes:
        return _COMPILED[(type(self), self._compile_backend, mode)](self, *args, **kwargs)
    return type(self).forward(self, *args, **kwargs)


def _raise_recompile_limit(limit: int) -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:  # renamed across torch versions
            setattr(config, name, limit)
