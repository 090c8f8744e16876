"""Data-parallel training throughput: images/s of one training step on 1 GPU vs 2 GPUs (NCCL).

Run from the repository root on a machine with 2 GPUs (one command runs both world sizes):

    python benchmarks/bench_ddp.py                 # torchrun 1 process, then 2; table + $OUT/bench_ddp.json

or one world size by hand (rank 0 prints its row):

    torchrun --nproc_per_node=2 benchmarks/bench_ddp.py --worker
    torchrun --nproc_per_node=1 benchmarks/bench_ddp.py --worker

Cases, at 224x224 with the configs' GLOBAL batches (so 2 GPUs each process half a batch and a
step means the same optimisation as on 1 GPU):
  * supervised Mamba-UNet, global batch 24 (configs/base/fully.yaml);
  * cross_teaching UNet + Mamba-UNet, global batch 16 of which 8 labeled (configs/base/semi.yaml).
The step is the trainer's own (`engine.step.run_iteration` with the per-group gradient all-reduce
and the BatchNorm buffer broadcast of `engine.distributed`).  Inputs are random tensors already on
the GPU, so the numbers are compute + communication, without data loading.  NVLink multicast
(NVLS) is kept off: NCCL_NVLS_ENABLE=0 is set before the process group starts.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ["NCCL_NVLS_ENABLE"] = "0"  # before torch / NCCL initialise

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = {
    "supervised_mamba_unet": {"method": "supervised", "networks": ["mamba_unet"], "batch_size": 24,
                              "labeled_batch_size": None},
    "cross_teaching_unet_mamba_unet": {"method": "cross_teaching", "networks": ["unet", "mamba_unet"],
                                       "batch_size": 16, "labeled_batch_size": 8},
}
PATCH = 224


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help="measure in this (torchrun) process group")
    p.add_argument("--part", type=str, default=None, help="worker: rank 0 writes its results here (JSON)")
    p.add_argument("--gpus", type=str, default="1,2", help="launcher: world sizes to run, comma separated")
    p.add_argument("--cases", type=str, default=",".join(CASES), help="comma separated: " + ", ".join(CASES))
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    p.add_argument("--readback", choices=("deferred", "sync"), default="deferred",
                   help="the trainer's default deferred read-back (no wait for the GPU), or the synchronous "
                        "path of on_nonfinite=skip (waits for each iteration's losses, as every run did before "
                        "the twelfth session)")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------- worker


def build_case(case: dict, amp: str):
    """(config, method, optimizers) for one case, networks on this rank's GPU, replicas synchronised."""
    import methods  # noqa: F401  (registers the methods)
    from ssl_mamba.config import ExperimentConfig, from_dict
    from ssl_mamba.engine.method import METHODS
    from ssl_mamba.engine.optim import build_all
    from ssl_mamba.engine.trainer import build_networks

    values = {
        "data": {"patch_size": [PATCH, PATCH], "num_classes": 4},
        "model": {"networks": case["networks"]},
        "method": {"name": case["method"], "batch_size": case["batch_size"],
                   "labeled_batch_size": case["labeled_batch_size"]},
        "train": {"amp": amp},
    }
    cfg = from_dict(ExperimentConfig, values, "bench_ddp")
    method = METHODS.get(cfg.method.name)(cfg, build_networks(cfg))
    optimizers, _ = build_all(method.optimizer_groups(), cfg.train)
    return cfg, method, optimizers


def measure_case(name: str, ctx, device: torch.device, args: argparse.Namespace) -> dict:
    """Warm up, then time `iters` steps; images/s counts the global batch."""
    from ssl_mamba.data.batch import Batch
    from ssl_mamba.engine import distributed as ddp
    from ssl_mamba.engine.step import finish_readback, run_iteration

    case = CASES[name]
    torch.manual_seed(0)
    cfg, method, optimizers = build_case(case, args.amp)
    method.to(device)
    ddp.broadcast_state(method.modules, ctx)
    n_lab = case["labeled_batch_size"] or case["batch_size"]
    local_lab, local_unlab = ddp.shard_sizes(case["batch_size"], n_lab, ctx.world_size)
    n = local_lab + local_unlab
    gen = torch.Generator(device=device).manual_seed(1000 + ctx.rank)
    image = torch.randn(n, 1, PATCH, PATCH, device=device, generator=gen)  # (local batch, 1, H, W)
    label = torch.randint(0, 4, (n, PATCH, PATCH), device=device, generator=gen)
    batch = Batch(image=image, label=label, n_labeled=local_lab)
    sync = ddp.GradSync(ctx, device) if ctx.enabled else None
    method.train()
    torch.cuda.reset_peak_memory_stats(device)
    start, defer, previous = 0.0, args.readback == "deferred", None
    for i in range(args.warmup + args.iters):
        if i == args.warmup:
            torch.cuda.synchronize(device)
            ddp.barrier(ctx)
            start = time.perf_counter()
        result = run_iteration(method, optimizers, batch, i, device, cfg.train.amp, "stop", sync, defer=defer)
        if sync is not None:
            ddp.broadcast_state(method.modules, ctx, buffers_only=True)
        if previous is not None:  # as the trainer: the last iteration's values, read once this one is queued
            finish_readback(previous)
        previous = result
    finish_readback(previous)
    torch.cuda.synchronize(device)
    ddp.barrier(ctx)
    seconds = time.perf_counter() - start
    return {"case": name, "gpus": ctx.world_size, "global_batch": case["batch_size"], "per_gpu_batch": n,
            "amp": args.amp, "readback": args.readback, "iters": args.iters, "step_ms": 1000 * seconds / args.iters,
            "images_per_s": case["batch_size"] * args.iters / seconds,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30}


def worker(args: argparse.Namespace) -> None:
    from ssl_mamba.engine import distributed as ddp

    ctx = ddp.init_distributed("cuda")
    device = ddp.rank_device(torch.device("cuda"), ctx)
    torch.backends.cudnn.benchmark = True
    rows = []
    for name in [c for c in args.cases.split(",") if c]:
        try:
            rows.append(measure_case(name, ctx, device, args))
        except Exception as exc:  # record and go on with the next case
            rows.append({"case": name, "gpus": ctx.world_size, "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc()[-3000:]})
        torch.cuda.empty_cache()
    if ctx.is_main:
        for row in rows:
            print(json.dumps(row), flush=True)
        if args.part:
            Path(args.part).write_text(json.dumps(rows))
    ddp.shutdown(ctx)


# ---------------------------------------------------------------------------------------------- launcher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, args: argparse.Namespace, part: Path) -> list:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(Path(__file__).resolve()), "--worker", "--part", str(part),
           "--cases", args.cases, "--warmup", str(args.warmup), "--iters", str(args.iters), "--amp", args.amp,
           "--readback", args.readback]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "NCCL_NVLS_ENABLE": "0"})
    if proc.returncode != 0 or not part.is_file():
        return [{"gpus": world, "error": f"torchrun exited with {proc.returncode}"}]
    return json.loads(part.read_text())


def table(rows: list) -> str:
    lines = [f"{'case':34s} {'GPUs':>4s} {'batch/GPU':>9s} {'step ms':>9s} {'img/s':>9s} {'speedup':>8s} {'mem GiB':>8s}"]
    base = {r["case"]: r["images_per_s"] for r in rows if r.get("gpus") == 1 and "images_per_s" in r}
    for r in rows:
        if "images_per_s" not in r:
            lines.append(f"{r.get('case', '-'):34s} {r['gpus']:>4d}  error: {r['error']}")
            continue
        speed = r["images_per_s"] / base[r["case"]] if r["case"] in base else float("nan")
        lines.append(f"{r['case']:34s} {r['gpus']:>4d} {r['per_gpu_batch']:>9d} {r['step_ms']:>9.1f} "
                     f"{r['images_per_s']:>9.1f} {speed:>8.2f} {r['peak_mem_gib']:>8.2f}")
    return "\n".join(lines)


def launcher(args: argparse.Namespace) -> None:
    worlds = [int(w) for w in args.gpus.split(",") if w]
    visible = torch.cuda.device_count()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            if world > visible:
                rows.append({"gpus": world, "error": f"only {visible} GPU(s) visible"})
                continue
            rows.extend(launch(world, args, Path(tmp) / f"part{world}.json"))
    report = {"device": torch.cuda.get_device_name(0) if visible else None, "torch": torch.__version__,
              "nccl_nvls_enable": os.environ["NCCL_NVLS_ENABLE"], "patch": PATCH, "results": rows}
    print(table(rows))
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_ddp.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments) if arguments.worker else launcher(arguments)
