"""Count the bytes autograd keeps for the backward pass, by module.

The activations saved between forward and backward are what a training step's peak memory is
made of at a fixed batch; counting them needs no GPU, so a change that should lower the peak can
be checked on the CPU before it is timed on a card.  Each saved tensor is counted once per
storage (views of one buffer share it) and parameters are left out (they live anyway).  The
inputs an activation-checkpointed region keeps are counted too (torch's checkpoint saves them
through an ordinary autograd node); what it recomputes is not.
"""
import weakref
from collections import defaultdict
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn


class SavedTensorTally:
    """Storages autograd saved while `run()` executed, attributed to the innermost module."""

    def __init__(self, net: nn.Module):
        self.net = net
        self._records: Dict[int, Tuple[int, torch.dtype, str, Tuple[int, ...]]] = {}
        self._held: Dict[int, "weakref.ref[torch.Tensor]"] = {}
        self._stack: List[str] = [""]
        self._params = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def run(self, fn: Callable[[], object]) -> object:
        """Call fn() with the hooks on; returns its result (keep it alive to keep the graph)."""
        names = {m: n for n, m in self.net.named_modules()}

        def enter(mod, _inputs) -> None:
            self._stack.append(names[mod])

        def leave(_mod, _inputs, _output) -> None:  # a hook that returns a value replaces the output
            self._stack.pop()

        hooks = [m.register_forward_pre_hook(enter) for m in names]
        hooks += [m.register_forward_hook(leave) for m in names]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                return fn()
        finally:
            for h in hooks:
                h.remove()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        # The graph holds what pack returns, so the weak reference lives at least as long as the
        # saving node: a tensor saved by a branch dropped during the forward frees its memory, which
        # a later tensor may reuse at the same address, and must not hide that tensor.
        ptr = t.untyped_storage().data_ptr()
        held = self._held.get(ptr)
        if ptr not in self._params and (held is None or held() is None):
            self._held[ptr] = weakref.ref(t)
            self._records[ptr] = (t.untyped_storage().nbytes(), t.dtype, self._stack[-1], tuple(t.shape))
        return t

    @property
    def by_storage(self) -> Dict[int, Tuple[int, torch.dtype, str, Tuple[int, ...]]]:
        """data_ptr -> (bytes, dtype, module name, shape) of the storages still held for backward."""
        return {ptr: rec for ptr, rec in self._records.items() if self._held[ptr]() is not None}

    @property
    def total_bytes(self) -> int:
        return sum(rec[0] for rec in self.by_storage.values())

    def by_module_type(self) -> Dict[str, int]:
        """Bytes per (module class name, dtype), largest first."""
        kinds = {n: type(m).__name__ for n, m in self.net.named_modules()}
        out: Dict[str, int] = defaultdict(int)
        for nbytes, dtype, name, _shape in self.by_storage.values():
            out[f"{kinds.get(name, '?')} {str(dtype).replace('torch.', '')}"] += nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))
