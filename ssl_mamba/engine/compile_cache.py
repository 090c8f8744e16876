"""torch.compile's cache carried between machines (`train.compile_cache`).

Compiling the blocks (`train.compile` / `eval.compile`) costs a fresh machine about two minutes
before the first iteration (Triton kernels generated, compiled and tuned).  Inductor keeps what it
built in a local cache directory, which a new container or a lent GPU machine starts without;
torch.compiler's portable cache artifacts hold the same results in one file.  Loading that file
before compiling turns the compiles into cache hits when the code, torch and the GPU are the same;
anything else (another torch, a changed block, a damaged file) only means compiling from scratch,
so a failed load warns and never stops a run.
"""
from pathlib import Path
from typing import Optional, Union

import torch

from ..utils.io import atomic_write_bytes
from ..utils.log import get_logger

log = get_logger("engine.compile_cache")


def load_compile_cache(path: Union[str, Path]) -> Optional[int]:
    """Pre-populate this process's compile caches from `path`: the number of artifacts loaded, or None
    when there is no such file or it cannot be loaded (warned: the run compiles from scratch)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as exc:  # another torch version, a truncated file: compile as without it
        info, why = None, f"{type(exc).__name__}: {exc}"
    else:
        why = "torch could not read it"  # a damaged file: torch logs why and returns None
    if info is None:
        log.warning("compile cache %s not loaded (%s); compiling from scratch", path, why)
        return None
    return sum(len(keys) for keys in info.artifacts.values())


def save_compile_cache(path: Union[str, Path]) -> int:
    """Write what this process compiled (and loaded) so far to `path`, atomically: its size in bytes
    (0, and no file written, when nothing was compiled)."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return 0
    data, _ = saved
    atomic_write_bytes(Path(path), data)
    return len(data)
