"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash or SIGKILL at any moment leaves either the previous file or the new one, never a
truncated mix, because `os.replace` is atomic on POSIX within one file system.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, Path]
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: PathLike, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are as readable as any file
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    _atomic_write(path, lambda fh: fh.write(text), "w")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data), "wb")


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    import torch

    _atomic_write(path, lambda fh: torch.save(obj, fh), "wb")


def _json_default(obj: Any) -> Any:
    try:  # numpy scalars and arrays
        return obj.tolist()
    except AttributeError:
        return str(obj)
