"""torch.compile's cache carried between machines (`train.compile_cache`).

Compiling the blocks (`train.compile` / `eval.compile`) costs a fresh machine about two minutes
before the first iteration (Triton kernels generated, compiled and tuned).  Inductor keeps what it
built in a local cache directory, which a new container or a lent GPU machine starts without;
torch.compiler's portable cache artifacts hold the same results in one file.  Loading that file
before compiling turns the compiles into cache hits when the code, torch and the GPU are the same;
anything else (another torch, a changed block, a damaged file) only means compiling from scratch,
so a failed load warns and never stops a run.

The file is torch's serialization, which holds pickles: load only files this project wrote.

torch (2.13, and upstream since) appends each `save_cache_artifacts` call's new artifacts to the bytes it
returns as one more (kind, artifacts) chunk, while `load_cache_artifacts` keeps only the last chunk
of each kind (`dict(chunks)`): a file saved after the first validation and again at the end, with a
compile in between, would load just the later compiles.  `_one_chunk_per_kind` merges the chunks on
saving (and on loading, for files written before).
"""
from pathlib import Path
from typing import Optional, Union

import torch

from ..utils.io import atomic_write_bytes
from ..utils.log import get_logger

log = get_logger("engine.compile_cache")


def _one_chunk_per_kind(data: bytes) -> bytes:
    """`data` with each kind's artifacts in one chunk, so that torch's loader keeps them all; `data`
    itself when it already is, or when torch's private format cannot be read here (another torch)."""
    try:
        from torch.compiler._cache import CacheArtifactManager, _deserialize_single_cache, _serialize_single_cache
        from torch.utils._appending_byte_serializer import AppendingByteSerializer

        CacheArtifactManager._ensure_cache_artifacts_registered()
        chunks = AppendingByteSerializer.to_list(data, deserialize_fn=_deserialize_single_cache)
        kinds: dict = {}
        for kind, artifacts in chunks:
            kinds.setdefault(kind, []).extend(artifacts)
        if len(kinds) == len(chunks):
            return data
        serializer = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
        serializer.extend(list(kinds.items()))
        return serializer.to_bytes()
    except Exception:  # noqa: BLE001 - a damaged file is torch's loader's to report; a changed torch: as is
        return data


def _count(info) -> int:
    """The artifacts in a torch CacheInfo: `artifacts` {kind: keys} (2.8+), or one list per kind (2.7)."""
    kinds = getattr(info, "artifacts", None)
    if kinds is None:
        kinds = vars(info)
    return sum(len(keys) for keys in kinds.values())


def load_compile_cache(path: Union[str, Path]) -> Optional[int]:
    """Pre-populate this process's compile caches from `path`: the number of artifacts loaded, or None
    when there is no such file or it cannot be loaded (warned: the run compiles from scratch)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        info = torch.compiler.load_cache_artifacts(_one_chunk_per_kind(path.read_bytes()))
        loaded = None if info is None else _count(info)
    except Exception as exc:  # another torch version, a truncated file: compile as without it
        loaded, why = None, f"{type(exc).__name__}: {exc}"
    else:
        why = "torch could not read it"  # a damaged file: torch logs why and returns None
    if loaded is None:
        log.warning("compile cache %s not loaded (%s); compiling from scratch", path, why)
    return loaded


def save_compile_cache(path: Union[str, Path]) -> int:
    """Write what this process compiled (and loaded) so far to `path`, atomically: its size in bytes
    (0, and no file written, when nothing was compiled)."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return 0
    data = _one_chunk_per_kind(saved[0])
    atomic_write_bytes(Path(path), data)
    return len(data)
