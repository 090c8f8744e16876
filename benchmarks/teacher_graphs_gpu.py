"""Time the MT / UAMT / ICT + UNet training step (7-case configs: batch 16 of which 8 labeled, 224x224, fp32)
on a GPU with the students graphed, the EMA teacher eager against replayed per input shape
(train.cuda_graphs since the tenth session), through bench_gpu's `method_step_bench` (the trainer's
`run_iteration` with its deferred read-back).  Prints one line per method.

    python3 benchmarks/teacher_graphs_gpu.py [mt_unet_7cases uamt_unet_7cases ict_unet_7cases]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import method_step_bench  # noqa: E402

ROWS = ["mt_unet_7cases", "uamt_unet_7cases", "ict_unet_7cases"]

if __name__ == "__main__":
    for row in sys.argv[1:] or ROWS:
        config = f"configs/acdc/{row}.yaml"
        eager, replayed = (method_step_bench(config, graphs=True, teachers=t)["step_ms"] for t in (False, True))
        print(f"{row:18s} teacher eager {eager:6.2f} ms  replayed {replayed:6.2f} ms  {eager / replayed:.2f}x",
              flush=True)
