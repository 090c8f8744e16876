"""Naive sequential selective scan: the test oracle, never used for training.

It runs one Python step per position, exactly as the recurrence is written in the Mamba paper and
in reference-original.md §1.4, so that every faster backend can be checked against it.  It keeps
float64 inputs in float64 (the tests compare against it in double precision); every other dtype is
computed in float32.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F


def _compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """float64 when any given tensor is float64, else float32."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def selective_scan_oracle(
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
    """Selective scan with mamba-ssm `selective_scan_fn` semantics, one position at a time.

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,).
    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t;  y_t = <C_t, h_t> + D u_t;  y *= silu(z).
    Returns y in u's dtype, plus the final state (b, d, n) in the compute dtype when asked.
    """
    dtype_in = u.dtype
    cdt = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C = (t.to(cdt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    bsz, dim, length = u.shape
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]  # (b, 1, n, l)
    per_group = dim // B.shape[1]
    B = B.repeat_interleave(per_group, dim=1)  # (b, d, n, l)
    C = C.repeat_interleave(per_group, dim=1)  # (b, d, n, l)
    h = u.new_zeros(bsz, dim, A.shape[1])
    ys = []
    # unbind gives per-step views whose backward is one stack (indexing [..., t] would make the
    # backward allocate a full-size gradient per step, i.e. quadratic in L)
    steps = zip(delta.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1))
    for delta_t, u_t, B_t, C_t in steps:  # (b, d), (b, d), (b, d, n), (b, d, n)
        h = torch.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * B_t
        ys.append((h * C_t).sum(-1))  # (b, d)
    y = torch.stack(ys, dim=-1)  # (b, d, l)
    if D is not None:
        y = y + u * D.to(cdt)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y
