"""CUDA graphs for the student networks' forward and backward (`train.cuda_graphs: true`).

Why: a Mamba-UNet training step launches ~1,000 small kernels, and at batch 24 on an H200 the
GPU idles ~11 ms of a ~74 ms bf16 step waiting for the CPU to launch them.  `torch.cuda.
make_graphed_callables` records a network's forward and its backward once and replays each as
a single launch; the loss, the optimizer and everything a method does around the networks stay
ordinary PyTorch.

The contract, checked on every call: in training mode a graphed network is called at most once
per iteration, with a tensor of the captured shape and dtype (a second call would overwrite the
first call's saved activations; and since the graph's static gradient buffers become the
parameters' .grad when .grad is None, a second backward before the optimizer step would overwrite
the first one's gradients instead of adding to them, pytorch/pytorch#181723).  The trainer sets
.grad to None before each group's backward, so one replay per iteration accumulates nothing.
Calls in eval mode (validation, inference) run the plain forward.  Capturing runs a few warm-up
passes on the first batch; the networks' buffers (BatchNorm statistics) and the RNG states are put
back afterwards, so the capture changes neither.

Networks that only ever run without gradients in a training step (EMA teachers) are replayed too,
from a graph per input shape recorded the first time it is seen (`TeacherGraphs`): a UNet teacher's
forward is ~150 kernel launches, and UAMT runs it five times per iteration, so with the students
graphed the host launching the teachers became the bottleneck (MT: 29.6 ms of host per iteration
against 20.2 ms of kernels on an H200, benchmarks/RESULTS.md v19).
"""
import contextlib
from typing import Dict, Iterator, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..metrics.graphs import EvalGraphs


class CallGuard:
    """Counts a graphed network's training-mode calls in the current iteration and checks their input."""

    def __init__(self, name: str, shape: tuple, dtype: torch.dtype):
        self.name, self.shape, self.dtype, self.calls = name, tuple(shape), dtype, 0

    def check(self, x: torch.Tensor, rest: tuple = ()) -> None:
        if rest or tuple(x.shape) != self.shape or x.dtype != self.dtype:
            raise ConfigError(
                f"train.cuda_graphs: network {self.name!r} was captured for one {self.dtype} input of shape "
                f"{list(self.shape)} but is called with {x.dtype} {list(x.shape)}"
                f"{' and more arguments' if rest else ''}; set train.cuda_graphs=false for this method")
        self.calls += 1
        if self.calls > 1:
            raise ConfigError(
                f"train.cuda_graphs: network {self.name!r} is called {self.calls} times in one iteration; a "
                "graphed network may run once per iteration (the second call would overwrite the first's "
                "activations); set train.cuda_graphs=false for this method")


class TeacherGraphs(EvalGraphs):
    """A no-grad network's forward in either mode (a train-mode teacher updates its BatchNorm
    statistics and draws dropout masks inside the graph, as the plain forward would), replayed
    from a graph per input shape; with gradients on, or past `max_shapes`, the plain forward runs."""

    def applies(self, x: torch.Tensor) -> bool:
        return x.device.type == "cuda" and not torch.is_grad_enabled()

    def _capture(self, x: torch.Tensor):
        with _preserved_state([self.net]):  # the warm-up passes must not move statistics or RNG
            return super()._capture(x)


class GraphedNetworks:
    """Graphs each network of `networks` for inputs like `sample`, and replays each of `no_grad`'s
    forwards per input shape (`TeacherGraphs`); `new_iteration()` before each step."""

    def __init__(self, networks: Dict[str, nn.Module], sample: torch.Tensor, autocast_ctx,
                 no_grad: Optional[Dict[str, nn.Module]] = None):
        if sample.device.type != "cuda":
            raise ConfigError(f"train.cuda_graphs needs a CUDA device; the batch is on {sample.device}")
        self.guards: Dict[str, CallGuard] = {}
        with _preserved_state(networks.values()), autocast_ctx():
            for name, net in networks.items():
                self._capture(name, net, sample)
        self.teachers = {name: _replay_forward(net) for name, net in (no_grad or {}).items()}

    def new_iteration(self) -> None:
        for guard in self.guards.values():
            guard.calls = 0

    def _capture(self, name: str, net: nn.Module, sample: torch.Tensor) -> None:
        if not net.training:
            raise ConfigError(f"train.cuda_graphs: network {name!r} must be in training mode to be captured")
        try:
            torch.cuda.make_graphed_callables(net, (sample.detach().clone(),), num_warmup_iters=3)
        except Exception as exc:
            raise ConfigError(f"train.cuda_graphs: capturing network {name!r} failed ({type(exc).__name__}: "
                              f"{exc}); set train.cuda_graphs=false") from exc
        graphed = net.forward  # make_graphed_callables replaced it: graph in training mode, plain in eval
        guard = self.guards[name] = CallGuard(name, sample.shape, sample.dtype)

        def guarded_forward(x: torch.Tensor, *rest):
            if net.training:
                guard.check(x, rest)
            return graphed(x, *rest)

        net.forward = guarded_forward


def graph_method(method, batch, autocast_ctx, teachers: bool = True, sample=None) -> GraphedNetworks:
    """train.cuda_graphs for a method: its students captured for `method.graph_input(batch)` (or `sample`,
    when the caller has it already), and (with `teachers`) its no-grad networks replayed per input shape."""
    sample = method.graph_input(batch) if sample is None else sample
    return GraphedNetworks(method.students(), sample, autocast_ctx,
                           no_grad=method.no_grad_networks() if teachers else None)


def _replay_forward(net: nn.Module) -> TeacherGraphs:
    """Route `net`'s forward through a `TeacherGraphs` (its graphs are captured at first use, under
    the caller's autocast state, which is part of each graph's key)."""
    graphs = TeacherGraphs(net, max_shapes=8, forward=net.forward)
    net.forward = graphs
    return graphs


@contextlib.contextmanager
def _preserved_state(networks) -> Iterator[None]:
    """Restore buffers (in place: the graphs hold their addresses) and RNG states after capture."""
    buffers = [(b, b.detach().clone()) for net in networks for b in net.buffers()]
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for live, saved in buffers:
                live.copy_(saved)
        torch.set_rng_state(cpu_rng)
        torch.cuda.set_rng_state(cuda_rng)
