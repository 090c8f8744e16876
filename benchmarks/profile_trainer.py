"""Where the real trainer's iteration time goes: host phases against GPU kernel time.

The benchmark's bare step (bench_gpu.py) is not what `ssl-mamba train` runs: the trainer also
draws batches from the loader, reads losses back, steps optimizers, updates EMA teachers, logs
every step and validates.  The 30,000-iteration UNet rows ran at 26-33 ms per iteration on an H100
although CUDA graphs did not speed them up, i.e. they are bound by the host.  This script trains a
config for --iterations iterations under torch.profiler, records the last --active of them and
prints, per recorded iteration:

- wall ms (from the end of the iteration before the window to the end of the last one, the device
  drained at both ends), and GPU kernel ms (the device time of the kernels, copies and memsets,
  each counted once; well under wall = host-bound),
- host ms in each trainer phase (profiler ranges opened around the trainer's own functions by
  this script, the library is not changed): data, training_step, loss read-back + backward +
  optimizer (`run_iteration` minus the method's step), after_step (EMA), logging (+ validation),
  with the number of ranges in the window (`host_phase_calls`, e.g. trainer/iteration = --active),
- the host ops with the most self CPU time.

    python benchmarks/profile_trainer.py -c configs/acdc/mt_unet_7cases.yaml --set data.root=.pack/acdc \\
        --set train.cuda_graphs=true --iterations 300 --active 50 --out $OUT/profile-mt.json

Validation is moved past the end (train.val_every) unless --validate, so the profiled iterations are
training iterations only; the run stops right after the window, before the trainer's final
validation, last.pt and summary (train.max_iterations is set one past --iterations, so that its last
iteration, which does that work, is never a profiled one).
"""
import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssl_mamba.config import load_config  # noqa: E402
from ssl_mamba.engine import trainer as trainer_module  # noqa: E402

PHASES = {  # range name -> (object, attribute) wrapped for the run
    "trainer/data": (trainer_module, "next_batch"),
    "trainer/iteration": (trainer_module, "run_iteration"),
    "trainer/log_and_validate": (trainer_module.Trainer, "_after_iteration"),  # with any deferred read-back wait
    "trainer/validate": (trainer_module.Trainer, "_validate"),  # inside log_and_validate
    "trainer/checkpoint": (trainer_module.Trainer, "_save_last"),
    "trainer/lr": (trainer_module.Trainer, "_apply_lr"),
}
RANGE_PREFIXES = ("trainer/", "method/")
STEP_RANGE = "ProfilerStep"  # the profiler's own range around each step (named ProfilerStep#N / ProfilerStep*)


class WindowClosed(Exception):
    """Raised by the step hook right after the profiled window closed: it ends fit() before the work
    that follows the last iteration (final validation, last.pt, summary), which is not measured."""


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


def is_annotation(ev) -> bool:
    """A record_function range rather than an op or a kernel.  Under CUDA each range is recorded twice:
    on the host and as a GPU-side `gpu_user_annotation` of the same name spanning the range's kernels
    (torch 2.13 flags both is_user_annotation; the names catch them too, should a torch not)."""
    return bool(getattr(ev, "is_user_annotation", False)) or ev.name.startswith(RANGE_PREFIXES + (STEP_RANGE,))


def on_host(ev) -> bool:
    return ev.device_type == DeviceType.CPU


def host_phases(events) -> tuple:
    """Total host ms and number of ranges per phase, from the host-side ranges only.  key_averages()
    keeps the GPU-side copy of a range as a separate row of the same key (its cpu_time_total is 0),
    and a dict keyed by name let that row overwrite the host one: the phases read 0 on CUDA."""
    ms, calls = {}, {}
    for ev in events:
        if on_host(ev) and ev.name.startswith(RANGE_PREFIXES):
            ms[ev.name] = ms.get(ev.name, 0.0) + ev.cpu_time_total / 1e3
            calls[ev.name] = calls.get(ev.name, 0) + 1
    return ms, calls


def device_kernel_us(events) -> float:
    """Device time of the kernels, copies and memsets, each counted once: the device-side events only.
    A host op's self_device_time_total repeats its kernels' time, and the GPU-side copies of the
    ranges span kernels already counted, so summing every key_averages row counted kernels 2-3 times."""
    return sum(ev.time_range.elapsed_us() for ev in events if not on_host(ev) and not is_annotation(ev))


def top_host_ops(events, iterations: int, n: int = 25) -> list:
    """The host ops (ranges left out) with the most self CPU time, per iteration."""
    self_us, calls = {}, {}
    for ev in events:
        if on_host(ev) and not is_annotation(ev) and ev.self_cpu_time_total > 0:
            self_us[ev.key] = self_us.get(ev.key, 0.0) + ev.self_cpu_time_total
            calls[ev.key] = calls.get(ev.key, 0) + 1
    ranked = sorted(self_us, key=lambda k: -self_us[k])[:n]
    return [{"op": k[:80], "self_cpu_ms": round(self_us[k] / 1e3 / iterations, 3),
             "calls": round(calls[k] / iterations, 1)} for k in ranked]


def summarize(events, iterations: int, wall_s: float) -> dict:
    """Per-iteration wall, GPU kernel and host-phase times from the profiler's events (prof.events())."""
    phase_ms, phase_calls = host_phases(events)
    return {"iterations": iterations, "wall_ms": round(wall_s * 1e3 / iterations, 3),
            "gpu_kernel_ms": round(device_kernel_us(events) / 1e3 / iterations, 3),
            "host_phase_ms": {k: round(v / iterations, 3) for k, v in phase_ms.items()},
            "host_phase_calls": phase_calls,  # ranges in the window, not per iteration
            "top_host_ops": top_host_ops(events, iterations)}


def drained_clock(device: torch.device) -> float:
    """perf_counter once the device has finished the work queued so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def window_hook(trainer, prof, iterations: int, active: int, marks: dict):
    """The trainer's per-iteration hook with the profiler steps added.

    prof.step() runs once per iteration, at the end of `_finish_iteration`, so profiler step k covers
    iteration k+1 (1-based) and the schedule records steps iterations-active .. iterations-1, i.e. the
    last `active` iterations.  Both marks sit at that point of an iteration with the device drained: the
    start just after the step that starts the trace (its start-up is not timed), the end just before
    the step that stops it (its collection is not timed).  Then WindowClosed ends fit()."""
    after = trainer._finish_iteration
    first = iterations - active

    def stepping(done, stop):
        after(done, stop)
        if trainer.iteration == iterations:
            marks["end"] = drained_clock(trainer.device)
        elif trainer.iteration == first:
            drained_clock(trainer.device)  # the earlier iterations' kernels stay out of the trace
        prof.step()
        if trainer.iteration == first:
            marks["start"] = time.perf_counter()
        if trainer.iteration == iterations:
            raise WindowClosed
    return stepping


def run(config: str, overrides: list, iterations: int, active: int, validate: bool, run_dir: Path) -> dict:
    import methods  # noqa: F401 - registers the methods

    # One iteration more than are run: the trainer validates and checkpoints at its last iteration,
    # which must not be a profiled one (WindowClosed stops the run before it anyway).
    overrides = list(overrides) + [f"train.max_iterations={iterations + 1}", "train.checkpoint_every=1000000"]
    if not validate:
        overrides.append(f"train.val_every={10 * iterations}")
    cfg = load_config(config, overrides)
    marks = {}

    with phase_ranges():
        trainer = trainer_module.Trainer(cfg, run_dir, progress=False)
        wrap_method_hooks(trainer.method)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
        # One cycle: `wait` steps, one warmup step, `active` recorded steps; repeat=1 stops the trace at
        # step `iterations`.  Older torch (2.11 on the GPU machines printed it) warns at every trace start
        # without acc_events that events are cleared per cycle, also when there is a single cycle (fixed
        # upstream in pytorch#180387): nothing is cleared here, so the warning is silenced.
        schedule = torch.profiler.schedule(wait=iterations - active - 1, warmup=1, active=active, repeat=1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Warning: Profiler clears events at the end of each cycle")
            with profile(activities=activities, schedule=schedule) as prof:
                trainer._finish_iteration = window_hook(trainer, prof, iterations, active, marks)
                try:
                    trainer.fit()
                except WindowClosed:
                    pass
    if "end" not in marks:
        raise RuntimeError(f"training stopped at iteration {trainer.iteration}, before the profiled window "
                           f"(iterations {iterations - active + 1}-{iterations}) closed")
    summary = summarize(prof.events(), active, marks["end"] - marks["start"])
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
