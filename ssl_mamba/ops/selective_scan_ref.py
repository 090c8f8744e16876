"""Pure-PyTorch selective scan (backend `torch`): chunked, linear in L forward and backward.

Layout.  The sequence is cut into `nc` chunks of `T` positions (the tail padded with delta = 0,
which leaves the state unchanged).  Work tensors live as (T, b, g, dg, nc, n): position inside the
chunk first (so each loop step reads one contiguous slice), then batch, B/C group, channel inside
the group, chunk, state.

Algorithm (no Python loop over all L positions; loops of T and of nc steps, T = 64 by default):
1. every chunk's end state from a zero start: a T-step loop run on all chunks at once;
2. a loop over the nc chunks carries the state from chunk to chunk, using each chunk's total decay
   exp(sum_t delta_t A), the exponential of an in-chunk cumulative sum of delta*A (<= 0);
3. a second T-step loop, all chunks at once, rebuilds every state from its true chunk start and
   contracts it with C.
Only exp(delta*A) and exp(sum of delta*A) are ever taken, both of non-positive numbers, so strong
decays underflow harmlessly to 0 instead of overflowing (a closed form exp(S_t) * exp(-S_s) would
overflow).  Autograd through these ops keeps the backward linear in L and in memory (about four
(b, d, L, n) fp32 tensors are saved), unlike a per-position loop that indexes full tensors.
Loop slices come from `unbind`, whose backward is one stack, not one full-size zero tensor per step.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ssl_mamba.ops.selective_scan_oracle import _compute_dtype

DEFAULT_CHUNK = 64


def check_scan_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, D: Optional[torch.Tensor] = None,
                      z: Optional[torch.Tensor] = None,
                      delta_bias: Optional[torch.Tensor] = None) -> None:
    """Raise ValueError naming the offending argument when the shapes break the contract."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got shape {tuple(u.shape)}")
    b, d, l = u.shape
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and tuple(t.shape) != (b, d, l):
            raise ValueError(f"selective_scan: {name} must have u's shape {(b, d, l)}, got {tuple(t.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (dim={d}, d_state), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok_3d = t.dim() == 3 and tuple(t.shape) == (b, n, l)
        ok_4d = t.dim() == 4 and (t.shape[0], t.shape[2], t.shape[3]) == (b, n, l) and d % t.shape[1] == 0
        if not (ok_3d or ok_4d):
            raise ValueError(f"selective_scan: {name} must be (b={b}, n={n}, l={l}) or (b, groups dividing "
                             f"dim={d}, n, l), got {tuple(t.shape)}")
    if B.dim() != C.dim() or (B.dim() == 4 and B.shape[1] != C.shape[1]):
        raise ValueError(f"selective_scan: B {tuple(B.shape)} and C {tuple(C.shape)} must have the same groups")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise ValueError(f"selective_scan: {name} must be (dim={d},), got {tuple(t.shape)}")


def _to_chunks(x: torch.Tensor, groups: int, length: int, n_chunks: int) -> torch.Tensor:
    """(b, d, l) -> contiguous (T, b, g, dg, nc), zero-padded at the end."""
    b, d, l = x.shape
    pad = n_chunks * length - l
    x = F.pad(x, (0, pad)).view(b, groups, d // groups, n_chunks, length)
    return x.permute(4, 0, 1, 2, 3).contiguous()


def _bc_to_chunks(x: torch.Tensor, length: int, n_chunks: int) -> torch.Tensor:
    """(b, g, n, l) -> contiguous (T, b, g, 1, nc, n), zero-padded at the end."""
    b, g, n, l = x.shape
    x = F.pad(x, (0, n_chunks * length - l)).view(b, g, n, n_chunks, length)
    return x.permute(4, 0, 1, 3, 2).contiguous().unsqueeze(3)


def _chunk_starts(decays: Sequence[torch.Tensor], injects: Sequence[torch.Tensor],
                  log_decay_total: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """State at the start of every chunk (b, g, dg, nc, n) and the final state (b, g, dg, n).

    decays, injects: T slices (b, g, dg, nc, n); log_decay_total: (b, g, dg, nc, n), the chunk's
    sum of delta*A (<= 0, so its exp is a safe whole-chunk decay)."""
    local_end = injects[0]
    for a, x in zip(decays[1:], injects[1:]):
        local_end = torch.addcmul(x, a, local_end)  # (b, g, dg, nc, n), zero start in every chunk
    chunk_decays = torch.exp(log_decay_total).unbind(-2)  # nc x (b, g, dg, n)
    h = torch.zeros_like(chunk_decays[0])
    starts = []
    for a, x in zip(chunk_decays, local_end.unbind(-2)):
        starts.append(h)
        h = torch.addcmul(x, a, h)
    return torch.stack(starts, dim=-2), h


def _scan_chunks(decays: Sequence[torch.Tensor], injects: Sequence[torch.Tensor],
                 Cs: Sequence[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """Run the recurrence inside all chunks at once from start states h; return y (b, g, dg, nc, T)."""
    ys = []
    for a, x, c in zip(decays, injects, Cs):
        h = torch.addcmul(x, a, h)
        ys.append((h * c).sum(-1))  # (b, g, dg, nc)
    return torch.stack(ys, dim=-1)


def selective_scan_torch(
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
    chunk_size: int = DEFAULT_CHUNK,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Chunked selective scan with mamba-ssm `selective_scan_fn` semantics (see the oracle).

    Computes in float32 (float64 when an input is float64) and returns y in u's dtype; the last
    state (b, d, n) is returned in the compute dtype.
    """
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    cdt = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C = (t.to(cdt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]  # (b, 1, n, l)
    b, d, l = u.shape
    g, n = B.shape[1], A.shape[1]
    T = max(1, min(chunk_size, l))
    nc = math.ceil(l / T)
    dt = _to_chunks(delta, g, T, nc)  # (T, b, g, dg, nc)
    log_decay = dt[..., None] * A.view(g, d // g, 1, n)  # (T, b, g, dg, nc, n), <= 0
    inject = (dt * _to_chunks(u, g, T, nc))[..., None] * _bc_to_chunks(B, T, nc)  # (T, b, g, dg, nc, n)
    # one unbind per tensor, shared by both loops: its backward stacks the summed slice gradients once
    decays = torch.exp(log_decay).unbind(0)  # T x (b, g, dg, nc, n), in (0, 1]
    injects = inject.unbind(0)
    starts, last = _chunk_starts(decays, injects, log_decay.sum(0))
    y = _scan_chunks(decays, injects, _bc_to_chunks(C, T, nc).unbind(0), starts)
    y = y.reshape(b, d, nc * T)[..., :l]  # (b, d, l)
    if D is not None:
        y = y + u * D.to(cdt)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(dtype_in)
    return (y, last.reshape(b, d, n)) if return_last_state else y
