"""Time whole MT / UAMT / ICT iterations (UNet, batch 16 of which 8 labeled, 224x224, fp32) on a GPU with the
students graphed, the teacher eager against the teacher replayed per shape (train.cuda_graphs since the
tenth session).  Prints one line per method: ms per iteration, median of 5 windows of 20 iterations."""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ssl_mamba.engine.cuda_graphs import GraphedNetworks  # noqa: E402
from ssl_mamba.engine.step import autocast_context, finish_readback, run_iteration  # noqa: E402
from test_methods import build, make_batch  # noqa: E402


def iteration_ms(method: str, teachers: bool) -> float:
    device = torch.device("cuda")
    m = build(method, ["unet"], batch_size=16, labeled=8)
    m.to(device)
    optimizers = [torch.optim.SGD(g.params, lr=0.01, momentum=0.9) for g in m.optimizer_groups()]
    batch = make_batch(size=16, labeled=8, spatial=224).to("cuda")
    graphs = GraphedNetworks(m.students(), m.graph_input(batch), lambda: autocast_context(device, "none", cache=False),
                             no_grad=m.no_grad_networks() if teachers else None)
    pending, windows = None, []
    for window in range(6):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for step in range(20):
            result = run_iteration(m, optimizers, batch, window * 20 + step, device, graphs=graphs, defer=True)
            if pending is not None:
                finish_readback(pending)  # the trainer's deferred read-back: one iteration behind
            pending = result
        torch.cuda.synchronize()
        windows.append((time.perf_counter() - start) / 20 * 1000)
    return statistics.median(windows[1:])  # the first window holds the teacher captures


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    for name in sys.argv[1:] or ["mean_teacher", "uamt", "ict"]:
        eager, replayed = iteration_ms(name, False), iteration_ms(name, True)
        print(f"{name:14s} teacher eager {eager:6.2f} ms  replayed {replayed:6.2f} ms  {eager / replayed:.2f}x",
              flush=True)
