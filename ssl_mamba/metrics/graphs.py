"""Eval-mode forward passes replayed from CUDA graphs (`eval.cuda_graphs: true`).

Why: validation runs the network on each volume's slices at once (6-20 slices for ACDC), batch
sizes at which a Mamba-UNet forward is bound by the CPU launching its ~500 kernels, not by the
GPU.  Validation repeats the same volumes every `train.val_every` iterations, so a graph per input
shape, recorded the first time that shape is seen, is replayed from then on (the weights are read
at replay, so training updates are seen).  All graphs of one network share one memory pool: that
is safe because replays never overlap and each output is copied out right after its replay.
"""
from typing import Dict, Tuple

import torch
from torch import nn

WARMUP_PASSES = 2  # before a capture: lazy initialisation and kernel compilation happen outside the graph


class EvalGraphs:
    """Calls `net(x)` through a CUDA graph per (shape, dtype, autocast, mode) of x; anything else (CPU,
    grad enabled, training mode, more than `max_shapes` shapes) runs the plain forward.

    `forward`: the callable replayed, when it is not `net` itself (a subclass that replaces
    `net.forward` passes the original one here, so the plain path does not call itself)."""

    def __init__(self, net: nn.Module, max_shapes: int = 32, forward=None):
        self.net = net
        self.forward = forward if forward is not None else net
        self.max_shapes = max_shapes
        self.graphs: Dict[Tuple, Tuple[torch.Tensor, object, torch.cuda.CUDAGraph]] = {}
        self.pool = None

    def applies(self, x: torch.Tensor) -> bool:
        return x.device.type == "cuda" and not torch.is_grad_enabled() and not self.net.training

    def __call__(self, x: torch.Tensor):
        if not self.applies(x):
            return self.forward(x)
        key = (tuple(x.shape), x.dtype, torch.is_autocast_enabled("cuda"), self.net.training)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_shapes:
                return self.forward(x)
            entry = self.graphs[key] = self._capture(x)
        static_in, static_out, graph = entry
        static_in.copy_(x)
        graph.replay()
        return _copy(static_out)

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with _uncached_autocast(), torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                self.forward(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with _uncached_autocast(), torch.cuda.graph(graph, pool=self.pool):
            static_out = self.forward(static_in)
        if self.pool is None:
            self.pool = graph.pool()
        return static_in, static_out, graph


def _uncached_autocast():
    """The caller's CUDA autocast state with its weight cache off: a graph must cast the weights
    itself at every replay, not read bf16 copies cached outside it (freed when autocast exits)."""
    enabled = torch.is_autocast_enabled("cuda")
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=enabled, cache_enabled=False)


def _copy(out):
    """The replay's output, copied out of the graph's memory (tensors, or tuples/lists of them)."""
    if isinstance(out, (tuple, list)):
        return type(out)(o.clone() for o in out)
    return out.clone()
