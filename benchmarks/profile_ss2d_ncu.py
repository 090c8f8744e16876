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

from ssl_mamba.ops.triton_ss2d import ss2d_scan_triton  # noqa: E402


def main() -> None:
    b, h, w, d, n, r = 24, 56, 56, 192, 16, 6
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = dict(device="cuda", dtype=torch.float32)
    x = torch.nn.functional.silu(torch.randn(b, h, w, d, generator=g, **dev)).requires_grad_()
    xpw = ((torch.rand(4, r + 2 * n, d, generator=g, **dev) * 2 - 1) / d ** 0.5).requires_grad_()
    dtw = ((torch.rand(4, d, r, generator=g, **dev) * 2 - 1) / r ** 0.5).requires_grad_()
    dt = torch.exp(torch.rand(4, d, generator=g, **dev) * 4.6 - 6.9)
    dtb = (dt + torch.log(-torch.expm1(-dt))).requires_grad_()
    A_logs = torch.log(torch.arange(1, n + 1, **dev)).repeat(4 * d, 1).requires_grad_()
    Ds = torch.ones(4 * d, **dev).requires_grad_()
    gy = torch.randn(b, h, w, d, **dev)
    for _ in range(2):  # the first pass compiles; ncu skips its two launches
        ss2d_scan_triton(x, xpw, dtw, dtb, A_logs, Ds).backward(gy)
    torch.cuda.synchronize()
    print("done")


if __name__ == "__main__":
    main()
