"""Selective-scan and SS2D operators.  (Minimal reference; the ops owner replaces the internals.)

Public API (stable):
    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto")       # mamba-ssm selective_scan_fn semantics
    cross_scan(x)            x: (B, D, H, W) -> (B, 4, D, H*W)
    cross_merge(ys, H, W)    ys: (B, 4, D, H*W) -> (B, D, H*W), row-major, plain sum
    ss2d_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, backend="auto")
                             x: (B, H, W, D) channel-last (after depthwise conv + SiLU) -> y: (B, H, W, D)
    available_backends() -> list of names usable on this machine
"""
import torch
import torch.nn.functional as F


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    b, d, h, w = x.shape
    row = x.reshape(b, d, h * w)
    col = x.transpose(2, 3).reshape(b, d, h * w)
    xs = torch.stack([row, col], dim=1)  # (B, 2, D, L)
    return torch.cat([xs, xs.flip(-1)], dim=1)  # (B, 4, D, L)


def cross_merge(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, k, d, l = ys.shape
    fwd = ys[:, 0:2] + ys[:, 2:4].flip(-1)  # (B, 2, D, L)
    col = fwd[:, 1].reshape(b, d, w, h).transpose(2, 3).reshape(b, d, l)
    return fwd[:, 0] + col


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto"):
    dtype_in = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    bsz, dim, length = u.shape
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    groups = B.shape[1]
    Bx = B.repeat_interleave(dim // groups, dim=1)  # (b, d, n, l)
    Cx = C.repeat_interleave(dim // groups, dim=1)
    dA = torch.exp(delta[:, :, None, :] * A[None, :, :, None])  # (b, d, n, l)
    dBu = delta[:, :, None, :] * Bx * u[:, :, None, :]
    h = u.new_zeros(bsz, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = dA[..., t] * h + dBu[..., t]
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D[:, None].float()
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


def ss2d_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, backend="auto"):
    b, h, w, d = x.shape
    k = x_proj_weight.shape[0]
    n = A_logs.shape[1]
    r = dt_projs_weight.shape[2]
    xs = cross_scan(x.permute(0, 3, 1, 2))  # (B, 4, D, L)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dt_projs_weight)
    ys = selective_scan(
        xs.reshape(b, -1, h * w), dts.reshape(b, -1, h * w), -torch.exp(A_logs.float()), Bs, Cs,
        Ds.float(), delta_bias=dt_projs_bias.reshape(-1).float(), delta_softplus=True,
    ).view(b, k, d, h * w)
    return cross_merge(ys, h, w).view(b, d, h, w).permute(0, 2, 3, 1)


def available_backends():
    return ["torch"]
