"""Backend choice for the scan ops: names, availability, `auto`, and the `selective_scan` entry point.

Backends: `torch` (pure PyTorch, always there), `mamba_ssm` (mamba-ssm's compiled CUDA kernel,
optional), `triton` (`ssl_mamba/ops/triton_ss2d.py`; fused SS2D, on CUDA or under
TRITON_INTERPRET=1 on the CPU).  Optional backends are imported lazily, on first request.
"""
import functools
import importlib
import os
import sys
from types import ModuleType
from typing import Callable, List, Optional, Set, Tuple, Union

import torch

from ssl_mamba.errors import UserError
from ssl_mamba.ops.mamba_ssm_backend import (
    _import_selective_scan_fn, load_selective_scan_fn, selective_scan_mamba_ssm)
from ssl_mamba.ops.selective_scan_ref import check_scan_shapes, selective_scan_torch
from ssl_mamba.utils.log import get_logger

KNOWN_BACKENDS = ("auto", "torch", "mamba_ssm", "triton")
OPS = ("ss2d", "selective_scan")
_TRITON_FN = {"ss2d": "ss2d_scan_triton", "selective_scan": "selective_scan_triton"}
_LOGGED: Set[Tuple[str, str]] = set()
_log = get_logger("ssl_mamba.ops")


@functools.lru_cache(maxsize=1)
def _import_triton_module() -> Tuple[Optional[ModuleType], str]:
    """(ssl_mamba.ops.triton_ss2d, "") when it and triton import, else (None, reason)."""
    try:
        module = importlib.import_module("ssl_mamba.ops.triton_ss2d")
    except ImportError as exc:
        return None, f"ssl_mamba.ops.triton_ss2d does not import ({exc})"
    if getattr(module, "triton", None) is None:
        return None, "the triton package is not installed"
    return module, ""


def _triton_status(device_type: str, op: str) -> Tuple[bool, str]:
    """Whether the triton backend can run `op` on `device_type` here, and why not."""
    module, reason = _import_triton_module()
    if module is None:
        return False, reason
    if not hasattr(module, _TRITON_FN[op]):
        return False, f"ssl_mamba.ops.triton_ss2d has no {_TRITON_FN[op]} (op {op!r})"
    if device_type == "cuda":
        return (True, "") if torch.cuda.is_available() else (False, "no CUDA device")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    return False, f"it needs a CUDA tensor (got {device_type}) or TRITON_INTERPRET=1 set before importing triton"


def triton_op(op: str) -> Callable:
    """The triton module's function for `op` (call only after resolve_backend returned 'triton')."""
    return getattr(_import_triton_module()[0], _TRITON_FN[op])


def set_low_memory_scan(enabled: bool) -> None:
    """Whether the triton backend's SS2D backward runs as a persistent grid sized to the GPU (its
    recompute scratch then takes ~140 MB instead of ~530 MB at Mamba-UNet's first stage, batch 24;
    measured on an H200: bf16 step peak 4.32 -> 3.99 GiB, backward kernels ~20% slower).  No effect
    on the other backends, or where triton does not import.  Turning it off does not import triton
    (a run that never uses the triton backend should not load it)."""
    if enabled:
        module, _ = _import_triton_module()
    else:
        module = sys.modules.get("ssl_mamba.ops.triton_ss2d")
    if module is not None and getattr(module, "triton", None) is not None:
        module.set_block_config(bwd_programs=-1 if enabled else 0)


def _mamba_ssm_ok(device_type: str) -> bool:
    """Whether the mamba-ssm kernel can run on device_type here."""
    return device_type == "cuda" and torch.cuda.is_available() and _import_selective_scan_fn()[0] is not None


def _check_name(name: str, op: str) -> None:
    """Raise UserError for an unknown backend name (listing the known ones), ValueError for an unknown op."""
    if name not in KNOWN_BACKENDS:
        raise UserError(f"unknown scan backend {name!r}; known backends: {', '.join(KNOWN_BACKENDS)}")
    if op not in OPS:
        raise ValueError(f"resolve_backend: unknown op {op!r}; known ops: {', '.join(OPS)}")


def _resolve_auto(device_type: str, op: str) -> str:
    """The fastest backend that works for `op` on `device_type`; logged once per (device, op)."""
    choice = "torch"
    if device_type == "cuda":
        if _triton_status(device_type, op)[0]:
            choice = "triton"
        elif _mamba_ssm_ok(device_type):
            choice = "mamba_ssm"
    if (device_type, op) not in _LOGGED:
        _LOGGED.add((device_type, op))
        _log.info("scan backend auto -> %s for %s on %s", choice, op, device_type)
    return choice


def resolve_backend(name: str, device: Union[str, torch.device], op: str = "ss2d") -> str:
    """Turn a backend name ('auto' included) into one that can run `op` on `device`.

    An explicitly requested backend that cannot run raises UserError saying why and what to do.
    """
    _check_name(name, op)
    device_type = torch.device(device).type
    if name == "auto":
        return _resolve_auto(device_type, op)
    if name == "mamba_ssm":
        load_selective_scan_fn()  # raises with the install steps when missing
        if device_type != "cuda":
            raise UserError(f"scan backend 'mamba_ssm' needs CUDA tensors, got device {device_type}; "
                            "use scan_backend 'torch' or 'auto'")
    if name == "triton":
        ok, reason = _triton_status(device_type, op)
        if not ok:
            raise UserError(f"scan backend 'triton' cannot run {op} here: {reason}; "
                            "use scan_backend 'torch' or 'auto'")
    return name


def available_backends(op: str = "ss2d") -> List[str]:
    """Backends usable for `op` on this machine (for its CUDA device when it has one)."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    names = ["torch"]
    if _mamba_ssm_ok(device_type):
        names.append("mamba_ssm")
    if _triton_status(device_type, op)[0]:
        names.append("triton")
    return names


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan with mamba-ssm `selective_scan_fn` semantics on the chosen backend.

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,).
    Returns y (b, d, l) in u's dtype, and the last state (b, d, n) when `return_last_state`.
    """
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device, op="selective_scan")
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "mamba_ssm":
        return selective_scan_mamba_ssm(*args)
    if name == "triton":
        return triton_op("selective_scan")(*args)
    return selective_scan_torch(*args)
