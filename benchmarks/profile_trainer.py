"""Where the real trainer's iteration time goes: host phases against GPU kernel time.

The benchmark's bare step (bench_gpu.py) is not what `ssl-mamba train` runs: the trainer also
draws batches from the loader, reads losses back, steps optimizers, updates EMA teachers, logs
every step and validates.  The 30,000-iteration UNet rows ran at 26-33 ms per iteration on an H100
although CUDA graphs did not speed them up, i.e. they are bound by the host.  This script trains a
config for a few iterations under torch.profiler and prints, per iteration:

- wall ms, and GPU kernel ms (sum of the kernels' device time; well under wall = host-bound),
- host ms in each trainer phase (profiler ranges opened around the trainer's own functions by
  this script, the library is not changed): data, training_step, loss read-back + backward +
  optimizer (`run_iteration` minus the method's step), after_step (EMA), logging, checkpointing,
- the host ops with the most self CPU time.

    python benchmarks/profile_trainer.py -c configs/acdc/mt_unet_7cases.yaml --set data.root=.pack/acdc \\
        --set train.cuda_graphs=true --iterations 300 --active 50 --out $OUT/profile-mt.json

Validation is moved past the end (train.val_every) unless --validate, so the profiled iterations are
training iterations only.
"""
import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssl_mamba.config import load_config  # noqa: E402
from ssl_mamba.engine import trainer as trainer_module  # noqa: E402

PHASES = {  # range name -> (object, attribute) wrapped for the run
    "trainer/data": (trainer_module, "next_batch"),
    "trainer/iteration": (trainer_module, "run_iteration"),
    "trainer/log_and_validate": (trainer_module.Trainer, "_after_iteration"),
    "trainer/checkpoint": (trainer_module.Trainer, "_save_last"),
    "trainer/lr": (trainer_module.Trainer, "_apply_lr"),
}


def _ranged(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)
    return wrapper


@contextlib.contextmanager
def phase_ranges():
    """Open a profiler range around each trainer phase (and the method's hooks) for the run."""
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr in PHASES.values()]
    for name, (obj, attr) in PHASES.items():
        setattr(obj, attr, _ranged(name, getattr(obj, attr)))
    try:
        yield
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)


def wrap_method_hooks(method) -> None:
    """Ranges around the method's own step and after_step (instance attributes: this run only)."""
    method.training_step = _ranged("method/training_step", method.training_step)
    method.after_step = _ranged("method/after_step", method.after_step)


def summarize(prof, iterations: int, wall_s: float) -> dict:
    """Per-iteration wall, GPU kernel and host-phase times from the profiler's averages."""
    events = prof.key_averages()
    phases, gpu_us, top = {}, 0.0, []
    for ev in events:
        device_us = getattr(ev, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(ev, "self_cuda_time_total", 0.0)
        gpu_us += device_us or 0.0
        if ev.key.startswith(("trainer/", "method/")):
            phases[ev.key] = round(ev.cpu_time_total / 1e3 / iterations, 3)
        elif ev.self_cpu_time_total > 0:
            top.append((ev.key[:80], ev.self_cpu_time_total / 1e3 / iterations, ev.count / iterations))
    top.sort(key=lambda row: -row[1])
    return {"iterations": iterations, "wall_ms": round(wall_s * 1e3 / iterations, 3),
            "gpu_kernel_ms": round(gpu_us / 1e3 / iterations, 3), "host_phase_ms": phases,
            "top_host_ops": [{"op": k, "self_cpu_ms": round(ms, 3), "calls": round(c, 1)} for k, ms, c in top[:25]]}


def run(config: str, overrides: list, iterations: int, active: int, validate: bool, run_dir: Path) -> dict:
    import methods  # noqa: F401 - registers the methods

    overrides = list(overrides) + [f"train.max_iterations={iterations}", "train.checkpoint_every=1000000"]
    if not validate:
        overrides.append(f"train.val_every={10 * iterations}")
    cfg = load_config(config, overrides)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    marks = {}

    with phase_ranges():
        trainer = trainer_module.Trainer(cfg, run_dir, progress=False)
        wrap_method_hooks(trainer.method)
        schedule = torch.profiler.schedule(wait=iterations - active - 1, warmup=1, active=active, repeat=1)
        with profile(activities=activities, schedule=schedule) as prof:
            after = trainer._after_iteration

            def stepping(result, batch):
                after(result, batch)
                if trainer.iteration == iterations - active:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    marks["start"] = time.perf_counter()
                prof.step()

            trainer._after_iteration = stepping
            trainer.fit()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks["end"] = time.perf_counter()
    summary = summarize(prof, active, marks["end"] - marks["start"])
    summary.update(config=config, overrides=overrides, device=trainer_module.device_name(trainer.device))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--active", type=int, default=50, help="profiled iterations at the end")
    ap.add_argument("--validate", action="store_true", help="keep the config's validation cadence")
    ap.add_argument("--out", help="write the summary as JSON here too")
    args = ap.parse_args()
    if not 0 < args.active < args.iterations - 1:
        raise SystemExit(f"--active must be between 1 and --iterations - 2, got {args.active}")
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(args.config, args.set, args.iterations, args.active, args.validate, Path(tmp) / "run")
    text = json.dumps(summary, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(f"{summary['device']}: {summary['wall_ms']} ms per iteration, GPU kernels {summary['gpu_kernel_ms']} ms")
    for name, ms in sorted(summary["host_phase_ms"].items(), key=lambda kv: -kv[1]):
        print(f"  {ms:9.3f} ms  {name}")
    for row in summary["top_host_ops"][:15]:
        print(f"  {row['self_cpu_ms']:9.3f} ms  x{row['calls']:<6} {row['op']}")


if __name__ == "__main__":
    main()
