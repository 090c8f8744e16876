"""Fused SS2D core in Triton: four-direction cross-scan + selective scan + merge.

`ss2d_scan_triton(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)` computes exactly
what `ssl_mamba.ops.ss2d_scan` computes (see reference-original.md section 1.4), without building
the (B, 4, D, L) cross-scan copies:

* The projections x -> (dt_raw, B, C) and dt_raw -> dt are position-wise, so they run as torch
  matmuls on the un-permuted (B, H, W, .) layout (they follow autocast like any matmul).
* One kernel program owns (batch b, direction k, a block of channels).  It walks direction k's
  order over the H*W positions by index arithmetic, one step per loop iteration, with the state
  h (N, channels) in registers: the channels across lanes, the N states inside each thread, so the
  recurrence h = exp(delta A) h + delta B u and the output sum over N need no cross-lane traffic.
  The per-step loads (u, dt, B, C of the next steps) are software-pipelined by Triton's cp.async
  pipeliner, so their latency overlaps the math of the current step.  softplus(dt + bias) is
  computed inside; A, D and the dt bias are fp32; all arithmetic and the kernels' inputs are fp32
  (bf16 activations are widened once on the way in).
* The four directions are summed into the output with fp32 atomic adds, so the merged y is the
  only output written.
* Forward saves only the state entering each chunk of `chunk` steps.  Backward walks the chunks in
  reverse: pass 1 recomputes the chunk's states from its checkpoint into a per-program scratch
  (each element written and read back by the same thread), pass 2 walks the chunk backwards with
  the adjoint g_t = exp(delta_{t+1} A) g_{t+1} + C_t dy_t, reusing the decay it computed one step
  earlier.  dB/dC (sums over the channels) are written as one partial per channel block and summed
  by torch; dx is summed over the directions with fp32 atomics.

History and measurements of earlier designs (chunked associative scans): benchmarks/NOTES-gpu.md.

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
# Tunables (the benchmark may override them through `set_block_config`):
# block_d: channels per program; with one warp, 32 // block_d lanes share a channel's d_state
#   (block_d=32: one lane per channel holding all N states; 16: two lanes, N/2 states each, ...).
# fwd_warps / bwd_warps: warps per program.  chunk: steps between the forward's state checkpoints
#   (the backward recomputes one chunk at a time into a per-program scratch).  stages: software-
#   pipelining depth of the per-step loads (Triton's cp.async pipeliner; 1 = no pipelining).
_CONFIG = {"block_d": 32, "fwd_warps": 1, "bwd_warps": 1, "chunk": 32, "stages": 3}


def set_block_config(block_d: Optional[int] = None, fwd_warps: Optional[int] = None,
                     bwd_warps: Optional[int] = None, chunk: Optional[int] = None,
                     stages: Optional[int] = None) -> dict:
    """Change the kernels' tile sizes, warps, chunk and pipelining depth; returns the previous config."""
    old = dict(_CONFIG)
    for key, val in (("block_d", block_d), ("fwd_warps", fwd_warps), ("bwd_warps", bwd_warps),
                     ("chunk", chunk)):
        if val is not None:
            if val <= 0 or val & (val - 1):
                raise UserError(f"triton_ss2d: {key}={val} must be a positive power of two")
            _CONFIG[key] = int(val)
    if stages is not None:
        if not 1 <= stages <= 8:
            raise UserError(f"triton_ss2d: stages={stages} must be between 1 and 8")
        _CONFIG["stages"] = int(stages)
    return old


if triton is not None:

    @triton.jit
    def _position(t, k, H: tl.constexpr, W: tl.constexpr):
        """Flat row-major position visited at step t of direction k (H, W constexpr: the divisions
        below compile to multiply-shifts)."""
        s = tl.where(k >= 2, H * W - 1 - t, t)  # directions 2, 3 run backwards
        return tl.where((k % 2) == 1, (s % H) * W + s // H, s)  # 1, 3 walk column-major: s = w*H + h

    @triton.jit
    def _softplus(x):
        """softplus with torch's threshold 20, accurate log1p for small exp(x)."""
        e = tl.exp(tl.minimum(x, 20.0))
        u = 1.0 + e
        # log1p(e) = log(u) * e / (u - 1) (exact-rounding trick); e itself when u rounds to 1.
        lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
        return tl.where(x > 20.0, x, lp)

    @triton.jit
    def _load_step(x_ptr, dt_ptr, bc_ptr, bias, p, k, D, R, offs_d, mask_d, offs_n, mask_n,
                   N: tl.constexpr):
        """One step's inputs at flat position p: u, delta = softplus(dt + bias) (BD,), B, C (BN,)."""
        u = tl.load(x_ptr + p * D + offs_d, mask=mask_d, other=0.0)
        dr = tl.load(dt_ptr + (p * 4 + k) * D + offs_d, mask=mask_d, other=0.0) + bias
        # B and C as one (BN, 2) tile split in registers: one coalesced 2N-wide load that the
        # pipeliner stages in shared memory, instead of every lane fetching all of B and C.
        bc = bc_ptr + p * (4 * (R + 2 * N)) + k * (R + 2 * N) + R
        both = tl.load(bc + offs_n[:, None] + N * tl.arange(0, 2)[None, :], mask=mask_n[:, None],
                       other=0.0)
        Bt, Ct = tl.split(both)
        return u, dr, Bt, Ct

    @triton.jit
    def _program_setup(a_ptr, ds_ptr, bias_ptr, D, N: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_N: tl.constexpr):
        """What both kernels derive from the program id: batch b, direction k, the channel/state
        offsets and masks, and this block's fp32 A * log2(e) (BN, BD), D skip and dt bias (BD,).
        A arrives transposed, (4, N, D), so that every (BN, BD) access is contiguous along the
        channels and Triton lays the state out with the channels across lanes, N inside threads."""
        pid_bk = tl.program_id(0)
        b = pid_bk // 4
        k = pid_bk % 4
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask_nd = mask_n[:, None] & mask_d[None, :]
        A2 = tl.load(a_ptr + (k * N + offs_n[:, None]) * D + offs_d[None, :], mask=mask_nd,
                     other=0.0) * 1.4426950408889634
        dskip = tl.load(ds_ptr + k * D + offs_d, mask=mask_d, other=0.0)
        bias = tl.load(bias_ptr + k * D + offs_d, mask=mask_d, other=0.0)
        return b, k, offs_d, mask_d, offs_n, mask_n, mask_nd, A2, dskip, bias

    @triton.jit
    def _ss2d_fwd_kernel(x_ptr, dt_ptr, bc_ptr, a_ptr, ds_ptr, bias_ptr, y_ptr, hs_ptr, D, R,
                         H: tl.constexpr, W: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, STAGES: tl.constexpr):
        b, k, offs_d, mask_d, offs_n, mask_n, mask_nd, A2, dskip, bias = _program_setup(
            a_ptr, ds_ptr, bias_ptr, D, N, BLOCK_D, BLOCK_N)
        L: tl.constexpr = H * W
        NCHUNK: tl.constexpr = (L + CHUNK - 1) // CHUNK
        hs_base = hs_ptr + tl.program_id(0) * NCHUNK * N * D + offs_n[:, None] * D + offs_d[None, :]
        h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        for t in tl.range(0, L, num_stages=STAGES):
            p = b * L + _position(t, k, H, W)
            u, dr, Bt, Ct = _load_step(x_ptr, dt_ptr, bc_ptr, bias, p, k, D, R, offs_d, mask_d,
                                       offs_n, mask_n, N)
            if t % CHUNK == 0:  # checkpoint: the state entering this chunk
                tl.store(hs_base + (t // CHUNK) * N * D, h, mask=mask_nd)
            delta = _softplus(dr)
            h = tl.exp2(delta[None, :] * A2) * h + (delta * u)[None, :] * Bt[:, None]
            y = tl.sum(h * Ct[:, None], axis=0) + dskip * u
            tl.atomic_add(y_ptr + p * D + offs_d, y, mask=mask_d, sem="relaxed")

    @triton.jit
    def _ss2d_bwd_kernel(x_ptr, dt_ptr, bc_ptr, a_ptr, ds_ptr, bias_ptr, hs_ptr, gy_ptr, scr_ptr,
                         dx_ptr, ddt_ptr, dbc_ptr, da_ptr, dds_ptr, dbias_ptr, D, R, NPOS,
                         H: tl.constexpr, W: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, STAGES: tl.constexpr):
        b, k, offs_d, mask_d, offs_n, mask_n, mask_nd, A2, dskip, bias = _program_setup(
            a_ptr, ds_ptr, bias_ptr, D, N, BLOCK_D, BLOCK_N)
        L: tl.constexpr = H * W
        NCHUNK: tl.constexpr = (L + CHUNK - 1) // CHUNK
        pid_d = tl.program_id(1)
        hs_base = hs_ptr + tl.program_id(0) * NCHUNK * N * D + offs_n[:, None] * D + offs_d[None, :]
        # This program's scratch: the states of one chunk, (CHUNK, BN, BD), each element written and
        # read back by the same thread.
        prog = tl.program_id(0) * tl.num_programs(1) + pid_d
        scr = scr_ptr + prog * CHUNK * BLOCK_N * BLOCK_D + offs_n[:, None] * BLOCK_D + \
            tl.arange(0, BLOCK_D)[None, :]
        A = A2 * 0.6931471805599453
        g = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)  # dLoss/dh at the step after the current
        a_next = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)  # exp(delta A) of that step
        dA_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for ci in range(NCHUNK):
            c = NCHUNK - 1 - ci
            t0 = c * CHUNK
            n_t = tl.minimum(CHUNK, L - t0)
            # Pass 1: recompute the chunk's states from its checkpoint into the scratch.
            h = tl.load(hs_base + c * N * D, mask=mask_nd, other=0.0)
            for j in tl.range(0, n_t, num_stages=STAGES):
                p = b * L + _position(t0 + j, k, H, W)
                u, dr, Bt, Ct = _load_step(x_ptr, dt_ptr, bc_ptr, bias, p, k, D, R, offs_d, mask_d,
                                           offs_n, mask_n, N)
                delta = _softplus(dr)
                h = tl.exp2(delta[None, :] * A2) * h + (delta * u)[None, :] * Bt[:, None]
                tl.store(scr + j * BLOCK_N * BLOCK_D, h)
            tl.debug_barrier()
            # Pass 2: walk the chunk backwards with the adjoint g_t = exp(delta_{t+1} A) g_{t+1} + C_t dy_t.
            for jr in tl.range(0, n_t, num_stages=STAGES):
                j = n_t - 1 - jr
                p = b * L + _position(t0 + j, k, H, W)
                u, dr, Bt, Ct = _load_step(x_ptr, dt_ptr, bc_ptr, bias, p, k, D, R, offs_d, mask_d,
                                           offs_n, mask_n, N)
                gy = tl.load(gy_ptr + p * D + offs_d, mask=mask_d, other=0.0)
                h = tl.load(scr + j * BLOCK_N * BLOCK_D)
                delta = _softplus(dr)
                du = delta * u
                g = a_next * g + Ct[:, None] * gy[None, :]
                ah_prev = h - du[None, :] * Bt[:, None]  # exp(delta_t A) h_{t-1}
                gah = g * ah_prev
                gB = tl.sum(g * Bt[:, None], axis=0)
                ddr = (gB * u + tl.sum(gah * A, axis=0)) * tl.sigmoid(dr)
                dA_acc += gah * delta[None, :]
                dD_acc += gy * u
                dbias_acc += ddr
                a_next = tl.exp2(delta[None, :] * A2)
                tl.atomic_add(dx_ptr + p * D + offs_d, gB * delta + dskip * gy, mask=mask_d,
                              sem="relaxed")
                tl.store(ddt_ptr + (p * 4 + k) * D + offs_d, ddr, mask=mask_d)
                # This channel block's share of dB/dC (sums over the channels), layout (n_dblocks, B*L, 4, 2N).
                part = dbc_ptr + ((pid_d * NPOS + p) * 4 + k) * (2 * N) + offs_n
                tl.store(part, tl.sum(g * du[None, :], axis=1), mask=mask_n)
                tl.store(part + N, tl.sum(h * gy[None, :], axis=1), mask=mask_n)
            tl.debug_barrier()  # the next chunk's pass 1 overwrites the scratch
        tl.atomic_add(da_ptr + (k * N + offs_n[:, None]) * D + offs_d[None, :], dA_acc, mask=mask_nd)
        tl.atomic_add(dds_ptr + k * D + offs_d, dD_acc, mask=mask_d)
        tl.atomic_add(dbias_ptr + k * D + offs_d, dbias_acc, mask=mask_d)


def _check_runnable(x: torch.Tensor) -> None:
    """Raise a clear error where the kernels cannot run for this tensor."""
    if triton is None:
        raise UserError("scan backend 'triton' needs the triton package, which is not installed")
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError(f"scan backend 'triton' needs a CUDA tensor (got device {x.device}); "
                        "set TRITON_INTERPRET=1 before importing triton to run it on the CPU")


def _launch_shape(b: int, d: int, n: int) -> Tuple[tuple, int, int]:
    """Launch grid (B*4, channel blocks), the channel tile and the (power-of-two) state tile."""
    block_d = _CONFIG["block_d"]
    return (b * K_DIRECTIONS, triton.cdiv(d, block_d)), block_d, max(triton.next_power_of_2(n), 2)


class _SS2DScanFn(torch.autograd.Function):
    """Cross-scan + selective scan + merge over prepared per-position inputs (all fp32).

    x: (B, H, W, D); dts: (B, H, W, 4, D) pre-bias dt; x_dbl: (B, H, W, 4, R + 2N) whose last
    2N columns are B and C; A_t: (4, N, D) (-exp(A_logs), transposed); ds, bias: (4D,).
    """

    @staticmethod
    def forward(ctx, x, dts, x_dbl, A_t, ds, bias):  # noqa: D401 - autograd signature
        b, h, w, d = x.shape
        n = A_t.shape[1]
        r = x_dbl.shape[-1] - 2 * n
        grid, bd, bn = _launch_shape(b, d, n)
        chunk = _CONFIG["chunk"]
        y = torch.zeros(b, h, w, d, device=x.device, dtype=torch.float32)
        hs = torch.empty(b * K_DIRECTIONS, triton.cdiv(h * w, chunk), n, d, device=x.device,
                         dtype=torch.float32)
        _ss2d_fwd_kernel[grid](x, dts, x_dbl, A_t, ds, bias, y, hs, d, r, H=h, W=w, N=n,
                               BLOCK_D=bd, BLOCK_N=bn, CHUNK=chunk, STAGES=_CONFIG["stages"],
                               num_warps=_CONFIG["fwd_warps"])
        ctx.save_for_backward(x, dts, x_dbl, A_t, ds, bias, hs)
        ctx.chunk = chunk
        return y

    @staticmethod
    def backward(ctx, gy):
        x, dts, x_dbl, A_t, ds, bias, hs = ctx.saved_tensors
        b, h, w, d = x.shape
        n = A_t.shape[1]
        r = x_dbl.shape[-1] - 2 * n
        chunk = ctx.chunk  # the checkpoints' spacing, fixed by the forward
        grid, bd, bn = _launch_shape(b, d, n)
        f32 = dict(device=x.device, dtype=torch.float32)
        gy = gy.float().contiguous()
        dx = torch.zeros(x.shape, **f32)
        ddt = torch.empty_like(dts)
        dbc = torch.empty(grid[1], b * h * w, K_DIRECTIONS, 2 * n, **f32)  # per-channel-block partials
        scratch = torch.empty(grid[0] * grid[1], chunk, bn, bd, **f32)
        dA = torch.zeros(A_t.shape, **f32)
        dds = torch.zeros(ds.shape, **f32)
        dbias = torch.zeros(bias.shape, **f32)
        _ss2d_bwd_kernel[grid](x, dts, x_dbl, A_t, ds, bias, hs, gy, scratch, dx, ddt, dbc, dA, dds,
                               dbias, d, r, b * h * w, H=h, W=w, N=n, BLOCK_D=bd, BLOCK_N=bn,
                               CHUNK=chunk, STAGES=_CONFIG["stages"], num_warps=_CONFIG["bwd_warps"])
        dbc_sum = dbc.sum(0).view(b, h, w, K_DIRECTIONS, 2 * n)  # sum over the channel blocks
        dbc = torch.cat([torch.zeros(b, h, w, K_DIRECTIONS, r, **f32), dbc_sum], dim=-1)
        return dx, ddt, dbc, dA, dds, dbias


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
    d, n = x.shape[3], A_logs.shape[1]
    # The kernels compute in fp32 and read fp32 (bf16 inputs are widened once here: the per-step
    # loads are pipelined with cp.async, which needs >= 4 bytes per lane).  Autograd maps the
    # gradients back to the inputs' dtypes through these casts.
    A_t = (-torch.exp(A_logs.float())).view(K_DIRECTIONS, d, n).transpose(1, 2).contiguous()
    y = _SS2DScanFn.apply(x.float(), dts.float(), x_dbl.float(), A_t, Ds.float(),
                          dt_projs_bias.float().reshape(-1))
    return y.to(x.dtype)
