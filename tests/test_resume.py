"""Resume exactness and crash safety of the trainer.

A run killed with SIGKILL after it wrote a checkpoint, then resumed, must end with weights
identical (torch.equal) to an uninterrupted run; a kill never leaves a half-written checkpoint.
Uses a tiny teacher method defined in test_trainer.py (student + EMA teacher + dropout, so the
RNG states, the teacher and the optimizer momentum all have to be restored).
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_mamba.engine.checkpoint import load_checkpoint, save_checkpoint
from ssl_mamba.engine.trainer import Trainer
from ssl_mamba.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_trainer as th  # noqa: E402
from test_trainer import one_thread, phantom_root  # noqa: E402,F401  (shared fixtures)

N_ITERS = 10


def _cfg(data_root: Path, sleep: float = 0.0):
    return th.tiny_config(data_root, method="_test_teacher", networks=["test_unet"], max_iterations=N_ITERS,
                          checkpoint_every=2, val_every=4, labeled_batch_size=2, options={"sleep": sleep})


def _weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "last.pt")["method"]


def test_resume_after_sigkill_equals_uninterrupted(tmp_path, phantom_root):
    straight = tmp_path / "straight"
    Trainer(_cfg(phantom_root), straight, progress=False).fit()

    killed = tmp_path / "killed"
    cfg_path = tmp_path / "killed.yaml"
    th.write_config(_cfg(phantom_root, sleep=0.4), cfg_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(Path(th.__file__)), str(cfg_path), str(killed)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        reached = th.wait_for_checkpoint(killed / "last.pt", min_iteration=4, timeout=120, child=child)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert 4 <= reached < N_ITERS
    stopped_at = load_checkpoint(killed / "last.pt")["iteration"]
    assert stopped_at < N_ITERS, "the child finished before it was killed; the test proved nothing"

    summary = Trainer(_cfg(phantom_root), killed, resume=True, progress=False).fit()
    assert summary["iterations"] == N_ITERS
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys() and any(k.startswith("ema1.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume from iteration {stopped_at}"
    steps = [row["step"] for row in th.read_jsonl(killed / "metrics.jsonl")]
    assert steps == list(range(1, N_ITERS + 1)), "metrics.jsonl must read as one uninterrupted run"


def test_interrupted_checkpoint_write_keeps_previous(tmp_path):
    """A write that dies half-way (here: an exception mid-pickle) leaves the old file intact."""
    path = tmp_path / "last.pt"
    save_checkpoint({"iteration": 3, "w": torch.arange(4.0)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        save_checkpoint({"iteration": 5, "w": torch.zeros(10_000), "bad": Boom()}, path)
    state = load_checkpoint(path)
    assert state["iteration"] == 3 and torch.equal(state["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "temp files must be cleaned up"


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"iteration": 1}, path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(path)


def test_resume_without_checkpoint_and_reuse_of_run_dir_are_errors(tmp_path, phantom_root):
    with pytest.raises(UserError, match="cannot resume"):
        Trainer(_cfg(phantom_root), tmp_path / "nothing", resume=True, progress=False)
    save_checkpoint({"iteration": 1}, tmp_path / "used" / "last.pt")
    with pytest.raises(UserError, match="already holds a run"):
        Trainer(_cfg(phantom_root), tmp_path / "used", progress=False)
