"""CPU timing of the selective scan: the chunked torch backend vs the sequential oracle.

Shapes follow SS2D at C=192 (the demo's widest stage uses d = 4 directions x 192 channels = 768 scan
channels, B/C grouped per direction, d_state 16).  Prints a markdown table of the median forward
and forward+backward wall time over --reps runs (after one warm-up) and the speed-up.

    .venv/bin/python benchmarks/bench_scan_cpu.py [--lengths 256 1024 3136] [--dim 768] [--batch 1] [--threads N]
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch

from ssl_mamba.ops.selective_scan_oracle import selective_scan_oracle
from ssl_mamba.ops.selective_scan_ref import selective_scan_torch


def make_inputs(batch: int, dim: int, length: int, d_state: int, groups: int) -> Dict[str, torch.Tensor]:
    """SS2D-like fp32 inputs that require grad."""
    g = torch.Generator().manual_seed(0)
    t = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.randn(batch, dim, length, generator=g) - 3,
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, groups, d_state, length, generator=g),
        "C": torch.randn(batch, groups, d_state, length, generator=g),
        "D": torch.ones(dim),
        "delta_bias": torch.randn(dim, generator=g) * 0.1,
    }
    return {k: v.requires_grad_(True) for k, v in t.items()}


def time_it(fn: Callable[[], None], reps: int) -> float:
    """Median seconds of fn over reps runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(scan: Callable, inputs: Dict[str, torch.Tensor], reps: int) -> List[float]:
    """[forward seconds (no grad), forward+backward seconds]."""
    def forward() -> None:
        with torch.no_grad():
            scan(**inputs, delta_softplus=True)

    def forward_backward() -> None:
        scan(**inputs, delta_softplus=True).sum().backward()

    return [time_it(forward, reps), time_it(forward_backward, reps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 3136])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, "
          f"d {args.dim}, d_state {args.d_state}, groups {args.groups}; median of {args.reps}")
    print("| L | torch fwd (s) | oracle fwd (s) | fwd speed-up | torch fwd+bwd (s) | oracle fwd+bwd (s) | fwd+bwd speed-up |")
    print("|---|---|---|---|---|---|---|")
    for length in args.lengths:
        inputs = make_inputs(args.batch, args.dim, length, args.d_state, args.groups)
        ref = bench(selective_scan_torch, inputs, args.reps)
        orc = bench(selective_scan_oracle, inputs, args.reps)
        print(f"| {length} | {ref[0]:.3f} | {orc[0]:.3f} | {orc[0] / ref[0]:.1f}x | "
              f"{ref[1]:.3f} | {orc[1]:.3f} | {orc[1] / ref[1]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
