"""Data-parallel cross teaching (UNet + Mamba-UNet) through torchrun, as the Semi-Mamba-UNet rows train
on two GPUs each: NCCL, bf16, train CUDA graphs, compiled blocks and the triton scan.  tests/test_distributed.py
covers data parallelism on the CPU (gloo) but none of these GPU settings; this file runs the whole
combination where two GPUs are visible, and the same harness on the CPU (gloo, plain fp32) everywhere,
so a broken harness shows on CI rather than on the card.

What a run must show: it ends normally with both processes (the trainer compares the ranks' replicas at
every checkpoint and stops the run if they differ, so a normal end includes those checks), its losses
stay finite, its validations (each rank scores a share of the volumes) are logged, its checkpoint holds both
ranks' RNG states, and on the GPU the scan ran on triton, the graphs (train and eval) were captured and the
blocks compiled.
"""
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_trainer as th  # noqa: E402
from test_distributed import free_port  # noqa: E402
from test_trainer import phantom_root  # noqa: E402,F401  (shared fixture)

ITERATIONS = 6
GPU_SETTINGS = dict(device="cuda", amp="bf16", cuda_graphs=True, compile=True)


def _train_two_processes(tmp_path: Path, root: Path, gpu: bool) -> Path:
    cfg = th.tiny_config(root, method="cross_teaching", networks=["test_unet", "test_mamba_unet"],
                         labeled_batch_size=2, patch=64, max_iterations=ITERATIONS, val_every=3,
                         checkpoint_every=3, **(GPU_SETTINGS if gpu else {}))
    # as the rows validate (eval graphs on the GPU; surface distances at every other validation and the last)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_backend="auto"),
                              eval=dataclasses.replace(cfg.eval, cuda_graphs=gpu, val_distances_every=2))
    cfg_path, run_dir = tmp_path / "cross.yaml", tmp_path / "run"
    th.write_config(cfg, cfg_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "ssl_mamba.cli", "train", "-c", str(cfg_path),
           "--run-dir", str(run_dir), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=480)
    assert out.returncode == 0, out.stderr[-4000:]
    return run_dir


def _check_run(run_dir: Path, gpu: bool) -> None:
    summary = th.json.loads((run_dir / "summary.json").read_text())
    assert (summary["processes"], summary["iterations"]) == (2, ITERATIONS)
    assert summary["amp"] == ("bf16" if gpu else "none")
    rows = th.read_jsonl(run_dir / "metrics.jsonl")
    losses = [r["loss/seg"] for r in rows if "loss/seg" in r]
    assert len(losses) == ITERATIONS and all(math.isfinite(v) for v in losses)
    # both ranks validated a share of the volumes and rank 0 logged the merged scores
    assert [r["step"] for r in rows if "val/net2/dice" in r] == [3, 6]
    # the first validation (3 // 3 = 1, odd) skipped HD95 on both ranks; the last scored it, merged
    assert [r["step"] for r in rows if "val/net2/hd95" in r] == [6] and math.isfinite(rows[-1]["val/net2/hd95"])
    log = (run_dir / "train.log").read_text()
    assert "data parallel: 2 processes" in log
    assert f"scan backend auto -> {'triton' if gpu else 'torch'} for ss2d" in log
    if gpu:
        assert "capturing CUDA graphs of net1, net2" in log and "compiled blocks per network" in log
    checkpoint = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == ITERATIONS and len(checkpoint["rng_ranks"]) == 2


def test_two_process_cross_teaching_harness_on_the_cpu(tmp_path, phantom_root):  # noqa: F811
    _check_run(_train_two_processes(tmp_path, phantom_root, gpu=False), gpu=False)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpu_cross_teaching_with_the_rows_fast_settings(tmp_path, phantom_root):  # noqa: F811
    _check_run(_train_two_processes(tmp_path, phantom_root, gpu=True), gpu=True)


def _sync_free_worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: a deferred data-parallel cross-teaching iteration (gradient all-reduce, stop vote,
    BatchNorm buffer broadcast) under sync-debug 'error'; writes 'ok' or the error."""
    import torch.distributed as dist

    from ssl_mamba.engine import distributed as ddp
    from ssl_mamba.engine.step import finish_readback, run_iteration
    from test_device_syncs import no_device_syncs
    from test_methods import build, make_batch

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        device, ctx = torch.device("cuda", rank), ddp.DistContext(rank, 2)
        method = build("cross_teaching", ["test_unet", "test_unet"], batch_size=2, labeled=1).to(device)
        optimizers = [torch.optim.SGD(g.params, lr=0.01, momentum=0.9) for g in method.optimizer_groups()]
        batch, sync = make_batch(size=2, labeled=1).to(f"cuda:{rank}"), ddp.GradSync(ctx, device)
        vote = lambda: {"_stop": float(rank)}  # noqa: E731

        def iteration(step: int):
            result = run_iteration(method, optimizers, batch, step, device, sync=sync, defer=True, votes=vote)
            ddp.broadcast_state(method.modules, ctx, buffers_only=True)
            return result

        finish_readback(iteration(0))  # warm-up: NCCL communicators, momentum buffers, cached flags
        try:
            with no_device_syncs():
                result = iteration(1)
            finish_readback(result)
            outcome = f"ok {result.logs['_stop']}"
        except RuntimeError as exc:
            outcome = f"synced: {exc}"
        Path(out_dir, f"sync_free_{rank}.txt").write_text(outcome)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_deferred_data_parallel_iteration_does_not_wait_for_the_gpu(tmp_path):
    """The data-parallel iteration waited for the GPU four times (loss read-back, its mean over ranks,
    the gradient-presence check, the logged scalars' mean): two H200s sat 15-30% idle on the
    Semi-Mamba-UNet row (twelfth session).  Deferred, it queues everything, the votes are averaged
    with the values (rank 0 votes 0, rank 1 votes 1: mean 0.5 on both)."""
    import torch.multiprocessing as mp

    mp.spawn(_sync_free_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert (tmp_path / f"sync_free_{rank}.txt").read_text() == "ok 0.5"
