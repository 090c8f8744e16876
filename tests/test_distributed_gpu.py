"""Data-parallel cross teaching (UNet + Mamba-UNet) through torchrun, as the Semi-Mamba-UNet rows train
on two GPUs each: NCCL, bf16, train CUDA graphs, compiled blocks and the triton scan.  tests/test_distributed.py
covers data parallelism on the CPU (gloo) but none of these GPU settings; this file runs the whole
combination where two GPUs are visible, and the same harness on the CPU (gloo, plain fp32) everywhere,
so a broken harness shows on CI rather than on the card.

What a run must show: it ends normally with both processes (the trainer compares the ranks' replicas at
every checkpoint and stops the run if they differ, so a normal end includes those checks), its losses
stay finite, its checkpoint holds both ranks' RNG states, and on the GPU the scan ran on triton, the graphs
were captured and the blocks compiled.
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
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_backend="auto"))
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
    losses = [r["loss/seg"] for r in th.read_jsonl(run_dir / "metrics.jsonl") if "loss/seg" in r]
    assert len(losses) == ITERATIONS and all(math.isfinite(v) for v in losses)
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
