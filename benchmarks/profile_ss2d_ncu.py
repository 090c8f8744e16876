"""One forward and one backward launch of the fused SS2D kernels at Mamba-UNet's first stage, for
Nsight Compute.  Warms up (compiles) first, then launches each kernel once more; profile only the
second pair:

    ncu --clock-control none -k regex:_ss2d_ --launch-skip 2 --launch-count 2 \\
        --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats \\
        python3 benchmarks/profile_ss2d_ncu.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu import scan_inputs  # noqa: E402 - the benchmark's first-stage inputs
from ssl_mamba.ops.triton_ss2d import ss2d_scan_triton  # noqa: E402


def main() -> None:
    shape = (24, 56, 56, 192, 16, 6)
    ins = [t.requires_grad_() for t in scan_inputs(*shape)]
    gy = torch.randn(*shape[:4], device="cuda")
    for _ in range(2):  # the first pass compiles; ncu skips its two launches
        ss2d_scan_triton(*ins).backward(gy)
    torch.cuda.synchronize()
    print("done")


if __name__ == "__main__":
    main()
