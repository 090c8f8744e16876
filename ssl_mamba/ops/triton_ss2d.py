"""Fused SS2D core in Triton: four-direction cross-scan + selective scan + merge.

`ss2d_scan_triton(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)` computes exactly
what `ssl_mamba.ops.ss2d_scan` computes (see reference-original.md section 1.4), without building
the (B, 4, D, L) cross-scan copies:

* The projection x -> (dt_raw, B, C) is position-wise, so it runs as one torch matmul on the
  un-permuted (B, H, W, .) layout (it follows autocast like any matmul).  The dt projection
  dt_raw (R) -> dt (D) runs inside the kernels (R FMAs per channel and step), so the (B, H, W, 4, D)
  dt tensor and its gradient never exist in memory.
* One kernel program owns (batch b, direction k, a block of channels).  It walks direction k's
  order over the H*W positions by index arithmetic, with the state
  h (N, channels) in registers: the channels across lanes, the N states inside each thread, so the
  recurrence h = exp(delta A) h + delta B u and the output sum over N need no cross-lane traffic.
  The forward and the pre-passes take `vector_steps` (T) steps per loop iteration: u, dt_raw, the
  dt projection and softplus as (T, channels) tiles with T inside each thread, then the recurrence
  step by step; so does the backward's recompute pass (its adjoint pass takes two steps per
  iteration).
  The per-step loads (u, dt_raw, B, C of the next steps) are software-pipelined by Triton's cp.async
  pipeliner, so their latency overlaps the math of the current step.  softplus(dt + bias) is
  computed inside; A, D and the dt bias are fp32; all arithmetic and the kernels' inputs are fp32
  (bf16 activations are widened once on the way in).
* The four directions' outputs are stored in a (B, H, W, 4, D) buffer and summed by torch (or,
  with `atomic_merge`, added into y with fp32 atomics; see the benchmark notes for which is faster).
* Segments: the sequence is cut into pieces scanned by separate programs, so that the first stage
  (few channels, long sequence) and small batches still give the GPU several warps per scheduler.
  A pre-pass kernel computes each segment's local map (its end state from a zero state; in the
  backward, the adjoint it passes on from a zero one) and its total decay exp(A * sum delta); one
  small carry kernel chains them; then every segment runs from its entering value.
* Forward saves only the state entering each chunk of `chunk` steps.  Backward walks the chunks in
  reverse: pass 1 recomputes the chunk's states from its checkpoint into a per-program scratch
  (each element written and read back by the same thread), pass 2 walks the chunk backwards with
  the adjoint g_t = exp(delta_{t+1} A) g_{t+1} + C_t dy_t, carrying the decayed adjoint so each
  decay is computed once.  The gradients of dt_raw, B and C (sums over the channels) are written as
  one partial per channel block and summed by torch; dx is merged over the directions like y; the
  parameters' gradients are reduced in registers and added once per program.
* The host code launching the kernels is two torch.library custom ops, ssl_mamba::ss2d_scan_fwd
  and ssl_mamba::ss2d_scan_bwd, composed by the autograd Function `_SS2DScanFn` with the casts and
  sums in plain torch: torch.compile traces all of it with the ops as opaque nodes.

History and measurements of earlier designs (chunked associative scans): benchmarks/NOTES-gpu.md.

The module imports on machines without a GPU; running on CPU tensors needs TRITON_INTERPRET=1 set
before triton is first imported (that is how the CPU tests exercise it).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import torch

from ssl_mamba.errors import UserError

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch's CUDA wheels and with our venv
    triton = None
    tl = None

K_DIRECTIONS = 4
# Tunables (the benchmark may override them through `set_block_config`); the defaults are the
# fastest of the H200 sweep (benchmarks/NOTES-gpu.md).
# block_d: channels per program; with one warp, 32 // block_d lanes share a channel's d_state
#   (block_d=32: one lane per channel holding all N states; 16: two lanes, N/2 states each, ...).
# fwd_warps / bwd_warps: warps per program.  chunk: steps between the forward's state checkpoints
#   (the backward recomputes one chunk at a time into a per-program scratch).  stages: software-
#   pipelining depth of the per-step loads (Triton's cp.async pipeliner; 1 = no pipelining).
# atomic_merge: sum the four directions' y (and dx) with fp32 atomics instead of per-direction
#   buffers summed by torch.
# segments: pieces of the sequence scanned in parallel (0: automatic, aiming at target_programs).
# target_programs: programs per launch the automatic segment count aims at (8192: ~16 one-warp
#   programs per scheduler on a 132-SM H100/H200).  Each segment but the last costs a pre-pass over
#   its steps.  Measured at the model level (b24 bf16 + graphs, benchmarks/RESULTS.md): 2048 slower
#   than 4096 (H200: 64.4 vs 60.1 ms), 8192 faster (H200: 59.3 vs 60.3; H100 with compile: 57.2 vs
#   58.3; H200 v17 with compile: 52.0 vs 53.1), its own plain bf16 peak 3.63 instead of 3.20 GiB at
#   b24 (v17: 35% of the baseline's 10.25), so 8192 is the default since v17.
# vector_steps: steps per iteration of the forward and pre-pass loops (their inputs, softplus and dt
#   projection as (T, channels) tiles); 4 was the fastest of 2 / 4 / 8 in the H200 sweep of v7
#   (benchmarks/NOTES-gpu.md), though by less than the run-to-run spread.
# bwd_block_d: channels per backward program (0: block_d); 16 puts two lanes on each channel, halving
#   the per-thread state of the register-bound backward (see NOTES-gpu.md, third session).
# bwd_maxnreg: register cap for the backward kernel (0: the compiler's choice, 255 today), trading
#   spills for more warps per scheduler.
# bwd_programs: 0 (default): one backward program per work item; N > 0: a persistent backward of
#   at most N programs, each looping over work items; -1: persistent with as many programs as fit
#   on the GPU at once (_BWD_PROGRAMS_PER_SM per SM; on a CPU one per item).  Each program needs
#   one chunk of recompute scratch (128 KB at chunk 64, 16 states, 32 channels), so the persistent
#   form cuts that transient from ~530 MB to ~140 MB at the first stage at batch 24: the bf16
#   training peak fell from 4.32 to 3.99 GiB, but the backward kernel took ~30.5 instead of ~25-27
#   ms per step (H200, benchmarks/RESULTS.md), so it is the memory saver, not the default
#   (`train.low_memory_scan`).
# narrow_buffers: with bf16 inputs, write the per-direction y / dx buffers (not with atomic_merge)
#   and the d x_dbl partials in bf16 instead of fp32, halving their write and re-read (at the first
#   stage at batch 24: 231 MB for y4 or dx4 and 275 MB of partials in fp32); the sums over them still
#   accumulate in fp32.  H200 v17, b24 bf16: compiled + graphed step 52.3 instead of 53.1 ms, own
#   plain peak 2.97 instead of 3.20 GiB; within the bf16 tolerance of the interpreter tests; on by
#   default since v17 (the two v17 defaults were timed one at a time, not together).
# (A variant that took the dt projection's backward out of the kernel into two GEMMs, dt_gemm, was
#   measured 45% slower in the backward on an H100 and removed; it is commit 8b8c58b.)
_CONFIG = {"block_d": 32, "fwd_warps": 1, "bwd_warps": 1, "chunk": 64, "stages": 4, "atomic_merge": 0,
           "segments": 0, "vector_steps": 4, "bwd_block_d": 0, "bwd_maxnreg": 0, "bwd_programs": 0,
           "target_programs": 8192, "narrow_buffers": 1}
_BWD_PROGRAMS_PER_SM = 8  # one-warp backward programs resident per SM at its 255 registers (sm_90)


def block_config() -> dict:
    """A copy of the kernels' current tunables (see the comments above `_CONFIG`)."""
    return dict(_CONFIG)


def set_block_config(block_d: Optional[int] = None, fwd_warps: Optional[int] = None,
                     bwd_warps: Optional[int] = None, chunk: Optional[int] = None,
                     stages: Optional[int] = None, atomic_merge: Optional[bool] = None,
                     segments: Optional[int] = None, vector_steps: Optional[int] = None,
                     bwd_block_d: Optional[int] = None, bwd_maxnreg: Optional[int] = None,
                     bwd_programs: Optional[int] = None, target_programs: Optional[int] = None,
                     narrow_buffers: Optional[bool] = None) -> dict:
    """Change the kernels' tile sizes, warps, chunk and pipelining depth; returns the previous config."""
    old = dict(_CONFIG)
    if bwd_block_d is not None:
        if bwd_block_d < 0 or bwd_block_d & (bwd_block_d - 1):
            raise UserError(f"triton_ss2d: bwd_block_d={bwd_block_d} must be 0 (same as block_d) or a power of two")
        _CONFIG["bwd_block_d"] = int(bwd_block_d)
    if bwd_maxnreg is not None:
        if bwd_maxnreg != 0 and not 24 <= bwd_maxnreg <= 255:
            raise UserError(f"triton_ss2d: bwd_maxnreg={bwd_maxnreg} must be 0 (no cap) or between 24 and 255")
        _CONFIG["bwd_maxnreg"] = int(bwd_maxnreg)
    if target_programs is not None:
        if target_programs < 1:
            raise UserError(f"triton_ss2d: target_programs={target_programs} must be >= 1")
        _CONFIG["target_programs"] = int(target_programs)
    if bwd_programs is not None:
        if bwd_programs < -1:
            raise UserError(f"triton_ss2d: bwd_programs={bwd_programs} must be 0 (one program per work item), "
                            "-1 (persistent, as many programs as are resident) or a positive program count")
        _CONFIG["bwd_programs"] = int(bwd_programs)
    for key, val in (("block_d", block_d), ("fwd_warps", fwd_warps), ("bwd_warps", bwd_warps),
                     ("chunk", chunk), ("vector_steps", vector_steps)):
        if val is not None:
            if val <= 0 or val & (val - 1):
                raise UserError(f"triton_ss2d: {key}={val} must be a positive power of two")
            _CONFIG[key] = int(val)
    if stages is not None:
        if not 1 <= stages <= 8:
            raise UserError(f"triton_ss2d: stages={stages} must be between 1 and 8")
        _CONFIG["stages"] = int(stages)
    if atomic_merge is not None:
        _CONFIG["atomic_merge"] = int(bool(atomic_merge))
    if narrow_buffers is not None:
        _CONFIG["narrow_buffers"] = int(bool(narrow_buffers))
    if segments is not None:
        if segments < 0:
            raise UserError(f"triton_ss2d: segments={segments} must be >= 0 (0: automatic)")
        _CONFIG["segments"] = int(segments)
    return old


if triton is not None:

    @triton.jit
    def _position(t, k, H: tl.constexpr, W: tl.constexpr):
        """Flat row-major position visited at step t of direction k (H, W constexpr: the divisions
        below compile to multiply-shifts)."""
        s = tl.where(k >= 2, H * W - 1 - t, t)  # directions 2, 3 run backwards
        return tl.where((k % 2) == 1, (s % H) * W + s // H, s)  # 1, 3 walk column-major: s = w*H + h

    @triton.jit
    def _and(mask, valid):
        """mask & a scalar validity flag.  (The `!= 0` keeps the result boolean under Triton's CPU
        interpreter, which otherwise widens a scalar-broadcast `&` to an integer mask.)"""
        return (mask & valid) != 0

    @triton.jit
    def _merge_out(ptr, val, p, k, D, offs_d, mask, ATOMIC: tl.constexpr):
        """A per-direction row (BD,) of y or dx at position p: fp32 atomic add into the (B*L, D)
        sum, or a plain store into slot k of a (B*L, 4, D) buffer (summed over k by torch)."""
        if ATOMIC:
            tl.atomic_add(ptr + p * D + offs_d, val, mask=mask, sem="relaxed")
        else:  # the buffer is fp32, or bf16 with narrow_buffers
            tl.store(ptr + (p * 4 + k) * D + offs_d, val.to(ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _softplus(x):
        """softplus with torch's threshold 20, accurate log1p for small exp(x)."""
        e = tl.exp(tl.minimum(x, 20.0))
        u = 1.0 + e
        # log1p(e) = log(u) * e / (u - 1) (exact-rounding trick); e itself when u rounds to 1.
        lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
        return tl.where(x > 20.0, x, lp)

    @triton.jit
    def _program_setup(pid_bk, pid_d, a_ptr, dtw_ptr, ds_ptr, bias_ptr, D, R, N: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
        """What every kernel derives from its work item (batch * 4 + direction, channel block):
        batch b, direction k, the offsets and masks, and this block's fp32 parameters: A * log2(e)
        (BN, BD), the dt projection (BR, BD), the D skip and the dt bias (BD,).  A and the dt
        projection arrive transposed, (4, N, D) and (4, R, D), so every (., BD) access is contiguous
        along the channels and Triton lays the state out with the channels across lanes and N
        inside each thread."""
        b = pid_bk // 4
        k = pid_bk % 4
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        offs_r = tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        mask_nd = mask_n[:, None] & mask_d[None, :]
        A2 = tl.load(a_ptr + (k * N + offs_n[:, None]) * D + offs_d[None, :], mask=mask_nd,
                     other=0.0) * 1.4426950408889634
        dtw = tl.load(dtw_ptr + (k * R + offs_r[:, None]) * D + offs_d[None, :],
                      mask=mask_r[:, None] & mask_d[None, :], other=0.0)
        dskip = tl.load(ds_ptr + k * D + offs_d, mask=mask_d, other=0.0)
        bias = tl.load(bias_ptr + k * D + offs_d, mask=mask_d, other=0.0)
        return b, k, offs_d, mask_d, offs_n, mask_n, offs_r, mask_r, mask_nd, A2, dtw, dskip, bias

    @triton.jit
    def _step_inputs(x_ptr, xdbl_ptr, dtw, bias, b, k, t, valid, D, R, offs_d, mask_d, offs_n, mask_n,
                     offs_r, mask_r, H: tl.constexpr, W: tl.constexpr, N: tl.constexpr):
        """Step t's flat position p and inputs (the backward's one-step form of `_group_inputs`):
        u (BD,), dt_raw (BR,), B, C (BN,), the pre-softplus dt_raw @ dt_proj + bias (BD,) and delta.
        An invalid step (past either end) reads zeros and gets delta = 0, which makes it an exact
        identity for the state and the adjoint."""
        p, Bt, Ct = _step_bc(xdbl_ptr, b, k, t, valid, R, offs_n, mask_n, H, W, N)
        u = tl.load(x_ptr + p * D + offs_d, mask=_and(mask_d, valid), other=0.0)
        xr = tl.load(xdbl_ptr + (p * 4 + k) * (R + 2 * N) + offs_r, mask=_and(mask_r, valid), other=0.0)
        dr = tl.sum(dtw * xr[:, None], axis=0) + bias  # the dt projection, R FMAs per channel
        delta = tl.where(valid, _softplus(dr), 0.0)
        return p, u, xr, Bt, Ct, dr, delta

    @triton.jit
    def _group_inputs(x_ptr, xdbl_ptr, dtw, bias, b, k, t, t_end, D, R, offs_d, mask_d, offs_r, mask_r,
                      H: tl.constexpr, W: tl.constexpr, N: tl.constexpr, T: tl.constexpr):
        """The T steps from t as (T, BD) tiles: u, delta (zero on steps past t_end) and delta * u.
        The step axis comes first so that the channels take the lanes and the T steps sit inside
        each thread: softplus and the dt projection then run for T steps at once, with T-fold
        instruction-level parallelism, and `_row` picks a step for free."""
        tv = t + tl.arange(0, T)
        valid = tv < t_end
        pv = b * H * W + _position(tl.minimum(tv, H * W - 1), k, H, W)
        U = tl.load(x_ptr + pv[:, None] * D + offs_d[None, :], mask=valid[:, None] & mask_d[None, :], other=0.0)
        rows = xdbl_ptr + (pv * 4 + k) * (R + 2 * N)
        XR = tl.load(rows[None, :] + offs_r[:, None], mask=mask_r[:, None] & valid[None, :], other=0.0)  # (BR, T)
        DR = tl.sum(dtw[:, None, :] * XR[:, :, None], axis=0) + bias[None, :]  # dt projection, (T, BD)
        DELTA = tl.where(valid[:, None], _softplus(DR), 0.0)
        return U, DELTA, DELTA * U

    @triton.jit
    def _row(tile, j: tl.constexpr, T: tl.constexpr):
        """Row j of a (T, BD) tile whose T axis lies inside each thread.  The compare is constant per
        register, and x + -0.0 == x exactly, so the reduction folds to a register pick."""
        return tl.sum(tl.where(tl.arange(0, T)[:, None] == j, tile, -0.0), axis=0)

    @triton.jit
    def _step_bc(xdbl_ptr, b, k, t, valid, R, offs_n, mask_n, H: tl.constexpr, W: tl.constexpr,
                 N: tl.constexpr):
        """Step t's flat position and B, C (BN,) (zeros when not valid).  B and C come as one (BN, 2)
        tile split in registers: one coalesced 2N-wide load that the pipeliner stages in shared
        memory, instead of every lane fetching all of B and C."""
        p = b * H * W + _position(tl.minimum(t, H * W - 1), k, H, W)
        both = tl.load(xdbl_ptr + (p * 4 + k) * (R + 2 * N) + R + offs_n[:, None] + N * tl.arange(0, 2)[None, :],
                       mask=_and(mask_n, valid)[:, None], other=0.0)
        Bt, Ct = tl.split(both)
        return p, Bt, Ct

    @triton.jit
    def _carry_kernel(local_ptr, dsum_ptr, a_ptr, out_ptr, ND, D, NSEG, REVERSE: tl.constexpr,
                      BLOCK: tl.constexpr):
        """entering[s] = exp(A * dsum[prev]) * entering[prev] + local[prev], prev = s -+ 1, for a
        block of (n, d) elements of one (batch, direction); entering is zero at the first segment
        in scan order."""
        bk = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < ND
        A = tl.load(a_ptr + (bk % 4) * ND + offs, mask=mask, other=0.0)
        v = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in range(NSEG):
            if REVERSE:
                s = NSEG - 1 - i
                prev = s + 1
            else:
                s = i
                prev = s - 1
            if i > 0:
                dsum = tl.load(dsum_ptr + (bk * NSEG + prev) * D + offs % D, mask=mask, other=0.0)
                v = tl.exp(A * dsum) * v + tl.load(local_ptr + (bk * NSEG + prev) * ND + offs, mask=mask,
                                                    other=0.0)
            tl.store(out_ptr + (bk * NSEG + s) * ND + offs, v, mask=mask)

    @triton.jit
    def _segment(L: tl.constexpr, SEG: tl.constexpr):
        """This program's segment of the sequence, [t_start, t_end) (program axis 2)."""
        t_start = tl.program_id(2) * SEG
        return t_start, tl.minimum(t_start + SEG, L)

    @triton.jit
    def _ss2d_fwd_kernel(x_ptr, xdbl_ptr, a_ptr, dtw_ptr, ds_ptr, bias_ptr, hin_ptr, y_ptr, hs_ptr, D, R,
                         H: tl.constexpr, W: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, CHUNK: tl.constexpr,
                         SEG: tl.constexpr, STAGES: tl.constexpr, T: tl.constexpr, ATOMIC: tl.constexpr):
        """Scan one segment from its entering state (hin, from the state pre-pass; zero for the
        first segment), writing y and the state checkpoint at each chunk start."""
        b, k, offs_d, mask_d, offs_n, mask_n, offs_r, mask_r, mask_nd, A2, dtw, dskip, bias = \
            _program_setup(tl.program_id(0), tl.program_id(1), a_ptr, dtw_ptr, ds_ptr, bias_ptr, D, R, N, BLOCK_D,
                           BLOCK_N, BLOCK_R)
        L: tl.constexpr = H * W
        NCHUNK: tl.constexpr = (L + CHUNK - 1) // CHUNK
        NSEG: tl.constexpr = (L + SEG - 1) // SEG
        t_start, t_end = _segment(L, SEG)
        nd_off = offs_n[:, None] * D + offs_d[None, :]
        hs_base = hs_ptr + tl.program_id(0) * NCHUNK * N * D + nd_off
        if NSEG > 1:
            h = tl.load(hin_ptr + (tl.program_id(0) * NSEG + tl.program_id(2)) * N * D + nd_off,
                        mask=mask_nd, other=0.0)
        else:
            h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        # T steps per iteration: their inputs, softplus and dt projection as (T, BD) tiles, then the
        # recurrence step by step (CHUNK is a multiple of T, so checkpoints fall on group starts).
        for t in tl.range(t_start, t_end, T, num_stages=STAGES):
            if t % CHUNK == 0:  # checkpoint: the state entering this chunk
                tl.store(hs_base + (t // CHUNK) * N * D, h, mask=mask_nd)
            U, DELTA, DU = _group_inputs(x_ptr, xdbl_ptr, dtw, bias, b, k, t, t_end, D, R, offs_d, mask_d,
                                         offs_r, mask_r, H, W, N, T)
            for j in tl.static_range(T):
                ok = t + j < t_end
                p, Bt, Ct = _step_bc(xdbl_ptr, b, k, t + j, ok, R, offs_n, mask_n, H, W, N)
                u = _row(U, j, T)
                h = tl.exp2(_row(DELTA, j, T)[None, :] * A2) * h + _row(DU, j, T)[None, :] * Bt[:, None]
                y = tl.sum(h * Ct[:, None], axis=0) + dskip * u
                _merge_out(y_ptr, y, p, k, D, offs_d, _and(mask_d, ok), ATOMIC)

    @triton.jit
    def _segment_prepass_kernel(x_ptr, xdbl_ptr, a_ptr, dtw_ptr, ds_ptr, bias_ptr, gy_ptr, out_ptr,
                                dsum_ptr, D, R, H: tl.constexpr, W: tl.constexpr, N: tl.constexpr,
                                BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                                SEG: tl.constexpr, STAGES: tl.constexpr, T: tl.constexpr,
                                REVERSE: tl.constexpr):
        """Per segment, the linear map that carries a state across it, for the cheap sequential
        fix-up between segments (`_carry_kernel`) that lets all segments run in parallel.

        Forward (REVERSE=0): the segment's end state from a zero entering state.  Backward
        (REVERSE=1): the decayed adjoint q leaving the segment's first step, from a zero q entering
        at its last step (q_{t-1} = exp(delta_t A) (q_t + C_t dy_t)).  Both: sum of delta over the
        segment (BD,), so the segment's total decay is exp(A * sum)."""
        b, k, offs_d, mask_d, offs_n, mask_n, offs_r, mask_r, mask_nd, A2, dtw, dskip, bias = \
            _program_setup(tl.program_id(0), tl.program_id(1), a_ptr, dtw_ptr, ds_ptr, bias_ptr, D, R, N, BLOCK_D,
                           BLOCK_N, BLOCK_R)
        L: tl.constexpr = H * W
        NSEG: tl.constexpr = (L + SEG - 1) // SEG
        t_start, t_end = _segment(L, SEG)
        v = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dsum = tl.zeros((BLOCK_D,), dtype=tl.float32)
        n_groups = (t_end - t_start + T - 1) // T
        for g in tl.range(0, n_groups, num_stages=STAGES):
            if REVERSE:
                t = t_start + (n_groups - 1 - g) * T
            else:
                t = t_start + g * T
            U, DELTA, DU = _group_inputs(x_ptr, xdbl_ptr, dtw, bias, b, k, t, t_end, D, R, offs_d, mask_d,
                                         offs_r, mask_r, H, W, N, T)
            for jj in tl.static_range(T):
                j = jj + REVERSE * (T - 1 - 2 * jj)  # walk the group backwards in REVERSE (a constexpr)
                ok = t + j < t_end
                p, Bt, Ct = _step_bc(xdbl_ptr, b, k, t + j, ok, R, offs_n, mask_n, H, W, N)
                delta = _row(DELTA, j, T)
                a = tl.exp2(delta[None, :] * A2)
                if REVERSE:
                    gy = tl.load(gy_ptr + p * D + offs_d, mask=_and(mask_d, ok), other=0.0)
                    v = a * (v + Ct[:, None] * gy[None, :])
                else:
                    v = a * v + _row(DU, j, T)[None, :] * Bt[:, None]
            dsum += tl.sum(DELTA, axis=0)
        seg = tl.program_id(0) * NSEG + tl.program_id(2)
        tl.store(out_ptr + seg * N * D + offs_n[:, None] * D + offs_d[None, :], v, mask=mask_nd)
        tl.store(dsum_ptr + seg * D + offs_d, dsum, mask=mask_d)

    @triton.jit
    def _adjoint_step(x_ptr, xdbl_ptr, gy_ptr, scr, dx_ptr, dpart_ptr, q, dA_acc, dD_acc, dbias_acc,
                      ddtw_acc, A2, dtw, dskip, bias, b, k, t, j, valid, pid_d, NPOS, D, R, offs_d, mask_d,
                      offs_n, mask_n, offs_r, mask_r, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      H: tl.constexpr, W: tl.constexpr, N: tl.constexpr, ATOMIC: tl.constexpr):
        """Backward pass 2: one step of the reverse walk.  q carries exp(delta_{t+1} A) g_{t+1}, so
        g_t = q + C_t dy_t and the next q is exp(delta_t A) g_t (an identity on invalid steps)."""
        p, u, xr, Bt, Ct, dr, delta = _step_inputs(x_ptr, xdbl_ptr, dtw, bias, b, k, t, valid, D, R,
                                                   offs_d, mask_d, offs_n, mask_n, offs_r, mask_r, H, W, N)
        m_d = _and(mask_d, valid)
        gy = tl.load(gy_ptr + p * D + offs_d, mask=m_d, other=0.0)
        h = tl.load(scr + j * BLOCK_N * BLOCK_D, mask=(mask_n[:, None] & m_d[None, :]), other=0.0)
        du = delta * u
        g = q + Ct[:, None] * gy[None, :]
        gah = g * (h - du[None, :] * Bt[:, None])  # g_t * exp(delta_t A) h_{t-1}
        gB = tl.sum(g * Bt[:, None], axis=0)
        ddr = (gB * u + tl.sum(gah * A2, axis=0) * 0.6931471805599453) * tl.sigmoid(dr)
        ddr = tl.where(m_d, ddr, 0.0)
        dA_acc += gah * delta[None, :]
        dD_acc += gy * u
        dbias_acc += ddr
        ddtw_acc += xr[:, None] * ddr[None, :]
        q = tl.exp2(delta[None, :] * A2) * g
        _merge_out(dx_ptr, gB * delta + dskip * gy, p, k, D, offs_d, m_d, ATOMIC)
        # This channel block's share of d x_dbl (sums over the channels), layout (n_dblocks, B*L, 4, R+2N).
        # (fp32, or bf16 with narrow_buffers)
        part = dpart_ptr + ((pid_d * NPOS + p) * 4 + k) * (R + 2 * N)
        pt = dpart_ptr.dtype.element_ty
        tl.store(part + offs_r, tl.sum(dtw * ddr[None, :], axis=1).to(pt), mask=_and(mask_r, valid))
        tl.store(part + R + offs_n, tl.sum(g * du[None, :], axis=1).to(pt), mask=_and(mask_n, valid))
        tl.store(part + R + N + offs_n, tl.sum(h * gy[None, :], axis=1).to(pt), mask=_and(mask_n, valid))
        return q, dA_acc, dD_acc, dbias_acc, ddtw_acc

    @triton.jit
    def _ss2d_bwd_kernel(x_ptr, xdbl_ptr, a_ptr, dtw_ptr, ds_ptr, bias_ptr, hs_ptr, gy_ptr, qin_ptr, scr_ptr,
                         dx_ptr, dpart_ptr, da_ptr, ddtw_ptr, dds_ptr, dbias_ptr, D, R, NPOS, NBK,
                         H: tl.constexpr, W: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, CHUNK: tl.constexpr,
                         SEG: tl.constexpr, STAGES: tl.constexpr, T: tl.constexpr, ATOMIC: tl.constexpr,
                         PERSISTENT: tl.constexpr):
        """One program per work item (batch * 4 + direction, channel block, segment) on a (B*4,
        blocks, segments) grid, or PERSISTENT: a 1-D grid whose programs take the items in turn, so
        that the recompute scratch is needed per program rather than per item (less memory)."""
        # Each program's scratch: the states of one chunk, (CHUNK, BN, BD), each element written and
        # read back by the same thread.
        tile = tl.arange(0, BLOCK_N)[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
        if PERSISTENT:
            L: tl.constexpr = H * W
            NSEG: tl.constexpr = (L + SEG - 1) // SEG
            ndb = tl.cdiv(D, BLOCK_D)
            scr = scr_ptr + tl.program_id(0) * CHUNK * BLOCK_N * BLOCK_D + tile
            for item in range(tl.program_id(0), NBK * ndb * NSEG, tl.num_programs(0)):
                _bwd_item(item // (ndb * NSEG), item // NSEG % ndb, item % NSEG, x_ptr, xdbl_ptr, a_ptr, dtw_ptr,
                          ds_ptr, bias_ptr, hs_ptr, gy_ptr, qin_ptr, scr, dx_ptr, dpart_ptr, da_ptr, ddtw_ptr,
                          dds_ptr, dbias_ptr, D, R, NPOS, H, W, N, BLOCK_D, BLOCK_N, BLOCK_R, CHUNK, SEG, STAGES, T,
                          ATOMIC)
        else:
            prog = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) + \
                tl.program_id(2)
            scr = scr_ptr + prog * CHUNK * BLOCK_N * BLOCK_D + tile
            _bwd_item(tl.program_id(0), tl.program_id(1), tl.program_id(2), x_ptr, xdbl_ptr, a_ptr, dtw_ptr, ds_ptr,
                      bias_ptr, hs_ptr, gy_ptr, qin_ptr, scr, dx_ptr, dpart_ptr, da_ptr, ddtw_ptr, dds_ptr, dbias_ptr,
                      D, R, NPOS, H, W, N, BLOCK_D, BLOCK_N, BLOCK_R, CHUNK, SEG, STAGES, T, ATOMIC)

    @triton.jit
    def _bwd_item(pid_bk, pid_d, pid_seg, x_ptr, xdbl_ptr, a_ptr, dtw_ptr, ds_ptr, bias_ptr, hs_ptr, gy_ptr,
                  qin_ptr, scr, dx_ptr, dpart_ptr, da_ptr, ddtw_ptr, dds_ptr, dbias_ptr, D, R, NPOS,
                  H: tl.constexpr, W: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_R: tl.constexpr, CHUNK: tl.constexpr, SEG: tl.constexpr, STAGES: tl.constexpr,
                  T: tl.constexpr, ATOMIC: tl.constexpr):
        """The backward of one segment of one (batch, direction, channel block), its chunks in reverse,
        from the decayed adjoint entering at its end (qin, from the adjoint pre-pass; zero for the
        last segment)."""
        b, k, offs_d, mask_d, offs_n, mask_n, offs_r, mask_r, mask_nd, A2, dtw, dskip, bias = \
            _program_setup(pid_bk, pid_d, a_ptr, dtw_ptr, ds_ptr, bias_ptr, D, R, N, BLOCK_D, BLOCK_N, BLOCK_R)
        L: tl.constexpr = H * W
        NCHUNK: tl.constexpr = (L + CHUNK - 1) // CHUNK
        hs_base = hs_ptr + pid_bk * NCHUNK * N * D + offs_n[:, None] * D + offs_d[None, :]
        NSEG: tl.constexpr = (L + SEG - 1) // SEG
        CPS: tl.constexpr = SEG // CHUNK  # chunks per segment
        if NSEG > 1:
            q = tl.load(qin_ptr + (pid_bk * NSEG + pid_seg) * N * D + offs_n[:, None] * D + offs_d[None, :],
                        mask=mask_nd, other=0.0)
        else:
            q = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dA_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        ddtw_acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        c_first = pid_seg * CPS
        n_chunks = tl.minimum(CPS, NCHUNK - c_first)
        for ci in range(n_chunks):
            t0 = (c_first + n_chunks - 1 - ci) * CHUNK
            n_t = tl.minimum(CHUNK, L - t0)
            # Pass 1: recompute the chunk's states from its checkpoint into the scratch.
            h = tl.load(hs_base + (t0 // CHUNK) * N * D, mask=mask_nd, other=0.0)
            for j in tl.range(0, n_t, T, num_stages=STAGES):
                _, DELTA, DU = _group_inputs(x_ptr, xdbl_ptr, dtw, bias, b, k, t0 + j, t0 + n_t, D, R, offs_d,
                                             mask_d, offs_r, mask_r, H, W, N, T)
                for jj in tl.static_range(T):
                    ok = j + jj < n_t
                    _, Bt, _ = _step_bc(xdbl_ptr, b, k, t0 + j + jj, ok, R, offs_n, mask_n, H, W, N)
                    h = tl.exp2(_row(DELTA, jj, T)[None, :] * A2) * h + _row(DU, jj, T)[None, :] * Bt[:, None]
                    tl.store(scr + (j + jj) * BLOCK_N * BLOCK_D, h, mask=_and(mask_nd, ok))
            tl.debug_barrier()
            # Pass 2: walk the chunk backwards (pairs from its end; the pair's second step is
            # invalid when the chunk has an odd length).
            for jr in tl.range(0, n_t, 2, num_stages=STAGES):
                j = n_t - 1 - jr
                q, dA_acc, dD_acc, dbias_acc, ddtw_acc = _adjoint_step(
                    x_ptr, xdbl_ptr, gy_ptr, scr, dx_ptr, dpart_ptr, q, dA_acc, dD_acc, dbias_acc,
                    ddtw_acc, A2, dtw, dskip, bias, b, k, t0 + j, j, j >= 0, pid_d, NPOS, D, R, offs_d,
                    mask_d, offs_n, mask_n, offs_r, mask_r, BLOCK_N, BLOCK_D, H, W, N, ATOMIC)
                q, dA_acc, dD_acc, dbias_acc, ddtw_acc = _adjoint_step(
                    x_ptr, xdbl_ptr, gy_ptr, scr, dx_ptr, dpart_ptr, q, dA_acc, dD_acc, dbias_acc,
                    ddtw_acc, A2, dtw, dskip, bias, b, k, t0 + j - 1, j - 1, j >= 1, pid_d, NPOS, D, R,
                    offs_d, mask_d, offs_n, mask_n, offs_r, mask_r, BLOCK_N, BLOCK_D, H, W, N, ATOMIC)
            tl.debug_barrier()  # the next chunk's pass 1 overwrites the scratch
        tl.atomic_add(da_ptr + (k * N + offs_n[:, None]) * D + offs_d[None, :], dA_acc, mask=mask_nd)
        tl.atomic_add(ddtw_ptr + (k * R + offs_r[:, None]) * D + offs_d[None, :], ddtw_acc,
                      mask=mask_r[:, None] & mask_d[None, :])
        tl.atomic_add(dds_ptr + k * D + offs_d, dD_acc, mask=mask_d)
        tl.atomic_add(dbias_ptr + k * D + offs_d, dbias_acc, mask=mask_d)


def _check_runnable(x: torch.Tensor) -> None:
    """Raise a clear error where the kernels cannot run for this tensor."""
    if triton is None:
        raise UserError("scan backend 'triton' needs the triton package, which is not installed")
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError(f"scan backend 'triton' needs a CUDA tensor (got device {x.device}); "
                        "set TRITON_INTERPRET=1 before importing triton to run it on the CPU")


# The order of the config values in the int list the custom ops take (`_config_ints`).
_PLAN_KEYS = tuple(_CONFIG)


def _config_ints() -> List[int]:
    """The current config as the int list the custom ops take.  The forward reads it once and the
    backward op gets the same list, so both derive the same plan from it and the shapes even if
    `set_block_config` runs in between (under torch.compile the values are baked into the graph,
    guarded by dynamo on the config dict)."""
    return [int(_CONFIG[key]) for key in _PLAN_KEYS]


def _config_dict(config: Sequence[int]) -> dict:
    return dict(zip(_PLAN_KEYS, config))


def _cdiv(a, b):
    """Ceil division that also works on the SymInts of the fake (shape-only) implementations."""
    return (a + b - 1) // b


def _launch_plan(b: int, h: int, w: int, d: int, n: int, r: int, config: Optional[dict] = None) -> dict:
    """Everything one forward and its backward launch with, derived from the shapes and `config`
    (default: the current `_CONFIG`): grid (B*4, channel blocks, segments), chunk, segment length,
    the merge mode and the kernels' shared compile-time tiles.  The custom ops pass the forward's
    config to the backward, so its plan matches the forward's checkpoints.

    Segments: the sequence is cut into SEG-step pieces scanned in parallel (after a cheap
    pre-pass and fix-up), so that small batches and the first stage still give the GPU several
    warps per scheduler.  `segments` 0 picks enough for ~`target_programs` programs."""
    cfg = _CONFIG if config is None else config
    length = h * w
    block_d, chunk = cfg["block_d"], cfg["chunk"]
    base = b * K_DIRECTIONS * triton.cdiv(d, block_d)
    n_chunks = triton.cdiv(length, chunk)
    want = cfg["segments"] or triton.cdiv(cfg["target_programs"], base)  # 1 once the GPU is busy
    seg = triton.cdiv(n_chunks, max(1, min(want, n_chunks))) * chunk
    n_seg = triton.cdiv(length, seg)
    tiles = dict(H=h, W=w, N=n, BLOCK_D=block_d, BLOCK_N=max(triton.next_power_of_2(n), 2),
                 BLOCK_R=max(triton.next_power_of_2(r), 2), SEG=seg, STAGES=cfg["stages"],
                 T=min(cfg["vector_steps"], chunk))
    bwd_block_d = cfg["bwd_block_d"] or block_d
    bwd_options = {"num_warps": cfg["bwd_warps"]}
    if cfg["bwd_maxnreg"]:
        bwd_options["maxnreg"] = cfg["bwd_maxnreg"]
    return dict(grid=(b * K_DIRECTIONS, triton.cdiv(d, block_d), n_seg), chunk=chunk, n_seg=n_seg,
                atomic=bool(cfg["atomic_merge"]), tiles=tiles,
                fwd_warps=cfg["fwd_warps"], bwd_warps=cfg["bwd_warps"],
                bwd_items=(b * K_DIRECTIONS, triton.cdiv(d, bwd_block_d), n_seg),
                bwd_programs=cfg["bwd_programs"],
                bwd_tiles=dict(tiles, BLOCK_D=bwd_block_d), bwd_options=bwd_options)


def _backward_programs(n_items: int, device: torch.device, most: int) -> int:
    """Programs of the persistent backward (bwd_programs `most` != 0): at most `most` (or, for -1,
    the resident count), spread so that every program takes the same number of items (+-1)."""
    if most == -1:
        if device.type != "cuda":
            return n_items
        most = torch.cuda.get_device_properties(device).multi_processor_count * _BWD_PROGRAMS_PER_SM
    rounds = triton.cdiv(n_items, most)
    return triton.cdiv(n_items, rounds)


def _entering_values(plan: dict, args: tuple, carried: torch.Tensor, reverse: bool,
                     num_warps: int) -> torch.Tensor:
    """The state (forward) or decayed adjoint (backward, `carried` = dy) entering each segment:
    the pre-pass kernel's local maps chained by the carry kernel.  With one segment nothing enters
    but zeros, and the kernels ignore this argument, so `carried` stands in for it."""
    if plan["n_seg"] == 1:
        return carried
    x = args[0]
    b, _, _, d = x.shape
    n = plan["tiles"]["N"]
    f32 = dict(device=x.device, dtype=torch.float32)
    local = torch.empty(b * K_DIRECTIONS, plan["n_seg"], n, d, **f32)
    dsum = torch.empty(b * K_DIRECTIONS, plan["n_seg"], d, **f32)
    r = args[1].shape[-1] - 2 * n
    _segment_prepass_kernel[plan["grid"]](*args, carried, local, dsum, d, r, REVERSE=reverse,
                                          num_warps=num_warps, **plan["tiles"])
    return _carry_across_segments(local, dsum, args[2], reverse=reverse)


def _carry_across_segments(local: torch.Tensor, dsum: torch.Tensor, A_t: torch.Tensor,
                           reverse: bool) -> torch.Tensor:
    """The value entering each segment, from each segment's local map v_out = P v_in + local with
    P = exp(A * sum of delta): one small kernel, a sequential loop over the segments per element.

    local: (B*4, S, N, D); dsum: (B*4, S, D); A_t: (4, N, D).  Returns (B*4, S, N, D)."""
    bk, n_seg, n, d = local.shape
    entering = torch.empty_like(local)
    block = 256
    _carry_kernel[(bk, triton.cdiv(n * d, block))](local, dsum, A_t, entering, n * d, d, n_seg,
                                                   REVERSE=reverse, BLOCK=block)
    return entering


def _widened(t: torch.Tensor) -> torch.Tensor:
    """The fp32 contiguous tensor the kernels read (t itself when it already is one)."""
    return t.float().contiguous()


def _prepared(x, x_dbl, A_t, dtw_t, ds, bias, config: Sequence[int]) -> Tuple[tuple, dict]:
    """Both ops' start: the fp32 contiguous kernel inputs and the launch plan for their shapes."""
    args = tuple(_widened(t) for t in (x, x_dbl, A_t, dtw_t, ds, bias))
    b, h, w, d = x.shape
    return args, _launch_plan(b, h, w, d, A_t.shape[1], dtw_t.shape[1], _config_dict(config))


# The kernel launches as custom ops: torch.compile (train.compile) sees each as one opaque node with
# a known output shape instead of breaking its graph, so the work around them (the widening casts,
# the sums over directions and channel blocks, the cast back to x's dtype) is plain torch code that
# inductor can fuse with the neighbouring LayerNorm / gating and gradient ops.  The ops read fp32
# (they widen anything else, a no-op for fp32 contiguous inputs) and take the config as an int list
# (`_config_ints`); their outputs' shapes follow from the inputs' shapes and that list.

@torch.library.custom_op("ssl_mamba::ss2d_scan_fwd", mutates_args=())
def ss2d_scan_fwd(x: torch.Tensor, x_dbl: torch.Tensor, A_t: torch.Tensor, dtw_t: torch.Tensor,
                  ds: torch.Tensor, bias: torch.Tensor, config: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward kernels.  Returns y4, the four directions' outputs (B, H, W, 4, D) fp32 (bf16
    with narrow_buffers; with atomic_merge their fp32 sum, (B, H, W, D)), and hs, the fp32 state
    entering each chunk (B*4, chunks, N, D)."""
    args, plan = _prepared(x, x_dbl, A_t, dtw_t, ds, bias, config)
    x, n, d, r = args[0], A_t.shape[1], x.shape[-1], dtw_t.shape[1]
    h_in = _entering_values(plan, args, x, reverse=False, num_warps=plan["fwd_warps"])
    y, hs = _fwd_outputs(x, n, config, torch.zeros if plan["atomic"] else torch.empty)
    _ss2d_fwd_kernel[plan["grid"]](*args, h_in, y, hs, d, r, CHUNK=plan["chunk"], ATOMIC=plan["atomic"],
                                   num_warps=plan["fwd_warps"], **plan["tiles"])
    return y, hs


def _fwd_outputs(x: torch.Tensor, n: int, config: Sequence[int], alloc) -> Tuple[torch.Tensor, torch.Tensor]:
    """Empty y4 (or, with atomic_merge, y) and hs for ss2d_scan_fwd; shared by its fake, so the
    shapes the compiler plans with are the ones the kernels write."""
    cfg = _config_dict(config)
    b, h, w, d = x.shape
    f32 = dict(device=x.device, dtype=torch.float32)
    if cfg["atomic_merge"]:
        y = alloc(b, h, w, d, **f32)
    else:
        y = alloc(b, h, w, K_DIRECTIONS, d, device=x.device, dtype=_buffer_dtype(cfg))
    return y, torch.empty(b * K_DIRECTIONS, _cdiv(h * w, cfg["chunk"]), n, d, **f32)


def _buffer_dtype(cfg: dict) -> torch.dtype:
    """The dtype of the per-direction y / dx buffers and the d x_dbl partials (`narrow_buffers`)."""
    return torch.bfloat16 if cfg["narrow_buffers"] else torch.float32


@ss2d_scan_fwd.register_fake
def _(x, x_dbl, A_t, dtw_t, ds, bias, config):
    return _fwd_outputs(x, A_t.shape[1], config, torch.empty)


@torch.library.custom_op("ssl_mamba::ss2d_scan_bwd", mutates_args=())
def ss2d_scan_bwd(x: torch.Tensor, x_dbl: torch.Tensor, A_t: torch.Tensor, dtw_t: torch.Tensor,
                  ds: torch.Tensor, bias: torch.Tensor, hs: torch.Tensor, gy: torch.Tensor,
                  config: List[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor, torch.Tensor]:
    """The backward kernels, given the forward's inputs (x and x_dbl as the forward saved them, bf16
    or fp32), its hs and config, and gy (B, H, W, D).  Returns dx4 (B, H, W, 4, D) per direction
    (with atomic_merge their sum, (B, H, W, D)), dpart (channel blocks, B*H*W, 4, R+2N) (d x_dbl,
    one partial per backward channel block), and the gradients of A_t, dtw_t, ds and bias; all
    fp32 except dx4 and dpart with narrow_buffers (bf16)."""
    args, plan = _prepared(x, x_dbl, A_t, dtw_t, ds, bias, config)
    x, d, r = args[0], x.shape[-1], dtw_t.shape[1]
    b, h, w = x.shape[:3]
    items, tiles, atomic = plan["bwd_items"], plan["bwd_tiles"], plan["atomic"]
    n_items = items[0] * items[1] * items[2]
    persistent = plan["bwd_programs"] != 0
    programs = _backward_programs(n_items, x.device, plan["bwd_programs"]) if persistent else n_items
    gy = _widened(gy)
    q_in = _entering_values(plan, args, gy, reverse=True, num_warps=plan["bwd_warps"])
    dx, dpart, *dparams = _bwd_outputs(x, x_dbl, args[2:], config, torch.zeros if atomic else torch.empty)
    scratch = torch.empty(programs, plan["chunk"], tiles["BLOCK_N"], tiles["BLOCK_D"], device=x.device,
                          dtype=torch.float32)
    grid = (programs,) if persistent else items
    _ss2d_bwd_kernel[grid](*args, hs.contiguous(), gy, q_in, scratch, dx, dpart, *dparams, d, r, b * h * w,
                           items[0], CHUNK=plan["chunk"], ATOMIC=atomic, PERSISTENT=persistent,
                           **plan["bwd_options"], **tiles)
    return (dx, dpart, *dparams)


def _bwd_outputs(x: torch.Tensor, x_dbl: torch.Tensor, params: Sequence[torch.Tensor], config: Sequence[int],
                 alloc) -> tuple:
    """ss2d_scan_bwd's outputs before its kernels run (shared by its fake): dx4 (or, with
    atomic_merge, dx) from `alloc`, dpart empty (each element is written once), and the parameter
    gradients zeroed (the kernels add into them)."""
    cfg = _config_dict(config)
    b, h, w, d = x.shape
    f32 = dict(device=x.device, dtype=torch.float32)
    narrow = dict(device=x.device, dtype=_buffer_dtype(cfg))
    dx = alloc(b, h, w, d, **f32) if cfg["atomic_merge"] else alloc(b, h, w, K_DIRECTIONS, d, **narrow)
    blocks = _cdiv(d, cfg["bwd_block_d"] or cfg["block_d"])
    dpart = torch.empty(blocks, b * h * w, K_DIRECTIONS, x_dbl.shape[-1], **narrow)
    return (dx, dpart, *(torch.zeros(t.shape, **f32) for t in params))


@ss2d_scan_bwd.register_fake
def _(x, x_dbl, A_t, dtw_t, ds, bias, hs, gy, config):
    return _bwd_outputs(x, x_dbl, (A_t, dtw_t, ds, bias), config, torch.empty)


class _SS2DScanFn(torch.autograd.Function):
    """Cross-scan + dt projection + selective scan + merge over prepared inputs: the two custom ops
    and the traceable torch code around them.

    x: (B, H, W, D); x_dbl: (B, H, W, 4, R + 2N) = (dt_raw, B, C) per direction, both fp32 or bf16;
    A_t: (4, N, D) (-exp(A_logs), transposed); dtw_t: (4, R, D) (dt_projs_weight, transposed);
    ds, bias: (4D,), fp32.  bf16 x / x_dbl are widened to fp32 for the kernels in the forward and
    again in the backward: what is saved in between are the bf16 tensors themselves (x is kept by
    the x_dbl projection anyway), not fp32 copies, which at Mamba-UNet's first stage at batch 24
    saves ~80 MB per block.  The widening is exact, so the backward sees the forward's values.

    Why an autograd.Function and not `register_autograd` on ss2d_scan_fwd: the sum over the four
    directions must stay outside the op (for inductor to fuse it), but the backward kernel takes one
    gy for all four directions, which is the gradient of the sum, not of an arbitrary gradient of
    the per-direction y4 that an autograd formula on the op would have to accept.  Dynamo traces this
    Function's forward and backward (both are custom ops plus plain torch code), and AOTAutograd
    puts the backward's sums and casts into the compiled backward graph.
    """

    @staticmethod
    def forward(ctx, x_in, x_dbl_in, A_t, dtw_t, ds, bias):  # noqa: D401 - autograd signature
        config = _config_ints()  # read once: the backward launches with the same plan
        if x_in.dtype != torch.bfloat16:  # narrow buffers only where the result is bf16 anyway
            config[_PLAN_KEYS.index("narrow_buffers")] = 0
        y, hs = torch.ops.ssl_mamba.ss2d_scan_fwd(_widened(x_in), _widened(x_dbl_in), A_t, dtw_t, ds, bias,
                                                  config)
        ctx.save_for_backward(x_in, x_dbl_in, A_t, dtw_t, ds, bias, hs)
        ctx.config = config
        return y if y.dim() == 4 else y.sum(3, dtype=torch.float32)  # 4 dims: atomic_merge summed already

    @staticmethod
    def backward(ctx, gy):
        x_in, x_dbl_in, *params, hs = ctx.saved_tensors
        # x and x_dbl go in as saved (bf16 under autocast), widened inside the op: widened out here,
        # the compiled graph's partitioner would share the forward's fp32 copies and save those.
        dx, dpart, *dparams = torch.ops.ssl_mamba.ss2d_scan_bwd(x_in, x_dbl_in, *params, hs, _widened(gy),
                                                                ctx.config)
        dx = dx if dx.dim() == 4 else dx.sum(3, dtype=torch.float32)
        dx_dbl = (dpart.sum(0, dtype=torch.float32) if dpart.shape[0] > 1 else dpart[0]).view(x_dbl_in.shape)
        # the casts the autograd engine would add for bf16 inputs, here where inductor can fuse them
        return (dx.to(x_in.dtype), dx_dbl.to(x_dbl_in.dtype), *dparams)


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


def kernel_inputs(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                  dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor) -> tuple:
    """SS2D's arguments in the layouts the kernels read: (x, x_dbl, A_t, dtw_t, Ds, bias), the
    parameters fp32 and contiguous, x as given and x_dbl in the projection's dtype (`_SS2DScanFn`
    widens both); `_SS2DScanFn.apply(*kernel_inputs(...))` is the fused op (the benchmark times it
    alone this way).

    x_dbl = x @ x_proj (B, H, W, 4, R+2N: dt_raw, B, C) is one torch matmul (it follows autocast).
    The kernels compute in fp32 and read fp32 (bf16 inputs are widened in the Function: the per-step
    loads are pipelined with cp.async, which needs >= 4 bytes per lane).  The dt projection
    (R -> D per direction) runs inside the kernels.  Autograd maps the gradients back to the
    inputs' dtypes and layouts through the casts and transposes."""
    d, n = x.shape[3], A_logs.shape[1]
    x_dbl = torch.einsum("bhwd,kcd->bhwkc", x, x_proj_weight)
    A_t = (-torch.exp(A_logs.float())).view(K_DIRECTIONS, d, n).transpose(1, 2).contiguous()  # (4, N, D)
    dtw_t = dt_projs_weight.float().transpose(1, 2).contiguous()  # (4, R, D)
    return x, x_dbl, A_t, dtw_t, Ds.float(), dt_projs_bias.float().reshape(-1)


def ss2d_scan_triton(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                     dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor) -> torch.Tensor:
    """SS2D core (cross-scan, projections, selective scan, merge) with the fused Triton kernel.

    x: (B, H, W, D) channel-last (after the depthwise conv + SiLU), fp32 or bf16.
    Returns y: (B, H, W, D) in x's dtype, the plain sum of the four directions (before out_norm).
    Same semantics as `ssl_mamba.ops.ss2d_scan(..., backend="torch")`.
    """
    _check_runnable(x)
    _check_shapes(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    y = _SS2DScanFn.apply(*kernel_inputs(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds))
    return y.to(x.dtype)
