"""Selective-scan and SS2D operators (contract in docs/DESIGN.md, "ops").

Public API:
    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto")       # mamba-ssm selective_scan_fn semantics
    cross_scan(x)            x: (B, D, H, W) -> (B, 4, D, H*W)
    cross_merge(ys, H, W)    ys: (B, 4, D, H*W) -> (B, D, H*W), row-major, plain sum
    ss2d_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, backend="auto")
                             x: (B, H, W, D) channel-last (after depthwise conv + SiLU) -> y: (B, H, W, D)
    available_backends() -> list of backend names usable on this machine
    resolve_backend(name, device) -> the concrete backend `name` ("auto" included) runs on
    set_low_memory_scan(enabled)  the triton SS2D backward's memory-for-speed trade (train.low_memory_scan)

Backends: "torch" (chunked pure PyTorch, `selective_scan_ref`), "mamba_ssm" (optional CUDA kernel),
"triton" (fused SS2D in `triton_ss2d`).  Optional backends are imported only when requested.
"""
from ssl_mamba.ops.cross_scan import cross_merge, cross_scan
from ssl_mamba.ops.dispatch import (KNOWN_BACKENDS, available_backends, resolve_backend, selective_scan,
                                   set_low_memory_scan)
from ssl_mamba.ops.ss2d import ss2d_scan

__all__ = ["selective_scan", "cross_scan", "cross_merge", "ss2d_scan", "available_backends",
           "resolve_backend", "KNOWN_BACKENDS", "set_low_memory_scan"]
