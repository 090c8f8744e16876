"""Fast path vs baseline path on a short real-ACDC training (issue "GPU speed": no loss of accuracy).

Trains fully supervised Mamba-UNet (configs/acdc/fully_mamba_unet.yaml, batch 24, SGD/poly over the
shortened schedule) once per (path, seed) and compares the validation Dice at every validation step.
The paths (`--backends`, see PATHS):
- `mamba_ssm`: mamba-ssm's CUDA kernel in fp32, the original code's path (built here from the
  carried sdist like bench_gpu.py does);
- `triton`: our fused Triton scan in fp32;
- `triton_fast`: the path the speed claims are measured on: Triton scan, bf16 autocast,
  torch.compile and CUDA graphs, with the kernels' default tiles;
- any other name is passed as `model.scan_backend` (`torch` for a CPU smoke run).
The runs go in parallel, one process each (`--gpus N` spreads them over N cards; the mamba-ssm ones
wait for the build), so their wall times are not speed measurements.  Prints a table last and writes
accuracy-<date>.json under --out.

    python3 benchmarks/accuracy_gpu.py --data .pack/acdc --out $OUT --iterations 1000 --seeds 0 1 --gpus 3
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/acdc/fully_mamba_unet.yaml"
PATHS = {  # path name -> the config values that make it
    "mamba_ssm": {"model.scan_backend": "mamba_ssm"},
    "triton": {"model.scan_backend": "triton"},
    "triton_fast": {"model.scan_backend": "triton", "train.amp": "bf16", "train.compile": "true",
                    "train.cuda_graphs": "true"},
}


def path_settings(path: str) -> dict:
    return PATHS.get(path, {"model.scan_backend": path})


def worker(path: str, seed: int, args) -> None:
    """One training run in this process (mamba_ssm: build or load the kernel first)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO))
    settings = path_settings(path)
    if settings["model.scan_backend"] == "mamba_ssm":
        import bench_gpu
        from ssl_mamba.ops import mamba_ssm_backend
        bench_gpu.build_mamba_ssm()
        if "fn" not in bench_gpu._BUILD:
            raise SystemExit(f"mamba-ssm build failed: {bench_gpu._BUILD.get('error')}")
        mamba_ssm_backend._import_selective_scan_fn.cache_clear()
    from ssl_mamba.cli import main
    sets = {"data.root": args.data, "data.num_workers": args.workers, "train.max_iterations": args.iterations,
            "train.val_every": args.val_every, "train.seed": seed, "train.checkpoint_every": args.iterations,
            **settings}
    argv = ["train", "-c", str(REPO / CONFIG), "--run-dir", str(run_dir(args, path, seed)), "--no-progress", "--no-evaluate"]
    for item in [f"{key}={val}" for key, val in sets.items()] + args.set:
        argv += ["--set", item]
    code = main(argv, standalone_mode=False)  # click returns the exit code instead of exiting here
    if code:
        raise SystemExit(code)


def run_dir(args, path: str, seed: int) -> Path:
    return Path(args.runs) / f"{path}_seed{seed}"


def val_curve(directory: Path) -> dict:
    """{iteration: validation mean Dice} from a run's metrics.jsonl (whatever part of it exists; a
    run stopped mid-write leaves a torn last line, which the library's reader skips)."""
    from ssl_mamba.metrics.figures import read_scalars

    if not (directory / "metrics.jsonl").is_file():
        return {}
    steps, values = read_scalars(directory).get("val/net1/dice", ([], []))
    return dict(zip(steps, values))


def drive(args) -> None:
    sys.path.insert(0, str(REPO))
    runs = [(path, seed) for path in args.backends for seed in args.seeds]
    procs = {}
    for index, (path, seed) in enumerate(runs):
        log = open(Path(args.runs) / f"{path}_seed{seed}.log", "w")
        cmd = [sys.executable, __file__, "--worker", path, str(seed)] + sys.argv[1:]
        env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": str(index % args.gpus)} if args.gpus else {}))
        procs[(path, seed)] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + args.budget
    while time.time() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(5)
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    result = {"config": CONFIG, "iterations": args.iterations, "date": datetime.date.today().isoformat(),
              "commit": args.commit, "runs": {}}
    try:
        import torch
        result["card"] = torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - the table matters more than the card name
        result["card"] = "unknown"
    for (path, seed), p in procs.items():
        d = run_dir(args, path, seed)
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
        result["runs"][f"{path}_seed{seed}"] = {"returncode": p.returncode, "val_dice": val_curve(d),
                                                    "best_val_dice": summary.get("best_val_dice", {}).get("net1")}
    out = Path(args.out) / f"accuracy-{result['date']}{args.tag}.json"
    out.write_text(json.dumps(result, indent=1))
    steps = sorted({s for r in result["runs"].values() for s in r["val_dice"]})
    print(f"\n{result['card']}  {CONFIG}  {args.iterations} iterations  commit {args.commit}")
    print(f"{'run':22s} {'rc':>4s} " + " ".join(f"{s:>7d}" for s in steps) + "    best")
    for name, r in result["runs"].items():
        cells = " ".join(f"{r['val_dice'][s]:7.4f}" if s in r["val_dice"] else "      -" for s in steps)
        best = f"{r['best_val_dice']:.4f}" if r["best_val_dice"] is not None else "-"
        print(f"{name:22s} {str(r['returncode']):>4s} {cells}    {best}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=2, metavar=("BACKEND", "SEED"))
    ap.add_argument("--data", default=".pack/acdc")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    ap.add_argument("--runs", default="runs/accuracy")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--val-every", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--workers", type=int, default=3, help="data-loader processes per run")
    ap.add_argument("--budget", type=float, default=500.0, help="seconds before unfinished runs are stopped")
    ap.add_argument("--backends", nargs="+", default=["triton_fast", "triton", "mamba_ssm"],
                    help=f"paths to compare: {', '.join(PATHS)}, or a scan backend name")
    ap.add_argument("--gpus", type=int, default=0, help="spread the runs over this many GPUs (0: all on the default)")
    ap.add_argument("--set", action="append", default=[], help="extra config override (CPU smoke runs)")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
