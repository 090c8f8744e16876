"""The fused Triton SS2D scan as torch.library custom ops (ssl_mamba::ss2d_scan_fwd / _bwd) under
torch.compile, on the CPU (TRITON_INTERPRET=1, in a fresh subprocess like tests/test_triton_ss2d.py).

What is checked: the ops pass torch.library.opcheck; a function calling `ss2d_scan_triton` compiles
with fullgraph=True (no graph break) under aot_eager and inductor, its output and six gradients
matching eager; the graph holds the two custom ops as opaque nodes; a config change recompiles; the
sums over the directions and channel blocks are aten ops outside them; and the compiled backward
keeps the bf16 x and x_dbl, not fp32 copies (the memory contract of `_SS2DScanFn`).  Shapes are
tiny: the interpreter runs every program in Python.
"""
import pytest

pytest.importorskip("triton")

from test_triton_ss2d import PRELUDE, run_check  # noqa: E402  (the shared subprocess harness)

SCRIPT = PRELUDE + '''
import time
from ssl_mamba.ops import triton_ss2d as ts
from ssl_mamba.ops.triton_ss2d import ss2d_scan_triton, set_block_config

# 6 steps in 2-step chunks and two segments (the pre-pass and carry kernels run), two channel blocks
# forward and backward (so dpart has two partials, summed outside the op).
set_block_config(block_d=4, chunk=2, stages=1, atomic_merge=False, segments=2, vector_steps=2,
                 bwd_block_d=4, bwd_programs=0)
b, h, w, d, n, r = 1, 2, 3, 8, 2, 1
g = torch.Generator().manual_seed(0)
INS = [torch.randn(b, h, w, d, generator=g), torch.randn(4, r + 2 * n, d, generator=g) / d ** 0.5,
       torch.randn(4, d, r, generator=g) / r ** 0.5, torch.randn(4, d, generator=g) - 3,
       0.1 * torch.randn(4 * d, n, generator=g), torch.randn(4 * d, generator=g)]
GY = torch.randn(b, h, w, d, generator=g)
out = {"seconds": {}}

def f(x, *params):
    # glue for inductor to fuse with the sum and the cast; one that saves nothing, so the saved-set
    # check below sees only the scan's tensors (a LayerNorm under autocast would save an fp32 y,
    # of x's size)
    return ss2d_scan_triton(x, *params) * 2 - 1

def run(fn, bf16):
    """Output and the six gradients; bf16: x in bf16 under autocast (x_dbl then bf16 too), with
    the saved tensors' (dtype, numel) recorded."""
    ins = [t.clone().requires_grad_() for t in INS]
    if bf16:
        ins[0] = INS[0].bfloat16().requires_grad_()
    saved = []
    hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((str(t.dtype), t.numel())) or t,
                                                     lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = fn(*ins)
    return [y, *torch.autograd.grad(y, ins, GY.to(y.dtype))], saved

def worst(a, b):
    return max(((u.double() - v.double()).norm() / v.double().norm()).item() for u, v in zip(a, b))

EAGER = {bf16: run(f, bf16) for bf16 in (False, True)}

# opcheck: schema, fake tensors against the real outputs, AOT dispatch with dynamic shapes.  No
# autograd formula is registered on the ops (it lives in _SS2DScanFn, around them), so the inputs
# do not require grad and the autograd-registration check only checks that nothing claims one.
t0 = time.time()
kin = [t.detach().contiguous() for t in ts.kernel_inputs(*INS)]
cfg = ts._config_ints()
checks = torch.library.opcheck(torch.ops.ssl_mamba.ss2d_scan_fwd.default, (*kin, cfg))
y4, hs = torch.ops.ssl_mamba.ss2d_scan_fwd(*kin, cfg)
checks_bwd = torch.library.opcheck(torch.ops.ssl_mamba.ss2d_scan_bwd.default, (*kin, hs, GY, cfg))
out["opcheck"] = {"fwd": checks, "bwd": checks_bwd, "y4": list(y4.shape), "hs": list(hs.shape)}
out["seconds"]["opcheck"] = time.time() - t0

# What torch.compile captures: one graph, no break; the two custom ops as opaque nodes in the
# forward and backward graphs AOTAutograd makes (the backward's from the traced _SS2DScanFn), no raw
# triton kernel launch (dynamo can trace those too), and the sums over the directions (forward, and
# backward's dx) and over the channel blocks (backward's d x_dbl) outside the ops, as aten ops.
from torch._dynamo.backends.common import aot_autograd
graphs = {"fwd": [], "bwd": []}
def recorder(kind):
    def compiler(gm, example_inputs):
        graphs[kind].append(gm.print_readable(print_output=False))
        return gm
    return compiler
torch._dynamo.reset()
backend = aot_autograd(fw_compiler=recorder("fwd"), bw_compiler=recorder("bwd"))
ins = [t.clone().requires_grad_() for t in INS]
torch.compile(f, backend=backend, fullgraph=True)(*ins).backward(GY)
fwd, bwd = ("\\n".join(graphs[k]) for k in ("fwd", "bwd"))
out["graph"] = {"graphs": len(graphs["fwd"]), "fwd_op": "ssl_mamba.ss2d_scan_fwd" in fwd,
                "bwd_op": "ssl_mamba.ss2d_scan_bwd" in bwd, "raw_triton": "triton_kernel" in fwd + bwd,
                "fwd_sums": fwd.count("aten.sum."), "bwd_sums": bwd.count("aten.sum."),
                "breaks": torch._dynamo.explain(f)(*INS).graph_break_count}

for backend in ("aot_eager", "inductor"):
    for bf16 in (False, True):
        t0 = time.time()
        torch._dynamo.reset()
        compiled = torch.compile(f, backend=backend, fullgraph=True)
        values, saved = run(compiled, bf16)
        out[f"{backend}_{'bf16' if bf16 else 'fp32'}"] = {"err": worst(values, EAGER[bf16][0]), "saved": saved}
        out["seconds"][f"{backend}_{bf16}"] = time.time() - t0
        if backend == "aot_eager" and not bf16:
            # the config is part of the graph (guarded): a change recompiles, here to the other
            # merge mode, whose y has no direction axis to sum
            set_block_config(atomic_merge=True)
            out["atomic_err"] = worst(run(compiled, False)[0], run(f, False)[0])
            set_block_config(atomic_merge=False)

# eval.compile makes the batch dimension dynamic: the fake implementations then see a symbolic
# batch, and one compiled graph serves validation batches of several sizes
torch._dynamo.reset()
dyn = torch.compile(f, backend="aot_eager", dynamic=True, fullgraph=True)
errs = []
for batch in (1, 3):
    xv = torch.randn(batch, h, w, d, generator=g)
    with torch.no_grad():
        errs.append(worst([dyn(xv, *INS[1:])], [f(xv, *INS[1:])]))
out["dynamic_err"] = max(errs)

# train.compile's unit, a VSS block (LayerNorm, in_proj, the recomputed conv and gate, the scan),
# compiles as one graph on the triton backend and trains like eager
from ssl_mamba.layers.ss2d import VSSBlock
torch.manual_seed(0)
block, xb = VSSBlock(8, scan_backend="triton").train(), torch.randn(1, 2, 3, 8)
grads = []
for fn in (VSSBlock.forward, torch.compile(VSSBlock.forward, backend="aot_eager", fullgraph=True)):
    block.zero_grad()
    y = fn(block, xb)
    y.square().sum().backward()
    grads.append([y.detach()] + [p.grad.clone() for p in block.parameters()])
out["vss_block_err"] = worst(grads[1], grads[0])
out["sizes"] = {"x": INS[0].numel(), "x_dbl": b * h * w * 4 * (r + 2 * n)}
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_check(SCRIPT, tmp_path_factory.mktemp("custom_op"))


def test_opcheck_passes_for_both_ops(results):
    ops = results["opcheck"]
    for name in ("fwd", "bwd"):
        assert set(ops[name].values()) == {"SUCCESS"}, (name, ops[name])
    assert ops["y4"] == [1, 2, 3, 4, 8] and ops["hs"] == [4, 3, 2, 8]  # 4 directions; 3 chunks of 2 steps


def test_dynamo_sees_the_custom_ops_and_no_graph_break(results):
    graph = results["graph"]
    assert graph["breaks"] == 0 and graph["graphs"] == 1, graph
    assert graph["fwd_op"] and graph["bwd_op"], graph  # opaque nodes, not traced through
    assert not graph["raw_triton"], graph
    assert graph["fwd_sums"] == 1 and graph["bwd_sums"] == 2, graph  # y4, and dx4 and dpart: outside the ops


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-5), ("bf16", 1e-2)])
def test_compiled_output_and_six_gradients_match_eager(results, backend, dtype, tol):
    err = results[f"{backend}_{dtype}"]["err"]
    assert err <= tol, (backend, dtype, err)


def test_a_config_change_recompiles_with_the_new_plan(results):
    assert results["atomic_err"] <= 1e-5


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_bf16_backward_keeps_no_fp32_copy_of_x_or_x_dbl(results, backend):
    saved = [tuple(entry) for entry in results[f"{backend}_bf16"]["saved"]]
    for name, numel in results["sizes"].items():
        assert ("torch.bfloat16", numel) in saved, (name, saved)
        assert ("torch.float32", numel) not in saved, (name, saved)


def test_a_vss_block_compiles_as_one_graph_and_matches_eager(results):
    assert results["vss_block_err"] <= 1e-5


def test_a_dynamic_batch_compiles_through_the_custom_ops(results):
    """eval.compile's dynamic batch: one graph for validation batches of 1 and 3 slices, as eager."""
    assert results["dynamic_err"] <= 1e-5
