"""Optional backend `mamba_ssm`: the compiled CUDA selective scan of the mamba-ssm package.

Nothing here imports mamba_ssm at package import time; `load_selective_scan_fn` does it on first
use and remembers the outcome, so machines without the CUDA extension pay nothing.
"""
import functools
from typing import Callable, Optional, Tuple, Union

import torch

from ssl_mamba.errors import UserError

INSTALL_HINT = ("install a CUDA build of torch, then "
                "`pip install --no-build-isolation --no-cache-dir mamba-ssm`")


@functools.lru_cache(maxsize=1)
def _import_selective_scan_fn() -> Tuple[Optional[Callable], str]:
    """(selective_scan_fn, "") when mamba-ssm and its compiled kernel import, else (None, reason)."""
    try:
        import selective_scan_cuda  # noqa: F401  (the compiled extension; absent on CPU builds)
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as exc:  # also covers a broken extension (undefined symbol, ...)
        return None, f"{type(exc).__name__}: {exc}"
    return selective_scan_fn, ""


def mamba_ssm_available() -> bool:
    """True when the mamba-ssm CUDA kernel imports and a CUDA device is present."""
    return torch.cuda.is_available() and _import_selective_scan_fn()[0] is not None


def load_selective_scan_fn() -> Callable:
    """Return mamba-ssm's `selective_scan_fn`, or raise UserError with the install steps."""
    fn, reason = _import_selective_scan_fn()
    if fn is None:
        raise UserError(f"scan backend 'mamba_ssm' is not available here ({reason}); {INSTALL_HINT}, "
                        "or use scan_backend 'torch' / 'auto'")
    return fn


def selective_scan_mamba_ssm(
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
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Call mamba-ssm's kernel with the same arguments (CUDA tensors only).

    The kernel wants contiguous tensors, A/D/delta_bias in float32 and delta, B, C, z in u's dtype;
    this adapter arranges that so callers can pass what the torch backend accepts.
    """
    if u.device.type != "cuda":
        raise UserError(f"scan backend 'mamba_ssm' needs CUDA tensors, got device {u.device}; "
                        "use scan_backend 'torch' or 'auto' on the CPU")
    fn = load_selective_scan_fn()
    def as_u(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.to(u.dtype).contiguous()

    def as_f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.float().contiguous()

    return fn(u.contiguous(), as_u(delta), as_f32(A), as_u(B), as_u(C), as_f32(D), as_u(z),
              as_f32(delta_bias), delta_softplus, return_last_state)
