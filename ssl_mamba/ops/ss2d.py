"""SS2D core: cross-scan, per-direction projections, one selective scan, merge (§1.4 steps 3-6)."""
import torch

from ssl_mamba.ops.cross_scan import cross_merge, cross_scan
from ssl_mamba.ops.dispatch import resolve_backend, selective_scan


def _check_ss2d_shapes(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                       dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor) -> None:
    """Raise ValueError naming the first parameter whose shape breaks SS2D's layout."""
    if x.dim() != 4:
        raise ValueError(f"ss2d_scan: x must be (B, H, W, D), got shape {tuple(x.shape)}")
    d = x.shape[3]
    k, n, r = x_proj_weight.shape[0], A_logs.shape[-1], dt_projs_weight.shape[-1]
    expected = {
        "x_proj_weight": (x_proj_weight, (4, r + 2 * n, d)),
        "dt_projs_weight": (dt_projs_weight, (4, d, r)),
        "dt_projs_bias": (dt_projs_bias, (4, d)),
        "A_logs": (A_logs, (4 * d, n)),
        "Ds": (Ds, (4 * d,)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"ss2d_scan: {name} has shape {tuple(tensor.shape)}, expected {shape} "
                             f"for x of shape {tuple(x.shape)} (K={k}, N={n}, R={r})")


def _at_least_f32(t: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16/float32 parameters (the scan's A, D and dt bias stay fp32, as in
    the original), float64 kept so the ops can be checked in double precision."""
    return t if t.dtype == torch.float64 else t.float()


def ss2d_scan(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
              dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor,
              backend: str = "auto") -> torch.Tensor:
    """SS2D's core on x (B, H, W, D) channel-last (after the depthwise conv + SiLU).

    Parameters: x_proj_weight (4, R+2N, D), dt_projs_weight (4, D, R), dt_projs_bias (4, D),
    A_logs (4D, N), Ds (4D).  Returns y (B, H, W, D) in x's dtype: the plain sum of the four
    directions, before out_norm.  `backend` 'triton' runs the fused kernel; the others run
    cross_scan -> projections -> selective_scan(backend) -> cross_merge.

    Under torch.compile the 'triton' path is traced (its kernels are custom ops, opaque nodes in
    the graph); the others break the graph here (see `_ss2d_scan_unfused`).
    """
    _check_ss2d_shapes(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    name = _backend_for(backend, x.device.type)
    if name == "triton":
        # a plain import (resolve_backend has imported the module), which dynamo follows, unlike
        # dispatch.triton_op's cached import
        from ssl_mamba.ops.triton_ss2d import ss2d_scan_triton
        return ss2d_scan_triton(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    return _ss2d_scan_unfused(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, name)


# Resolved once per compiled graph rather than traced: the choice imports modules, checks the
# environment and logs, none of which dynamo follows, and for one (backend, device type) it is
# the same on every call.
@torch.compiler.assume_constant_result
def _backend_for(backend: str, device_type: str) -> str:
    return resolve_backend(backend, device_type, op="ss2d")


# Never traced by torch.compile (train.compile): mamba_ssm's kernel is an external extension
# dynamo cannot follow, so each caller's graph breaks here instead (the torch reference takes the
# same path: tracing would unroll its 64-step Python loops into very large graphs).
@torch.compiler.disable
def _ss2d_scan_unfused(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                       dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor,
                       name: str) -> torch.Tensor:
    """ss2d_scan on the unfused backends: cross_scan -> projections -> selective_scan -> cross_merge."""
    b, h, w, d = x.shape
    k, n, r = x_proj_weight.shape[0], A_logs.shape[1], dt_projs_weight.shape[2]
    xs = cross_scan(x.permute(0, 3, 1, 2))  # (B, 4, D, L)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, x_proj_weight)  # (B, 4, R+2N, L)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)  # (B, 4, R, L), (B, 4, N, L) x2
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dt_projs_weight)  # (B, 4, D, L)
    ys = selective_scan(
        xs.reshape(b, k * d, h * w), dts.reshape(b, k * d, h * w), -torch.exp(_at_least_f32(A_logs)),
        Bs, Cs, _at_least_f32(Ds), delta_bias=_at_least_f32(dt_projs_bias).reshape(-1), delta_softplus=True,
        backend=name,
    ).view(b, k, d, h * w)  # (B, 4, D, L)
    return cross_merge(ys, h, w).view(b, d, h, w).permute(0, 2, 3, 1)  # (B, H, W, D)
