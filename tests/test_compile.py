"""train.compile's block compiler (models/compile.py): what it compiles, and that it changes nothing
but speed.  Runs dynamo with the `aot_eager` backend on the CPU (no inductor code generation, so
seconds instead of minutes); the inductor speed-up is measured on the GPU by bench_gpu.py."""
import pytest
import torch

from ssl_mamba.layers import PatchEmbed, PatchExpand, PatchMerging
from ssl_mamba.layers.patches import FinalPatchExpand
from ssl_mamba.layers.ss2d import VSSBlock
from ssl_mamba.models import create_model
from ssl_mamba.models.compile import compile_blocks, compile_units


def _tiny_mamba_unet(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("test_mamba_unet", num_classes=3, scan_backend="torch")


def test_compile_units_are_the_vss_blocks_and_patch_layers():
    net = _tiny_mamba_unet()
    units = compile_units(net)
    kinds = {type(m) for m in units}
    assert kinds == {VSSBlock, PatchEmbed, PatchMerging, PatchExpand, FinalPatchExpand}
    assert sum(isinstance(m, VSSBlock) for m in units) == sum(isinstance(m, VSSBlock) for m in net.modules())
    assert compile_units(create_model("test_unet", num_classes=3)) == []


def test_swin_unet_compiles_its_swin_blocks_and_trains_as_eager():
    from ssl_mamba.layers.swin import SwinBlock

    torch.manual_seed(0)
    eager = create_model("test_swin_unet", num_classes=3)
    compiled = create_model("test_swin_unet", num_classes=3)
    compiled.load_state_dict(eager.state_dict())
    units = compile_units(compiled)
    blocks = sum(isinstance(m, SwinBlock) for m in compiled.modules())
    assert blocks > 0 and sum(isinstance(m, SwinBlock) for m in units) == blocks
    torch._dynamo.reset()
    assert compile_blocks(compiled, backend="aot_eager") == len(units)
    x = torch.randn(2, 1, 64, 64)  # the test Swin-UNet takes exactly 64x64
    out_e, grads_e = _train_step(eager, x)
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    out_c, grads_c = _train_step(compiled, x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames_before  # it did compile
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def eager_and_compiled():
    eager, compiled = _tiny_mamba_unet(), _tiny_mamba_unet()
    compiled.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    n = compile_blocks(compiled, backend="aot_eager")
    return eager, compiled, n


def _train_step(net, x):
    net.train()
    net.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # DropPath draws
    out = net(x)
    out.square().mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}


def test_compiled_training_step_matches_eager_and_keeps_state_dict_names(eager_and_compiled):
    eager, compiled, n = eager_and_compiled
    assert n == len(compile_units(compiled)) > 0
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.randn(2, 1, 32, 32)
    out_e, grads_e = _train_step(eager, x)
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    out_c, grads_c = _train_step(compiled, x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames_before  # it did compile
    # the torch scan backend is not traced (only the triton one is, through its custom ops,
    # tests/test_triton_custom_op.py): each block breaks its graph there
    assert any("ss2d_scan" in reason or "compiler.disable" in reason
               for reason in torch._dynamo.utils.counters["graph_break"])
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_eval_mode_runs_the_eager_forward(eager_and_compiled):
    _, compiled, _ = eager_and_compiled
    compiled.eval()
    before = dict(torch._dynamo.utils.counters["stats"])
    with torch.no_grad():
        compiled(torch.randn(3, 1, 32, 32))  # a batch size never seen in training: no recompile either
    assert dict(torch._dynamo.utils.counters["stats"]) == before


def test_a_deep_copy_runs_its_own_weights(eager_and_compiled):
    """An EMA teacher is a deep copy of its student: it must not call back into the student."""
    import copy

    _, compiled, _ = eager_and_compiled
    teacher = copy.deepcopy(compiled)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(0.5)
    x = torch.randn(2, 1, 32, 32)
    reference = _tiny_mamba_unet()  # eager, with the teacher's weights
    reference.load_state_dict(teacher.state_dict())
    for mode in (True, False):
        outs = []
        for net in (compiled, teacher, reference):
            net.train(mode)
            torch.manual_seed(2)  # the same DropPath draws
            with torch.no_grad():
                outs.append(net(x))
        torch.testing.assert_close(outs[1], outs[2], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(outs[0], outs[1])


def test_eval_compile_matches_eager_and_goes_dynamic_after_the_second_batch_size():
    eager, compiled = _tiny_mamba_unet(), _tiny_mamba_unet()
    compiled.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    compile_blocks(compiled, backend="aot_eager", train=False, eval=True)
    eager.eval()
    compiled.eval()
    counts = []
    with torch.no_grad():
        for slices in (3, 5, 7, 9):  # validation volumes have different slice counts
            x = torch.randn(slices, 1, 32, 32)
            torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
            counts.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert counts[0] > 0 and counts[2] == counts[1] == counts[3]  # no compile per size after the second
    before = dict(torch._dynamo.utils.counters["stats"])
    compiled.train()
    compiled(torch.randn(2, 1, 32, 32))  # training calls were not asked for: eager
    assert dict(torch._dynamo.utils.counters["stats"]) == before


def test_compile_blocks_needs_a_mode():
    with pytest.raises(ValueError, match="nothing to compile"):
        compile_blocks(_tiny_mamba_unet(), train=False, eval=False)
