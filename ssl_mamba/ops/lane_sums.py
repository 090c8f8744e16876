"""Sums over a warp's lanes of many values at once, as a reduce-scatter (inline PTX for Triton).

The SS2D backward needs, at every step, sums over the channels of a (values, channels) tile whose
channels lie across the 32 lanes of a warp and whose values (dB and dC for each state, or the dt
projection's R rows) lie inside each thread.  `tl.sum` over the lanes lowers to one 5-round
butterfly per value: 32 values cost 160 shuffles and 160 adds per thread.  A reduce-scatter does the
same work in 16 + 8 + 4 + 2 + 1 = 31 shuffles: in each round every lane sends the half of its
remaining values that its partner keeps, and adds the partner's copy of the half it keeps.  After
the rounds, lane l holds the full sum of value number (l >> (5 - log2(values))), so every value's
sum ends up in one lane (or a group of 2**k lanes when there are fewer than 32 values).

`reduce_scatter_ptx(values_per_arg, n_args)` builds the PTX for `tl.inline_asm_elementwise` with
`pack=values_per_arg`: each asm instance receives one thread's `values_per_arg` elements of each
argument (its register order, which for a (values, 32) tile with the values inside each thread is
the value index) and returns the lane's sum in its first output slot.  Triton's CPU interpreter
cannot run PTX, so the kernels keep the `tl.sum` form for the interpreter and for tiles that do
not have this layout; `simulate_ptx` executes the generated text on 32 simulated lanes so that the
CPU tests check the exact assembly the GPU runs.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

LANES = 32


def _rounds(n_values: int) -> List[int]:
    """The butterfly distances, largest first: 16, 8, 4, 2, 1."""
    return [LANES >> (i + 1) for i in range(LANES.bit_length() - 1)]


def value_of_lane_shift(n_values: int) -> int:
    """Lane l ends up with the sum of value number l >> shift."""
    if n_values < 1 or n_values > LANES or n_values & (n_values - 1):
        raise ValueError(f"lane sums need a power of two between 1 and {LANES} values, got {n_values}")
    return (LANES.bit_length() - 1) - (n_values.bit_length() - 1)


def reduce_scatter_ptx(values_per_arg: int, n_args: int) -> str:
    """PTX for `tl.inline_asm_elementwise(..., pack=values_per_arg)` with one fp32 output and
    `n_args` fp32 arguments; the values are numbered argument by argument."""
    n_values = values_per_arg * n_args
    value_of_lane_shift(n_values)  # validates the count
    # Register names carry an rs_ prefix so they cannot collide with the kernel's own (%r<n>, %p<n>, ...).
    lines = ["{", ".reg .pred %rs_p;", ".reg .b32 %rs_lane, %rs_bit;",
             f".reg .f32 %rs_v<{n_values}>, %rs_s, %rs_k, %rs_r;", "mov.u32 %rs_lane, %laneid;"]
    lines += [f"mov.b32 %rs_v{i}, ${values_per_arg + i};" for i in range(n_values)]
    count = n_values
    for dist in _rounds(n_values):
        if count > 1:
            half = count // 2
            # Lanes with this bit set keep the upper half and send the lower one; the others the reverse.
            lines += [f"and.b32 %rs_bit, %rs_lane, {dist};", "setp.ne.u32 %rs_p, %rs_bit, 0;"]
            for i in range(half):
                lo, hi = f"%rs_v{i}", f"%rs_v{i + half}"
                lines += [f"selp.f32 %rs_s, {lo}, {hi}, %rs_p;", f"selp.f32 %rs_k, {hi}, {lo}, %rs_p;",
                          f"shfl.sync.bfly.b32 %rs_r, %rs_s, {dist}, 31, 0xffffffff;",
                          f"add.f32 {lo}, %rs_k, %rs_r;"]
            count = half
        else:  # one value left: a plain butterfly, every lane of the group gets the sum
            lines += [f"shfl.sync.bfly.b32 %rs_r, %rs_v0, {dist}, 31, 0xffffffff;",
                      "add.f32 %rs_v0, %rs_v0, %rs_r;"]
    lines.append("mov.b32 $0, %rs_v0;")
    lines += [f"mov.b32 ${i}, 0f00000000;" for i in range(1, values_per_arg)]
    lines.append("}")
    return "\n".join(lines)


def constraints(values_per_arg: int, n_args: int) -> str:
    """The constraint string matching `reduce_scatter_ptx`: fp32 registers in and out."""
    return ",".join(["=f"] * values_per_arg + ["f"] * (values_per_arg * n_args))


def simulate_ptx(ptx: str, inputs: np.ndarray) -> np.ndarray:
    """Execute the PTX subset `reduce_scatter_ptx` emits on 32 lanes.

    inputs: (32 lanes, n_operands) fp32, operand j is $(n_outputs + j).  Returns (32, n_outputs)."""
    body = [ln.strip().rstrip(";") for ln in ptx.splitlines()]
    body = [ln for ln in body if ln and ln not in "{}" and not ln.startswith(".reg")]
    n_out = max(int(ln.split("$")[1].split(",")[0]) for ln in body if ln.startswith("mov.b32 $")) + 1
    regs: List[Dict[str, float]] = [dict() for _ in range(LANES)]
    out = np.zeros((LANES, n_out), dtype=np.float32)
    for line in body:
        op, args = line.split(None, 1)
        a = [t.strip() for t in args.split(",")]
        if op == "shfl.sync.bfly.b32":
            dist = int(a[2])
            sent = [regs[lane][a[1]] for lane in range(LANES)]
            for lane in range(LANES):
                regs[lane][a[0]] = sent[lane ^ dist]
            continue
        for lane in range(LANES):
            r = regs[lane]

            def val(tok: str):
                if tok == "%laneid":
                    return lane
                if tok.startswith("$"):
                    return np.float32(inputs[lane, int(tok[1:]) - n_out])
                if tok.startswith("0f"):
                    return np.float32(0.0)
                return r[tok] if tok.startswith("%") else int(tok, 0)

            if op in ("mov.u32", "mov.b32"):
                if a[0].startswith("$"):
                    out[lane, int(a[0][1:])] = val(a[1])
                else:
                    r[a[0]] = val(a[1])
            elif op == "and.b32":
                r[a[0]] = val(a[1]) & val(a[2])
            elif op == "setp.ne.u32":
                r[a[0]] = val(a[1]) != val(a[2])
            elif op == "selp.f32":
                r[a[0]] = val(a[1]) if val(a[3]) else val(a[2])
            elif op == "add.f32":
                r[a[0]] = np.float32(val(a[1]) + val(a[2]))
            else:
                raise ValueError(f"simulate_ptx: unsupported instruction {line!r}")
    return out
