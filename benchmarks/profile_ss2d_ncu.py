"""One forward and one backward pass of the fused SS2D op at Mamba-UNet's first stage, for Nsight
Compute.  A first pass compiles the kernels; only the second pass runs inside the profiler window
(cudaProfilerStart / Stop), so every kernel of one pass is profiled once whatever the segment count
(pre-passes, carries, forward, backward):

    ncu --profile-from-start off --clock-control none -k regex:"ss2d|segment|carry" \\
        --section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats \\
        --section WarpStateStats --section MemoryWorkloadAnalysis \\
        python3 benchmarks/profile_ss2d_ncu.py --dtype bf16

`--dtype bf16` feeds the op bf16 activations under autocast, as the training step does.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu import scan_inputs  # noqa: E402 - the benchmark's first-stage inputs
from ssl_mamba.ops.triton_ss2d import ss2d_scan_triton  # noqa: E402

FIRST_STAGE = (24, 56, 56, 192, 16, 6)  # batch, H, W, channels, state size, dt rank


def one_pass(ins, gy, dtype) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = ss2d_scan_triton(ins[0].to(dtype), *ins[1:])
    y.backward(gy.to(y.dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[parser.parse_args().dtype]
    ins = [t.requires_grad_() for t in scan_inputs(*FIRST_STAGE)]
    gy = torch.randn(*FIRST_STAGE[:4], device="cuda")
    one_pass(ins, gy, dtype)  # compiles every kernel outside the profiler window
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    one_pass(ins, gy, dtype)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print("done")


if __name__ == "__main__":
    main()
