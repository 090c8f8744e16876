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
from ssl_mamba.errors import ConfigError  # noqa: E402

# One process: compile a small module with inductor, run forward and backward, report the cache counters.
SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    from torch._dynamo.utils import counters
    from ssl_mamba.engine.compile_cache import load_compile_cache, save_compile_cache

    mode, path = sys.argv[1], sys.argv[2]
    out = {"loaded": load_compile_cache(path) if mode == "load" else None}
    if mode == "save":
        out["empty_size"] = save_compile_cache(path + ".empty")  # nothing compiled yet
    torch.manual_seed(0)
    net = torch.compile(nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 8)))
    net(torch.randn(4, 16, requires_grad=True)).sum().backward()
    if mode == "save":
        out["size"] = save_compile_cache(path)
    out.update({k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")})
    print(json.dumps(out))
""")


def _run(mode: str, cache_file: Path, cache_dir: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(cache_file)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor on the CPU needs a C++ compiler")
def test_a_fresh_process_loading_the_file_hits_the_cache_instead_of_compiling(tmp_path):
    cache_file = tmp_path / "compile_cache.bin"
    first = _run("save", cache_file, tmp_path / "inductor_a")
    assert first["empty_size"] == 0 and not (tmp_path / "compile_cache.bin.empty").exists()
    assert first["size"] == cache_file.stat().st_size > 0 and first.get("fxgraph_cache_miss", 0) >= 1
    fresh = _run("load", cache_file, tmp_path / "inductor_b")  # another cache dir: a fresh machine
    assert fresh["loaded"] >= 1
    assert fresh.get("fxgraph_cache_hit", 0) == first["fxgraph_cache_miss"] and fresh.get("fxgraph_cache_miss", 0) == 0


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
