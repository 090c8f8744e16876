"""Fused SS2D core in Triton: four-direction cross-scan + selective scan + merge.

`ss2d_scan_triton(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)` computes exactly
what `ssl_mamba.ops.ss2d_scan` computes (see reference-original.md section 1.4), without building
the (B, 4, D, L) cross-scan copies:

* The projections x -> (dt_raw, B, C) and dt_raw -> dt are position-wise, so they run as torch
  matmuls on the un-permuted (B, H, W, .) layout (they follow autocast like any matmul).
* One kernel program owns (batch b, direction k, a block of channels).  It walks direction k's
  order over the H*W positions by index arithmetic, one step at a time with the state
  h (BLOCK_D, N) in registers: h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t.  Steps come in
  statically unrolled groups of `unroll` so their loads can be issued ahead of the serial math.
  softplus(dt + bias) is computed inside; A, D and the dt bias stay fp32; inputs may be bf16 or
  fp32; all arithmetic is fp32.
* Each direction writes its own output row (B, H, W, 4, D) fp32 (no atomics); one torch sum
  merges them.
* Forward saves only the state every `chunk` steps (B, 4, L/chunk, D, N).  Backward walks the
  chunks in reverse: it recomputes the chunk's states into a small per-program scratch (L2-sized)
  and runs the adjoint g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} step by step.  dB/dC (sums
  over D) are fp32 atomic adds across the channel blocks; dA, dD, d(dt bias) are per-batch
  partials summed on the host; dx is per-direction and summed on the host.

The module imports on machines without a GPU; running on CPU tensors needs TRITON_INTERPRET=1 set
before triton is first imported (that is how the CPU tests exercise it).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from ssl_mamba.errors import UserError

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch's CUDA wheels and with our venv
    triton = None
    tl = None

K_DIRECTIONS = 4
# Default tiles: `chunk` steps between saved states (a multiple of `unroll`, the steps whose loads are
# issued together), `block_d` channels per program.  The benchmark may override them.
_CONFIG = {"chunk": 32, "unroll": 8, "block_d": 16, "fwd_warps": 2, "bwd_warps": 2}


def set_block_config(chunk: Optional[int] = None, unroll: Optional[int] = None, block_d: Optional[int] = None,
                     fwd_warps: Optional[int] = None, bwd_warps: Optional[int] = None) -> dict:
    """Change the kernels' tile sizes and warps (powers of two); returns the previous config."""
    old = dict(_CONFIG)
    new = dict(_CONFIG)
    for key, val in (("chunk", chunk), ("unroll", unroll), ("block_d", block_d), ("fwd_warps", fwd_warps),
                     ("bwd_warps", bwd_warps)):
        if val is not None:
            if val <= 0 or val & (val - 1):
                raise UserError(f"triton_ss2d: {key}={val} must be a positive power of two")
            new[key] = int(val)
    if new["chunk"] % new["unroll"]:
        raise UserError(f"triton_ss2d: chunk={new['chunk']} must be a multiple of unroll={new['unroll']}")
    _CONFIG.update(new)
    return old


if triton is not None:

    @triton.jit
    def _position(t, k, H, W, L):
        """Row-major position visited at step t of direction k (0 where t is out of range)."""
        s = tl.where(k >= 2, L - 1 - t, t)  # directions 2, 3 run backwards
        p = tl.where((k % 2) == 1, (s % H) * W + s // H, s)  # 1, 3 walk column-major: s = w * H + h
        return tl.where(t < L, p, 0)

    @triton.jit
    def _softplus(x):
        """softplus with torch's threshold 20, accurate log1p for small exp(x)."""
        e = tl.exp(tl.minimum(x, 20.0))
        u = 1.0 + e
        # log1p(e) = log(u) * e / (u - 1) (exact-rounding trick); e itself when u rounds to 1.
        lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
        return tl.where(x > 20.0, x, lp)

    @triton.jit
    def _load_step(x_ptr, dt_ptr, bc_ptr, b, k, t, H, W, L, D, R, offs_d, mask_d, offs_n, mask_n,
                   N: tl.constexpr):
        """Step t of direction k: u (BD,), pre-bias dt (BD,), B_t, C_t (BN,) as fp32, and offsets."""
        valid = t < L
        pos = b * L + _position(t, k, H, W, L)  # flat (batch, position) index
        md = mask_d & (offs_d * 0 + t < L)  # vector masks (a scalar bool mask trips the interpreter)
        mn = mask_n & (offs_n * 0 + t < L)
        u = tl.load(x_ptr + pos * D + offs_d, mask=md, other=0.0).to(tl.float32)
        dk_off = (pos * 4 + k) * D + offs_d  # (B, H, W, 4, D) layout of dts and the per-direction outputs
        dr = tl.load(dt_ptr + dk_off, mask=md, other=0.0).to(tl.float32)
        bc_off = pos * (4 * (R + 2 * N)) + k * (R + 2 * N) + R + offs_n
        Bt = tl.load(bc_ptr + bc_off, mask=mn, other=0.0).to(tl.float32)
        Ct = tl.load(bc_ptr + bc_off + N, mask=mn, other=0.0).to(tl.float32)
        return u, dr, Bt, Ct, dk_off, bc_off, md, mn, valid

    @triton.jit
    def _ss2d_fwd_kernel(x_ptr, dt_ptr, bc_ptr, a_ptr, ds_ptr, bias_ptr, yk_ptr, hs_ptr,
                         H, W, L, D, R, NCHUNK, REPS,
                         N: tl.constexpr, UNROLL: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr):
        pid_bk = tl.program_id(0)
        pid_d = tl.program_id(1)
        b = pid_bk // 4
        k = pid_bk % 4
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask_dn = mask_d[:, None] & mask_n[None, :]
        kd = k * D + offs_d
        A = tl.load(a_ptr + kd[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0)
        dskip = tl.load(ds_ptr + kd, mask=mask_d, other=0.0)
        bias = tl.load(bias_ptr + kd, mask=mask_d, other=0.0)
        hs_base = hs_ptr + (pid_bk * NCHUNK) * D * N + offs_d[:, None] * N + offs_n[None, :]
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        for c in range(NCHUNK):
            tl.store(hs_base + c * D * N, h, mask=mask_dn)  # state before the chunk's first step
            for s in range(REPS):
                t0 = (c * REPS + s) * UNROLL
                # Unrolled so the loads of all UNROLL steps can issue before the serial math.
                for j in tl.static_range(UNROLL):
                    u, dr, Bt, Ct, dk_off, bc_off, md, mn, valid = _load_step(
                        x_ptr, dt_ptr, bc_ptr, b, k, t0 + j, H, W, L, D, R, offs_d, mask_d, offs_n, mask_n, N)
                    delta = tl.where(valid, _softplus(dr + bias), 0.0)
                    h = tl.exp(delta[:, None] * A) * h + (delta * u)[:, None] * Bt[None, :]
                    y = tl.sum(h * Ct[None, :], axis=1) + dskip * u
                    tl.store(yk_ptr + dk_off, y, mask=md)

    @triton.jit
    def _ss2d_bwd_kernel(x_ptr, dt_ptr, bc_ptr, a_ptr, ds_ptr, bias_ptr, hs_ptr, gy_ptr, sc_ptr,
                         dxk_ptr, ddt_ptr, dbc_ptr, da_ptr, dds_ptr, dbias_ptr,
                         H, W, L, D, R, NCHUNK, REPS,
                         N: tl.constexpr, UNROLL: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr):
        pid_bk = tl.program_id(0)
        pid_d = tl.program_id(1)
        b = pid_bk // 4
        k = pid_bk % 4
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask_dn = mask_d[:, None] & mask_n[None, :]
        kd = k * D + offs_d
        A = tl.load(a_ptr + kd[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0)
        dskip = tl.load(ds_ptr + kd, mask=mask_d, other=0.0)
        bias = tl.load(bias_ptr + kd, mask=mask_d, other=0.0)
        hs_base = hs_ptr + (pid_bk * NCHUNK) * D * N + offs_d[:, None] * N + offs_n[None, :]
        # Per-program scratch (REPS * UNROLL, BLOCK_D, BLOCK_N) holding the chunk's states (L2-resident).
        tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]
        pid = pid_bk * tl.num_programs(1) + pid_d
        sc_base = sc_ptr + pid.to(tl.int64) * (REPS * UNROLL * BLOCK_D * BLOCK_N) + tile
        g_carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # exp(delta_{t+1} A) dLoss/dh_{t+1}
        dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for ci in range(NCHUNK):
            c = NCHUNK - 1 - ci
            h = tl.load(hs_base + c * D * N, mask=mask_dn, other=0.0)
            # Recompute the chunk's states; the scratch keeps the state before each step.
            for s in range(REPS):
                t0 = (c * REPS + s) * UNROLL
                for j in tl.static_range(UNROLL):
                    u, dr, Bt, Ct, dk_off, bc_off, md, mn, valid = _load_step(
                        x_ptr, dt_ptr, bc_ptr, b, k, t0 + j, H, W, L, D, R, offs_d, mask_d, offs_n, mask_n, N)
                    delta = tl.where(valid, _softplus(dr + bias), 0.0)
                    tl.store(sc_base + (s * UNROLL + j) * (BLOCK_D * BLOCK_N), h)
                    h = tl.exp(delta[:, None] * A) * h + (delta * u)[:, None] * Bt[None, :]
            tl.debug_barrier()
            # Adjoint, newest step first: g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}.
            for si in range(REPS):
                s = REPS - 1 - si
                t0 = (c * REPS + s) * UNROLL
                for jj in tl.static_range(UNROLL):
                    j = UNROLL - 1 - jj
                    u, dr, Bt, Ct, dk_off, bc_off, md, mn, valid = _load_step(
                        x_ptr, dt_ptr, bc_ptr, b, k, t0 + j, H, W, L, D, R, offs_d, mask_d, offs_n, mask_n, N)
                    pos = b * L + _position(t0 + j, k, H, W, L)
                    gy = tl.load(gy_ptr + pos * D + offs_d, mask=md, other=0.0).to(tl.float32)
                    hp = tl.load(sc_base + (s * UNROLL + j) * (BLOCK_D * BLOCK_N))
                    z = dr + bias
                    delta = tl.where(valid, _softplus(z), 0.0)
                    a = tl.exp(delta[:, None] * A)
                    ah = a * hp  # exp(delta_t A) h_{t-1}
                    du_ = delta * u
                    ht = ah + du_[:, None] * Bt[None, :]
                    g = gy[:, None] * Ct[None, :] + g_carry
                    gB = tl.sum(g * Bt[None, :], axis=1)
                    gah = g * ah
                    ddr = tl.where(md, (gB * u + tl.sum(gah * A, axis=1)) * tl.sigmoid(z), 0.0)
                    tl.store(ddt_ptr + dk_off, ddr, mask=md)
                    tl.store(dxk_ptr + dk_off, gB * delta + dskip * gy, mask=md)
                    # dB_t, dC_t: this block's share of the sum over D (the D blocks add up here).
                    tl.atomic_add(dbc_ptr + bc_off, tl.sum(g * du_[:, None], axis=0), mask=mn)
                    tl.atomic_add(dbc_ptr + bc_off + N, tl.sum(ht * gy[:, None], axis=0), mask=mn)
                    dA_acc += gah * delta[:, None]
                    dD_acc += gy * u
                    dbias_acc += ddr
                    g_carry = a * g
            tl.debug_barrier()
        # Per-(batch, channel) partials; the host sums them over the batch (no atomics).
        pb = b * (4 * D) + kd
        tl.store(da_ptr + pb[:, None] * N + offs_n[None, :], dA_acc, mask=mask_dn)
        tl.store(dds_ptr + pb, dD_acc, mask=mask_d)
        tl.store(dbias_ptr + pb, dbias_acc, mask=mask_d)


def _check_runnable(x: torch.Tensor) -> None:
    """Raise a clear error where the kernels cannot run for this tensor."""
    if triton is None:
        raise UserError("scan backend 'triton' needs the triton package, which is not installed")
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError(f"scan backend 'triton' needs a CUDA tensor (got device {x.device}); "
                        "set TRITON_INTERPRET=1 before importing triton to run it on the CPU")


def _launch_params(b: int, d: int, n: int, length: int) -> Tuple[tuple, dict, int, int]:
    """Launch grid (B*4, channel blocks), constexpr tiles, number of chunks, chunk repeats of `unroll`."""
    chunk, unroll, block_d = _CONFIG["chunk"], _CONFIG["unroll"], _CONFIG["block_d"]
    tiles = dict(N=n, UNROLL=unroll, BLOCK_D=block_d, BLOCK_N=max(triton.next_power_of_2(n), 2))
    return (b * K_DIRECTIONS, triton.cdiv(d, block_d)), tiles, triton.cdiv(length, chunk), chunk // unroll


class _SS2DScanFn(torch.autograd.Function):
    """Cross-scan + selective scan + merge over prepared per-position inputs.

    x: (B, H, W, D); dts: (B, H, W, 4, D) pre-bias dt; x_dbl: (B, H, W, 4, R + 2N) whose last
    2N columns are B and C; A: (4D, N) fp32 (already -exp(A_logs)); ds, bias: (4D,) fp32.
    """

    @staticmethod
    def forward(ctx, x, dts, x_dbl, A, ds, bias):  # noqa: D401 - autograd signature
        b, h, w, d = x.shape
        n = A.shape[1]
        r = x_dbl.shape[-1] - 2 * n
        length = h * w
        grid, tiles, nchunk, reps = _launch_params(b, d, n, length)
        yk = torch.empty(dts.shape, device=x.device, dtype=torch.float32)  # (B, H, W, 4, D) per direction
        hs = torch.empty(b, K_DIRECTIONS, nchunk, d, n, device=x.device, dtype=torch.float32)
        _ss2d_fwd_kernel[grid](x, dts, x_dbl, A, ds, bias, yk, hs, h, w, length, d, r, nchunk, reps,
                               num_warps=_CONFIG["fwd_warps"], **tiles)
        ctx.save_for_backward(x, dts, x_dbl, A, ds, bias, hs)
        return yk.sum(3).to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, dts, x_dbl, A, ds, bias, hs = ctx.saved_tensors
        b, h, w, d = x.shape
        n = A.shape[1]
        r = x_dbl.shape[-1] - 2 * n
        length = h * w
        grid, tiles, nchunk, reps = _launch_params(b, d, n, length)
        gy = gy.contiguous()
        f32 = dict(device=x.device, dtype=torch.float32)
        n_prog = grid[0] * grid[1]
        scratch = torch.empty(n_prog * reps * tiles["UNROLL"] * tiles["BLOCK_D"] * tiles["BLOCK_N"], **f32)
        dxk = torch.empty(dts.shape, **f32)  # (B, H, W, 4, D) per-direction dx
        ddt = torch.empty_like(dts)
        dbc = torch.zeros(x_dbl.shape, **f32)
        dA = torch.empty((b,) + tuple(A.shape), **f32)  # per-batch partials
        dds = torch.empty(b, ds.shape[0], **f32)
        dbias = torch.empty(b, bias.shape[0], **f32)
        _ss2d_bwd_kernel[grid](x, dts, x_dbl, A, ds, bias, hs, gy, scratch, dxk, ddt, dbc, dA, dds, dbias,
                               h, w, length, d, r, nchunk, reps,
                               num_warps=_CONFIG["bwd_warps"], **tiles)
        return (dxk.sum(3).to(x.dtype), ddt, dbc.to(x_dbl.dtype), dA.sum(0), dds.sum(0), dbias.sum(0))


def _check_shapes(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                  dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor) -> None:
    """Raise UserError naming the first argument whose shape disagrees with SS2D's contract."""
    if x.dim() != 4:
        raise UserError(f"ss2d_scan_triton: x must be (B, H, W, D), got shape {tuple(x.shape)}")
    d = x.shape[3]
    n = A_logs.shape[-1]
    r = dt_projs_weight.shape[-1]
    want = {
        "x_proj_weight": (x_proj_weight, (K_DIRECTIONS, r + 2 * n, d)),
        "dt_projs_weight": (dt_projs_weight, (K_DIRECTIONS, d, r)),
        "dt_projs_bias": (dt_projs_bias, (K_DIRECTIONS, d)),
        "A_logs": (A_logs, (K_DIRECTIONS * d, n)),
        "Ds": (Ds, (K_DIRECTIONS * d,)),
    }
    for name, (tensor, shape) in want.items():
        if tuple(tensor.shape) != shape:
            raise UserError(f"ss2d_scan_triton: {name} has shape {tuple(tensor.shape)}, "
                            f"expected {shape} for x of shape {tuple(x.shape)}")


def ss2d_scan_triton(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                     dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor) -> torch.Tensor:
    """SS2D core (cross-scan, projections, selective scan, merge) with the fused Triton kernel.

    x: (B, H, W, D) channel-last (after the depthwise conv + SiLU), fp32 or bf16.
    Returns y: (B, H, W, D) in x's dtype, the plain sum of the four directions (before out_norm).
    Same semantics as `ssl_mamba.ops.ss2d_scan(..., backend="torch")`.
    """
    _check_runnable(x)
    _check_shapes(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    r = dt_projs_weight.shape[-1]
    x = x.contiguous()
    x_dbl = torch.einsum("bhwd,kcd->bhwkc", x, x_proj_weight).contiguous()  # (B, H, W, 4, R+2N)
    dts = torch.einsum("bhwkr,kdr->bhwkd", x_dbl[..., :r], dt_projs_weight).contiguous()  # (B, H, W, 4, D)
    A = -torch.exp(A_logs.float())
    return _SS2DScanFn.apply(x, dts, x_dbl, A, Ds.float(), dt_projs_bias.float().reshape(-1))
