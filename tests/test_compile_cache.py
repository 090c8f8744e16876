"""train.compile_cache: torch.compile's cache artifacts carried to a fresh machine turn its compiles into
cache hits (checked across two processes with separate inductor cache directories, inductor on the CPU);
a missing or damaged file only means compiling from scratch; the trainer loads before compiling and
writes after the first validation and at the end."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_trainer as th  # noqa: E402
from test_trainer import phantom_root  # noqa: E402,F401  (shared fixture)

from ssl_mamba.config import load_config  # noqa: E402
from ssl_mamba.engine.compile_cache import load_compile_cache  # noqa: E402
from ssl_mamba.engine.step import TrainingDiverged  # noqa: E402
from ssl_mamba.engine.trainer import TrainingInterrupted  # noqa: E402
from ssl_mamba.errors import ConfigError  # noqa: E402

# One process, as a run does: load the file (when given), compile a training step, save (the first
# validation), compile something more (a later shape), save again (the end); report the cache counters.
# Matrix products only: inductor calls its extern kernels for them, so no C++ compile (seconds, not minutes).
SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from torch._dynamo.utils import counters
    from ssl_mamba.engine.compile_cache import load_compile_cache, save_compile_cache

    load_from, save_to = sys.argv[1], sys.argv[2]
    out = {"loaded": load_compile_cache(load_from) if load_from else None,
           "empty_size": save_compile_cache(save_to + ".empty")}  # nothing compiled yet
    weight = torch.randn(8, 16, requires_grad=True)
    torch.compile(lambda x, w: x @ w.t())(torch.randn(4, 16), weight).sum().backward()  # forward, backward
    out["first_size"] = save_compile_cache(save_to)
    with torch.no_grad():
        torch.compile(lambda x: x @ x.t())(torch.randn(3, 5))
    out["size"] = save_compile_cache(save_to)
    for group in ("inductor", "aot_autograd"):
        out.update({k: v for k, v in counters[group].items() if "cache_" in k})
    print(json.dumps(out))
""")
# the environment must not switch inductor's caches (or dynamo) off, nor point them elsewhere
CACHE_SWITCHES = ("TORCHINDUCTOR_", "TORCHDYNAMO_", "TORCH_COMPILE_", "TRITON_CACHE_DIR", "PYTORCH_TRITON")


def _run(load_from: str, save_to: Path, cache_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CACHE_SWITCHES)}
    env.update({"TORCHINDUCTOR_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"})
    done = subprocess.run([sys.executable, "-c", SCRIPT, load_from, str(save_to)], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor on the CPU needs a C++ compiler")
def test_a_fresh_process_loading_the_file_hits_the_cache_instead_of_compiling(tmp_path, monkeypatch):
    first_file, fresh_file = tmp_path / "first.bin", tmp_path / "fresh.bin"
    first = _run("", first_file, tmp_path / "inductor_a")
    assert first["loaded"] is None and first["empty_size"] == 0 and not (tmp_path / "first.bin.empty").exists()
    assert 0 < first["first_size"] < first["size"] == first_file.stat().st_size
    assert first.get("fxgraph_cache_miss", 0) >= 3 and first.get("autograd_cache_miss", 0) >= 2
    # another cache dir: a fresh machine.  Every compile of the file's process (before its first save and
    # after it) is a hit, and what this process saves (its hits) serves the next machine as well
    fresh = _run(str(first_file), fresh_file, tmp_path / "inductor_b")
    assert fresh["loaded"] == first["fxgraph_cache_miss"] + first["autograd_cache_miss"]
    assert fresh.get("fxgraph_cache_hit", 0) == first["fxgraph_cache_miss"] and fresh.get("fxgraph_cache_miss", 0) == 0
    assert fresh.get("autograd_cache_hit", 0) == first["autograd_cache_miss"]
    assert fresh.get("autograd_cache_miss", 0) == 0
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor_c"))  # not this user's cache
    assert load_compile_cache(fresh_file) == fresh["loaded"]


def test_a_missing_or_damaged_file_means_compiling_from_scratch(tmp_path, caplog):
    assert load_compile_cache(tmp_path / "absent.bin") is None
    damaged = tmp_path / "damaged.bin"
    damaged.write_bytes(b"not a cache")
    with caplog.at_level("WARNING", logger="ssl_mamba"):
        assert load_compile_cache(damaged) is None
    assert f"compile cache {damaged} not loaded" in caplog.text and "compiling from scratch" in caplog.text


def test_a_compile_cache_without_compiling_is_refused():
    with pytest.raises(ConfigError, match="train.compile_cache.*nothing to cache"):
        load_config(overrides=["train.compile_cache=cache.bin"])


def test_trainer_loads_before_compiling_and_writes_after_the_first_validation_and_at_the_end(
        tmp_path, phantom_root, monkeypatch):  # noqa: F811
    import ssl_mamba.engine.compile_cache as compile_cache

    calls = []
    monkeypatch.setattr(compile_cache, "load_compile_cache", lambda path: calls.append(("load", path)) or 5)
    monkeypatch.setattr(compile_cache, "save_compile_cache", lambda path: calls.append(("save", path)) or 2_000_000)
    cfg = th.tiny_config(phantom_root, max_iterations=4, val_every=2)
    trainer = th.Trainer(cfg, tmp_path / "run", progress=False)
    # train.compile itself is refused off CUDA: the cache path alone is what the trainer's hooks read
    trainer.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile_cache="cc.bin"))
    trainer._load_compile_cache()
    trainer.fit()
    assert calls == [("load", "cc.bin"), ("save", "cc.bin"), ("save", "cc.bin")]  # iteration 2, then the end
    log = (tmp_path / "run" / "train.log").read_text()
    assert "compile cache cc.bin: 5 artifacts loaded" in log and "compile cache cc.bin written (2.0 MB)" in log


def test_train_log_tells_an_unreadable_cache_from_a_missing_one(tmp_path, phantom_root, monkeypatch):  # noqa: F811
    """The load's own warning comes before train.log opens: the start line must still say what happened."""
    import ssl_mamba.engine.compile_cache as compile_cache

    monkeypatch.setattr(compile_cache, "save_compile_cache", lambda path: 0)
    damaged = tmp_path / "damaged.bin"
    damaged.write_bytes(b"not a cache")
    logs = {}
    for name, path in (("missing", tmp_path / "absent.bin"), ("damaged", damaged)):
        cfg = th.tiny_config(phantom_root, max_iterations=2)
        trainer = th.Trainer(cfg, tmp_path / name, progress=False)
        trainer.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile_cache=str(path)))
        trainer._load_compile_cache()
        trainer.fit()
        logs[name] = (tmp_path / name / "train.log").read_text()
    assert "none loaded (written after the first validation)" in logs["missing"]
    assert "not loaded (unreadable, or another torch): compiling from scratch" in logs["damaged"]


@pytest.mark.parametrize("options, stopped_by", [({"term_at": 0}, TrainingInterrupted),
                                                 ({"nan_at": 0}, TrainingDiverged)])
def test_a_run_stopped_before_its_first_validation_still_writes_what_it_compiled(
        tmp_path, phantom_root, monkeypatch, options, stopped_by):  # noqa: F811
    import ssl_mamba.engine.compile_cache as compile_cache

    calls = []
    monkeypatch.setattr(compile_cache, "save_compile_cache", lambda path: calls.append(path) or 2_000_000)
    cfg = th.tiny_config(phantom_root, max_iterations=4, val_every=4, options=options)
    trainer = th.Trainer(cfg, tmp_path / "run", progress=False)
    trainer.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile_cache="cc.bin"))
    with pytest.raises(stopped_by):
        trainer.fit()
    assert calls == ["cc.bin"]  # SIGTERM: resumed on a fresh machine; NaN: retried - neither compiles again


def test_a_failed_or_empty_write_only_warns_and_the_next_validation_tries_again(
        tmp_path, phantom_root, monkeypatch, caplog):  # noqa: F811
    import ssl_mamba.engine.compile_cache as compile_cache

    cfg = th.tiny_config(phantom_root)
    trainer = th.Trainer(cfg, tmp_path / "run", progress=False)
    trainer.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile_cache="cc.bin"))

    def broken(path):
        raise RuntimeError("torch's serializer failed")

    with caplog.at_level("INFO", logger="ssl_mamba"):
        monkeypatch.setattr(compile_cache, "save_compile_cache", broken)
        trainer._save_compile_cache()  # not only OSError: no run dies for its cache
        assert not trainer.compile_cache_saved and "cc.bin not written (RuntimeError" in caplog.text
        monkeypatch.setattr(compile_cache, "save_compile_cache", lambda path: 0)
        trainer._save_compile_cache()
        assert not trainer.compile_cache_saved and "written (0.0 MB)" not in caplog.text
        monkeypatch.setattr(compile_cache, "save_compile_cache", lambda path: 1_000_000)
        trainer._save_compile_cache()
        assert trainer.compile_cache_saved and "compile cache cc.bin written (1.0 MB)" in caplog.text
