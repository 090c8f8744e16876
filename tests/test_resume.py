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
import time
from pathlib import Path

import pytest
import torch

from ssl_mamba.engine.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
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


@pytest.mark.parametrize("visible", [1, 4])
def test_restore_rng_state_with_fewer_visible_gpus_than_saved(monkeypatch, visible):
    """A row moved from a 4-GPU process to one card (CUDA_VISIBLE_DEVICES=0) resumes from a checkpoint with
    four CUDA RNG states: only the visible devices' states are restored, device i from state i (restoring
    all four crashed in torch.cuda.set_rng_state_all with IndexError).  No GPU needed: CUDA is faked."""
    calls = []
    record = lambda new_state, device: calls.append((device, new_state.clone()))  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", record)
    # set_rng_state_all calls this module's own name: patched too, so it can't queue real lazy CUDA calls
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", record)
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    restore_rng_state({**capture_rng_state(), "cuda": saved})
    assert [device for device, _ in calls] == list(range(visible))
    assert all(torch.equal(state, saved[i]) for i, (_, state) in enumerate(calls))


def test_resume_without_checkpoint_and_reuse_of_run_dir_are_errors(tmp_path, phantom_root):
    with pytest.raises(UserError, match="cannot resume"):
        Trainer(_cfg(phantom_root), tmp_path / "nothing", resume=True, progress=False)
    save_checkpoint({"iteration": 1}, tmp_path / "used" / "last.pt")
    with pytest.raises(UserError, match="already holds a run"):
        Trainer(_cfg(phantom_root), tmp_path / "used", progress=False)


def _logged_steps(run_dir: Path) -> int:
    log = run_dir / "metrics.jsonl"
    return len(th.read_jsonl(log)) if log.is_file() else 0


def test_sigterm_stops_after_the_iteration_with_a_checkpoint_and_resume_is_exact(tmp_path, phantom_root):
    """A time limit's SIGTERM between periodic checkpoints loses nothing: the run writes last.pt at the
    iteration it stopped after, and resuming from there equals an uninterrupted run."""
    def cfg(sleep=0.0):
        c = _cfg(phantom_root, sleep)
        c.train.checkpoint_every = 1000  # no periodic checkpoint before the end: only the stop writes one
        return c

    straight = tmp_path / "straight"
    Trainer(cfg(), straight, progress=False).fit()
    stopped = tmp_path / "stopped"
    cfg_path = tmp_path / "stopped.yaml"
    th.write_config(cfg(sleep=0.4), cfg_path)
    child = subprocess.Popen([sys.executable, str(Path(th.__file__)), str(cfg_path), str(stopped)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while _logged_steps(stopped) < 3:
            assert child.poll() is None and time.time() < deadline, "the child ended or stalled before the signal"
            time.sleep(0.1)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode != 0 and "stopped by SIGTERM after iteration" in err, err[-2000:]
    at = load_checkpoint(stopped / "last.pt")["iteration"]
    assert 3 <= at < N_ITERS and f"after iteration {at};" in err
    Trainer(cfg(), stopped, resume=True, progress=False).fit()
    a, b = _weights(straight), _weights(stopped)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume from the SIGTERM at iteration {at}"


def test_loader_workers_leave_stop_signals_to_the_trainer():
    code = ("import os, signal; from ssl_mamba.data.stream import ignore_stop_signals; ignore_stop_signals(0); "
            "os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGINT); print('alive')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "alive", out.stderr
