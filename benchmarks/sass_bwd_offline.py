"""Compile the SS2D backward kernel for sm_90 without a GPU and count what matters in its SASS.

    TRITON_DEFAULT_FP_FUSION=1 python benchmarks/sass_bwd_offline.py

For each Mamba-UNet stage (tokens 56..7, channels 192..1536, dt rank R = 6..48) prints the
registers per thread, the SASS instruction count, the warp shuffles (the channel sums) and the
local-memory accesses (register spills).  Uses the triton of this environment and the ptxas it
ships.  The GPU machine's triton may differ in version (3.6 there, 3.9 here in the sixth session),
and static counts did not predict time: a variant with 0 spills instead of 713 and a third of the
shuffles (dt_gemm, commit 8b8c58b) ran its backward 45% slower on the card.  Time a change before
trusting these counts.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ssl_mamba.ops import triton_ss2d  # noqa: E402

STAGES = {1: (56, 96), 2: (28, 192), 3: (14, 384), 4: (7, 768)}  # tokens per side, d_model
CUDA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def compile_backward(tokens: int, d_model: int):
    fn = triton_ss2d._ss2d_bwd_kernel
    rank = -(-d_model // 16)
    signature = {name: "*fp32" for name in fn.arg_names if name.endswith("_ptr")}
    signature.update({name: "i32" for name in ("D", "R", "NPOS", "NBK")})
    constants = dict(H=tokens, W=tokens, N=16, BLOCK_D=32, BLOCK_N=16, BLOCK_R=max(triton.next_power_of_2(rank), 2),
                     CHUNK=64, SEG=512, STAGES=4, T=4, ATOMIC=False, PERSISTENT=False)
    signature.update({name: "constexpr" for name in constants})
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
    return kernel, rank


def sass_stats(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(CUDA_BIN / "cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
        usage = subprocess.run([str(CUDA_BIN / "cuobjdump"), "-res-usage", f.name], capture_output=True,
                               text=True).stdout
    lines = [ln for ln in sass.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/", ln)]
    return {"registers": int(re.search(r"REG:(\d+)", usage).group(1)), "instructions": len(lines),
            "shuffles": sum("SHFL" in ln for ln in lines),
            "local_memory": sum(" STL" in ln or " LDL" in ln for ln in lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args()
    print(f"triton {triton.__version__}, sm_90")
    print("stage  R  registers  instructions  shuffles  local-memory")
    for stage, (tokens, d_model) in STAGES.items():
        kernel, rank = compile_backward(tokens, d_model)
        st = sass_stats(kernel.asm["cubin"])
        print(f"{stage:5d} {rank:2d} {st['registers']:10d} {st['instructions']:13d} {st['shuffles']:9d} "
              f"{st['local_memory']:13d}")


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    main()
