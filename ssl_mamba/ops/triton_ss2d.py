"""Fused SS2D core in Triton: four-direction cross-scan + selective scan + merge.

`ss2d_scan_triton(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)` computes exactly
what `ssl_mamba.ops.ss2d_scan` computes (see reference-original.md section 1.4), without building
the (B, 4, D, L) cross-scan copies:

* The projections x -> (dt_raw, B, C) and dt_raw -> dt are position-wise, so they run as torch
  matmuls on the un-permuted (B, H, W, .) layout (they follow autocast like any matmul).
* One kernel program owns (batch b, direction k, a block of channels).  It walks direction k's
  order over the H*W positions by index arithmetic, in chunks of BLOCK_T steps: each chunk's
  recurrence h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t is an associative scan over the chunk
  (registers), carried across chunks.  softplus(dt + bias) is computed inside; A, D and the dt
  bias stay fp32; inputs may be bf16 or fp32; all arithmetic is fp32.
* The four directions are summed into the output with fp32 atomic adds, so the merged y is the
  only output written (cast to x's dtype at the end).
* Backward: dB/dC (sums over the channels) are written as one partial per channel block and
  summed by torch (no atomics on them); dx is summed over the directions with fp32 atomics.
* Forward saves only the state at each chunk start (B, 4, n_chunks, D, N).  Backward walks the
  chunks in reverse, recomputes the chunk's states from its checkpoint and runs the adjoint
  recurrence g_t = exp(delta_{t+1} A) g_{t+1} + C_t dy_t as a reverse associative scan.

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
# Default tile sizes; the benchmark may override them through `set_block_config`.
# block_d / bwd_block_d: channel tile of the forward / backward kernel (they may differ: the
# checkpoints are indexed by channel).  prefetch: issue the next chunk's loads before the current
# chunk's math.  atomic_bc: add dB/dC over the channel blocks with fp32 atomics (else each block
# writes its own partial and torch sums them).
# Defaults: the fastest fwd+bwd of the H200 sweep of 2026-11-27 (benchmarks/NOTES-gpu.md, v3).
_CONFIG = {"block_t": 16, "block_d": 16, "bwd_block_d": 16, "fwd_warps": 4, "bwd_warps": 4,
           "prefetch": 0, "atomic_bc": 0}


def set_block_config(block_t: Optional[int] = None, block_d: Optional[int] = None,
                     fwd_warps: Optional[int] = None, bwd_warps: Optional[int] = None,
                     bwd_block_d: Optional[int] = None, prefetch: Optional[bool] = None,
                     atomic_bc: Optional[bool] = None) -> dict:
    """Change the kernels' tile sizes (powers of two), warps and variants; returns the previous config."""
    old = dict(_CONFIG)
    for key, val in (("block_t", block_t), ("block_d", block_d), ("fwd_warps", fwd_warps),
                     ("bwd_warps", bwd_warps), ("bwd_block_d", bwd_block_d)):
        if val is not None:
            if val <= 0 or val & (val - 1):
                raise UserError(f"triton_ss2d: {key}={val} must be a positive power of two")
            _CONFIG[key] = int(val)
    for key, flag in (("prefetch", prefetch), ("atomic_bc", atomic_bc)):
        if flag is not None:
            _CONFIG[key] = int(bool(flag))
    return old


if triton is not None:

    @triton.jit
    def _lin_combine(a1, b1, a2, b2):
        """Compose two affine maps h -> a h + b, first (a1, b1) then (a2, b2)."""
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _positions(t, k, H, W, L):
        """Row-major position index visited at step t of direction k (0 where t is out of range)."""
        s = tl.where(k >= 2, L - 1 - t, t)  # directions 2, 3 run backwards
        col = (k % 2) == 1  # directions 1, 3 walk column-major: s = w * H + h
        p = tl.where(col, (s % H) * W + s // H, s)
        return tl.where((t >= 0) & (t < L), p, 0)

    @triton.jit
    def _softplus(x):
        """softplus with torch's threshold 20, accurate log1p for small exp(x)."""
        e = tl.exp(tl.minimum(x, 20.0))
        u = 1.0 + e
        # log1p(e) = log(u) * e / (u - 1) (exact-rounding trick); e itself when u rounds to 1.
        lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
        return tl.where(x > 20.0, x, lp)

    @triton.jit
    def _chunk_index(b, k, c, H, W, L, BLOCK_T: tl.constexpr):
        """Flat (batch, position) index of chunk c's steps in direction k, and their validity."""
        t = c * BLOCK_T + tl.arange(0, BLOCK_T)
        return b * L + _positions(t, k, H, W, L), t < L

    @triton.jit
    def _load_chunk(x_ptr, dt_ptr, bc_ptr, b, k, c, H, W, L, D, R, offs_d, mask_d, offs_n, mask_n,
                    N: tl.constexpr, BLOCK_T: tl.constexpr):
        """Chunk c's inputs as fp32 tiles: u, dt_raw (T, BD) and B, C (T, BN); zero past the end."""
        pos, mask_t = _chunk_index(b, k, c, H, W, L, BLOCK_T)
        m_td = mask_t[:, None] & mask_d[None, :]
        m_tn = mask_t[:, None] & mask_n[None, :]
        u = tl.load(x_ptr + pos[:, None] * D + offs_d[None, :], mask=m_td, other=0.0).to(tl.float32)
        dr = tl.load(dt_ptr + (pos * 4 + k)[:, None] * D + offs_d[None, :], mask=m_td,
                     other=0.0).to(tl.float32)
        bc_off = pos[:, None] * (4 * (R + 2 * N)) + k * (R + 2 * N) + R + offs_n[None, :]
        Bt = tl.load(bc_ptr + bc_off, mask=m_tn, other=0.0).to(tl.float32)
        Ct = tl.load(bc_ptr + bc_off + N, mask=m_tn, other=0.0).to(tl.float32)
        return u, dr, Bt, Ct

    @triton.jit
    def _load_next_dt(dt_ptr, b, k, c, H, W, L, D, offs_d, mask_d, BLOCK_T: tl.constexpr):
        """dt_raw of the step after each of chunk c's steps (T, BD), zero past the end."""
        t1 = c * BLOCK_T + tl.arange(0, BLOCK_T) + 1
        m1 = t1 < L
        pos1 = b * L + _positions(t1, k, H, W, L)
        return tl.load(dt_ptr + (pos1 * 4 + k)[:, None] * D + offs_d[None, :],
                       mask=m1[:, None] & mask_d[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _program_setup(a_ptr, ds_ptr, bias_ptr, hs_ptr, D, NCHUNK, N: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_N: tl.constexpr):
        """What both kernels derive from the program id: batch b, direction k, flat channel kd, the channel/state
        offsets and masks, this block's fp32 A / D / dt-bias, and its chunk-state checkpoints."""
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
        return b, k, kd, offs_d, mask_d, offs_n, mask_n, mask_dn, A, dskip, bias, hs_base

    @triton.jit
    def _ss2d_fwd_kernel(x_ptr, dt_ptr, bc_ptr, a_ptr, ds_ptr, bias_ptr, y_ptr, hs_ptr,
                         H, W, L, D, R, NCHUNK,
                         N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr):
        b, k, kd, offs_d, mask_d, offs_n, mask_n, mask_dn, A, dskip, bias, hs_base = _program_setup(
            a_ptr, ds_ptr, bias_ptr, hs_ptr, D, NCHUNK, N, BLOCK_D, BLOCK_N)
        rows = tl.arange(0, BLOCK_T)
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        u_n, dr_n, b_n, c_n = _load_chunk(x_ptr, dt_ptr, bc_ptr, b, k, 0, H, W, L, D, R, offs_d,
                                          mask_d, offs_n, mask_n, N, BLOCK_T)
        for c in range(NCHUNK):
            if PREFETCH:  # this chunk's tiles were loaded last iteration; start the next chunk's loads
                u, dr, Bt, Ct = u_n, dr_n, b_n, c_n
                u_n, dr_n, b_n, c_n = _load_chunk(x_ptr, dt_ptr, bc_ptr, b, k, c + 1, H, W, L, D, R,
                                                  offs_d, mask_d, offs_n, mask_n, N, BLOCK_T)
            else:
                u, dr, Bt, Ct = _load_chunk(x_ptr, dt_ptr, bc_ptr, b, k, c, H, W, L, D, R, offs_d,
                                            mask_d, offs_n, mask_n, N, BLOCK_T)
            tl.store(hs_base + c * D * N, h, mask=mask_dn)
            pos, mask_t = _chunk_index(b, k, c, H, W, L, BLOCK_T)
            delta = _softplus(dr + bias[None, :])  # (T, BD)
            m3 = mask_t[:, None, None]
            a = tl.where(m3, tl.exp(delta[:, :, None] * A[None, :, :]), 1.0)  # (T, BD, BN)
            bx = tl.where(m3, (delta * u)[:, :, None] * Bt[:, None, :], 0.0)
            acum, hloc = tl.associative_scan((a, bx), 0, _lin_combine)
            hh = hloc + acum * h[None, :, :]
            y = tl.sum(hh * Ct[:, None, :], axis=2) + dskip[None, :] * u
            tl.atomic_add(y_ptr + pos[:, None] * D + offs_d[None, :], y,
                          mask=mask_t[:, None] & mask_d[None, :])
            h = tl.sum(tl.where(rows[:, None, None] == BLOCK_T - 1, hh, 0.0), axis=0)

    @triton.jit
    def _ss2d_bwd_kernel(x_ptr, dt_ptr, bc_ptr, a_ptr, ds_ptr, bias_ptr, hs_ptr, gy_ptr,
                         dx_ptr, ddt_ptr, dbc_ptr, da_ptr, dds_ptr, dbias_ptr,
                         H, W, L, D, R, NCHUNK, NPOS,
                         N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr, ATOMIC_BC: tl.constexpr):
        b, k, kd, offs_d, mask_d, offs_n, mask_n, mask_dn, A, dskip, bias, hs_base = _program_setup(
            a_ptr, ds_ptr, bias_ptr, hs_ptr, D, NCHUNK, N, BLOCK_D, BLOCK_N)
        pid_d = tl.program_id(1)  # the channel block, for this block's dB/dC partials
        io_d = offs_d[None, :]
        rows = tl.arange(0, BLOCK_T)
        g_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # adjoint at the next chunk's first step
        dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        c0 = NCHUNK - 1
        pos0, mt0 = _chunk_index(b, k, c0, H, W, L, BLOCK_T)
        u_n, dr_n, b_n, c_n = _load_chunk(x_ptr, dt_ptr, bc_ptr, b, k, c0, H, W, L, D, R, offs_d,
                                          mask_d, offs_n, mask_n, N, BLOCK_T)
        gy_n = tl.load(gy_ptr + pos0[:, None] * D + io_d, mask=mt0[:, None] & mask_d[None, :], other=0.0)
        dr1_n = _load_next_dt(dt_ptr, b, k, c0, H, W, L, D, offs_d, mask_d, BLOCK_T)
        h0_n = tl.load(hs_base + c0 * D * N, mask=mask_dn, other=0.0)
        for ci in range(NCHUNK):
            c = NCHUNK - 1 - ci
            pos, mask_t = _chunk_index(b, k, c, H, W, L, BLOCK_T)
            m_td = mask_t[:, None] & mask_d[None, :]
            if PREFETCH:  # use the tiles loaded last iteration; start loading the previous chunk's
                u, dr, Bt, Ct, gy, dr1, h0 = u_n, dr_n, b_n, c_n, gy_n, dr1_n, h0_n
                cp = tl.maximum(c - 1, 0)
                pos_p, mt_p = _chunk_index(b, k, cp, H, W, L, BLOCK_T)
                u_n, dr_n, b_n, c_n = _load_chunk(x_ptr, dt_ptr, bc_ptr, b, k, cp, H, W, L, D, R,
                                                  offs_d, mask_d, offs_n, mask_n, N, BLOCK_T)
                gy_n = tl.load(gy_ptr + pos_p[:, None] * D + io_d, mask=mt_p[:, None] & mask_d[None, :],
                               other=0.0)
                dr1_n = _load_next_dt(dt_ptr, b, k, cp, H, W, L, D, offs_d, mask_d, BLOCK_T)
                h0_n = tl.load(hs_base + cp * D * N, mask=mask_dn, other=0.0)
            else:
                u, dr, Bt, Ct = _load_chunk(x_ptr, dt_ptr, bc_ptr, b, k, c, H, W, L, D, R, offs_d,
                                            mask_d, offs_n, mask_n, N, BLOCK_T)
                gy = tl.load(gy_ptr + pos[:, None] * D + io_d, mask=m_td, other=0.0)
                dr1 = _load_next_dt(dt_ptr, b, k, c, H, W, L, D, offs_d, mask_d, BLOCK_T)
                h0 = tl.load(hs_base + c * D * N, mask=mask_dn, other=0.0)
            gy = gy.to(tl.float32)
            dr = dr + bias[None, :]
            # Recompute this chunk's states from its checkpoint.
            delta = _softplus(dr)
            m3 = mask_t[:, None, None]
            a = tl.where(m3, tl.exp(delta[:, :, None] * A[None, :, :]), 1.0)
            du_ = delta * u
            bx = tl.where(m3, du_[:, :, None] * Bt[:, None, :], 0.0)
            acum, hloc = tl.associative_scan((a, bx), 0, _lin_combine)
            hh = hloc + acum * h0[None, :, :]
            # Decay of the following step, exp(delta_{t+1} A) (0 past the end of the sequence).
            m1 = (c * BLOCK_T + rows + 1) < L
            delta1 = _softplus(dr1 + bias[None, :])
            a1 = tl.where(m1[:, None, None], tl.exp(delta1[:, :, None] * A[None, :, :]), 0.0)
            beta = tl.where(m3, gy[:, :, None] * Ct[:, None, :], 0.0)
            arev, gloc = tl.associative_scan((a1, beta), 0, _lin_combine, reverse=True)
            g = gloc + arev * g_next[None, :, :]  # dLoss/dh_t, (T, BD, BN)
            g_next = tl.sum(tl.where(rows[:, None, None] == 0, g, 0.0), axis=0)
            ah_prev = hh - bx  # exp(delta_t A) h_{t-1}
            dB = tl.sum(g * du_[:, :, None], axis=1)  # (T, BN), this block's share of the sum over D
            dC = tl.sum(hh * gy[:, :, None], axis=1)
            gB = tl.sum(g * Bt[:, None, :], axis=2)  # (T, BD)
            ddelta = gB * u + tl.sum(g * ah_prev * A[None, :, :], axis=2)
            ddr = ddelta * tl.sigmoid(dr)
            dxv = gB * delta + dskip[None, :] * gy
            tl.atomic_add(dx_ptr + pos[:, None] * D + io_d, dxv, mask=m_td)
            tl.store(ddt_ptr + (pos * 4 + k)[:, None] * D + io_d, ddr, mask=m_td)
            m_tn = mask_t[:, None] & mask_n[None, :]
            if ATOMIC_BC:
                bc_off = pos[:, None] * (4 * (R + 2 * N)) + k * (R + 2 * N) + R + offs_n[None, :]
                tl.atomic_add(dbc_ptr + bc_off, dB, mask=m_tn)
                tl.atomic_add(dbc_ptr + bc_off + N, dC, mask=m_tn)
            else:  # this channel block's partial, layout (n_dblocks, B*L, 4, 2N)
                part_off = ((pid_d * NPOS + pos) * 4 + k)[:, None] * (2 * N) + offs_n[None, :]
                tl.store(dbc_ptr + part_off, dB, mask=m_tn)
                tl.store(dbc_ptr + part_off + N, dC, mask=m_tn)
            dA_acc += tl.sum(g * ah_prev * delta[:, :, None], axis=0)
            dD_acc += tl.sum(gy * u, axis=0)
            dbias_acc += tl.sum(tl.where(m_td, ddr, 0.0), axis=0)
        tl.atomic_add(da_ptr + kd[:, None] * N + offs_n[None, :], dA_acc, mask=mask_dn)
        tl.atomic_add(dds_ptr + kd, dD_acc, mask=mask_d)
        tl.atomic_add(dbias_ptr + kd, dbias_acc, mask=mask_d)


def _check_runnable(x: torch.Tensor) -> None:
    """Raise a clear error where the kernels cannot run for this tensor."""
    if triton is None:
        raise UserError("scan backend 'triton' needs the triton package, which is not installed")
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError(f"scan backend 'triton' needs a CUDA tensor (got device {x.device}); "
                        "set TRITON_INTERPRET=1 before importing triton to run it on the CPU")


def _grid_and_blocks(b: int, d: int, n: int, length: int,
                     block_d: int) -> Tuple[tuple, int, int, int, int]:
    """Launch grid (B*4, channel blocks of block_d), the tile sizes and the number of time chunks."""
    block_t = _CONFIG["block_t"]
    block_n = max(triton.next_power_of_2(n), 2)
    nchunk = triton.cdiv(length, block_t)
    return (b * K_DIRECTIONS, triton.cdiv(d, block_d)), block_t, block_d, block_n, nchunk


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
        grid, bt, bd, bn, nchunk = _grid_and_blocks(b, d, n, length, _CONFIG["block_d"])
        y = torch.zeros(b, h, w, d, device=x.device, dtype=torch.float32)
        hs = torch.empty(b, K_DIRECTIONS, nchunk, d, n, device=x.device, dtype=torch.float32)
        _ss2d_fwd_kernel[grid](x, dts, x_dbl, A, ds, bias, y, hs, h, w, length, d, r, nchunk,
                               N=n, BLOCK_T=bt, BLOCK_D=bd, BLOCK_N=bn,
                               PREFETCH=bool(_CONFIG["prefetch"]), num_warps=_CONFIG["fwd_warps"])
        ctx.save_for_backward(x, dts, x_dbl, A, ds, bias, hs)
        ctx.block_t = bt
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, dts, x_dbl, A, ds, bias, hs = ctx.saved_tensors
        b, h, w, d = x.shape
        n = A.shape[1]
        r = x_dbl.shape[-1] - 2 * n
        length = h * w
        if ctx.block_t != _CONFIG["block_t"]:
            raise UserError(f"triton_ss2d: block_t changed from {ctx.block_t} to {_CONFIG['block_t']} "
                            "between forward and backward")
        grid, bt, bd, bn, nchunk = _grid_and_blocks(b, d, n, length, _CONFIG["bwd_block_d"])
        gy = gy.contiguous()
        f32 = dict(device=x.device, dtype=torch.float32)
        dx = torch.zeros(x.shape, **f32)
        ddt = torch.empty_like(dts)
        atomic_bc = bool(_CONFIG["atomic_bc"])
        if atomic_bc:
            dbc = torch.zeros(x_dbl.shape, **f32)
        else:  # per-channel-block partials of dB/dC: (n_dblocks, B*L, 4, 2N), every element written once
            dbc = torch.empty(grid[1], b * length, K_DIRECTIONS, 2 * n, **f32)
        dA = torch.zeros(A.shape, **f32)
        dds = torch.zeros(ds.shape, **f32)
        dbias = torch.zeros(bias.shape, **f32)
        _ss2d_bwd_kernel[grid](x, dts, x_dbl, A, ds, bias, hs, gy, dx, ddt, dbc, dA, dds, dbias,
                               h, w, length, d, r, nchunk, b * length,
                               N=n, BLOCK_T=bt, BLOCK_D=bd, BLOCK_N=bn,
                               PREFETCH=bool(_CONFIG["prefetch"]), ATOMIC_BC=atomic_bc,
                               num_warps=_CONFIG["bwd_warps"])
        if not atomic_bc:
            dbc_sum = dbc.sum(0).view(b, h, w, K_DIRECTIONS, 2 * n)  # sum over channel blocks
            dbc = torch.cat([torch.zeros(b, h, w, K_DIRECTIONS, r, **f32), dbc_sum], dim=-1)
        return dx.to(x.dtype), ddt, dbc.to(x_dbl.dtype), dA, dds, dbias


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
