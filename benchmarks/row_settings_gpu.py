"""Time one training iteration of paper-table rows under the speed settings a row can train with, and
what 30,000 such iterations would take: the numbers that decide whether a row fits a device lease and
with which settings.  Through bench_gpu's `method_step_bench` (the trainer's `run_iteration` with its
deferred read-back) on synthetic batches of the row's shape; validation and loading are not included.

    python3 benchmarks/row_settings_gpu.py [--out FILE.json] [ROW ...]     (ROW: a config under configs/acdc)

Settings, in order (a failing one is reported and the rest go on):
fp32 (the published rows), fp32 + train graphs, bf16 + graphs, bf16 + graphs + compile.
"""
import argparse
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import method_step_bench  # noqa: E402

ROWS = ["mt_swin_unet_7cases", "semi_mamba_unet_7cases"]
SETTINGS = {
    "fp32": dict(bf16=False),
    "fp32_graphs": dict(bf16=False, graphs=True),
    "bf16_graphs": dict(bf16=True, graphs=True),
    "bf16_graphs_compile": dict(bf16=True, graphs=True, compiled=True),
}
PROTOCOL_ITERATIONS = 30000


def time_row(row: str, batch: int, **smoke) -> dict:
    """{setting: {"step_ms", "minutes_30k"} or {"error"}} for one row."""
    out = {}
    for name, setting in SETTINGS.items():
        try:
            ms = method_step_bench(f"configs/acdc/{row}.yaml", batch=batch, **setting, **smoke)["step_ms"]
            out[name] = {"step_ms": ms, "minutes_30k": ms * PROTOCOL_ITERATIONS / 60000}
        except Exception as exc:  # noqa: BLE001 - one setting's failure must not hide the others
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        line = out[name].get("error") or f"{out[name]['step_ms']:7.2f} ms  {out[name]['minutes_30k']:5.1f} min / 30k"
        print(f"{row:24s} b{batch:<3d} {name:20s} {line}", flush=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", default=ROWS)
    parser.add_argument("--batch", type=int, default=16, help="rows per process (a 2-GPU row: 8)")
    parser.add_argument("--out", help="also write the numbers here as JSON")
    args = parser.parse_args(argv)
    results = {row: time_row(row, args.batch) for row in args.rows}
    if args.out:
        Path(args.out).write_text(json.dumps({"batch": args.batch, "rows": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
