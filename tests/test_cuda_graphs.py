"""train.cuda_graphs: the call guard (CPU), the CPU refusal, and on a GPU a graphed step equal to an eager one."""
import copy

import pytest
import torch

from ssl_mamba.engine.cuda_graphs import CallGuard, GraphedNetworks, graph_method
from ssl_mamba.engine.step import autocast_context
from ssl_mamba.errors import ConfigError
from ssl_mamba.models import create_model


def test_guard_allows_one_call_per_iteration_and_names_the_network():
    guard = CallGuard("net2", (4, 1, 32, 32), torch.float32)
    x = torch.zeros(4, 1, 32, 32)
    guard.check(x)
    with pytest.raises(ConfigError, match="'net2' is called 2 times"):
        guard.check(x)
    guard.calls = 0  # what GraphedNetworks.new_iteration does
    guard.check(x)


@pytest.mark.parametrize("bad", [torch.zeros(2, 1, 32, 32), torch.zeros(4, 1, 32, 32, dtype=torch.float64)])
def test_guard_rejects_another_shape_or_dtype(bad):
    guard = CallGuard("net1", (4, 1, 32, 32), torch.float32)
    with pytest.raises(ConfigError, match=r"captured for one torch.float32 input of shape \[4, 1, 32, 32\]"):
        guard.check(bad)


def test_capture_refuses_a_cpu_batch():
    net = create_model("unet", num_classes=4)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        GraphedNetworks({"net1": net}, torch.zeros(2, 1, 32, 32), lambda: autocast_context(torch.device("cpu"), "none"))


@pytest.fixture
def full_fp32():
    """TF32 off: the graphed and eager nets may get different convolution algorithms, which in TF32
    differ by ~1e-3 after a few SGD steps; in fp32 they agree to ~1e-6."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    cudnn.deterministic = True
    yield
    cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic = saved


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _without_dropout(net):
    for module in net.modules():  # two nets would draw different masks; compare without them
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
    return net


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_training_steps_match_eager_steps(full_fp32):
    torch.manual_seed(0)
    eager = _without_dropout(create_model("unet", num_classes=4)).cuda().train()
    graphed = copy.deepcopy(eager)
    initial = copy.deepcopy(eager.state_dict())
    x = torch.randn(4, 1, 64, 64, device="cuda")
    label = torch.randint(0, 4, (4, 64, 64), device="cuda")
    graphs = GraphedNetworks({"net1": graphed}, x, lambda: autocast_context(torch.device("cuda"), "none", cache=False))
    opts = [torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9) for n in (eager, graphed)]
    for _ in range(3):
        graphs.new_iteration()
        for net, opt in zip((eager, graphed), opts):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), label).backward()
            opt.step()
    moved = _rel(initial["decoder.out_conv.weight"], eager.decoder.out_conv.weight)
    assert moved > 1e-3  # the steps changed the weights, so a graph replaying stale ones would show
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values()):
        if a.is_floating_point():  # weights and BatchNorm statistics alike in both nets
            # relative 1e-4, or 1e-6 absolute for tensors of noise-sized values (~1e-5, e.g. BatchNorm
            # means of centred features), where cuDNN's summation order alone moves the ratio to ~1e-3
            close = _rel(b, a) <= 1e-4 or float((b - a).abs().max()) <= 1e-6
            assert close, (name, _rel(b, a), float((b - a).abs().max()))
        else:
            assert torch.equal(a, b), name  # num_batches_tracked: the capture's passes were undone
    with pytest.raises(ConfigError, match="called 2 times"):
        graphed(x)  # second call in the same iteration
    graphed.eval()
    with torch.no_grad():
        assert graphed(x[:1]).shape == (1, 4, 64, 64)  # eval mode: plain forward, any shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_dropout_draws_a_new_mask_at_every_replay():
    """The UNet rows train with train.cuda_graphs and the UNet has dropout: a replay must draw fresh
    masks (a graph that froze the capture's mask would regularise nothing), at the layer's rate."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 1), torch.nn.Dropout(p=0.5)).cuda().train()
    x = torch.ones(4, 1, 16, 16, device="cuda")
    graphs = GraphedNetworks({"net1": net}, x, lambda: autocast_context(torch.device("cuda"), "none", cache=False))
    masks = []
    for _ in range(3):
        graphs.new_iteration()
        out = net(x)
        out.sum().backward()
        masks.append(out.detach() != 0)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    for mask in masks:
        assert 0.4 < mask.float().mean().item() < 0.6  # p = 0.5 of the activations dropped


def _record_calls(m):
    """Wrap every student and no-grad network so each call records (name, shape, grad enabled)."""
    calls = []
    for name, net in {**m.students(), **m.no_grad_networks()}.items():
        def recording(x, *rest, _name=name, _forward=net.forward):
            calls.append((_name, tuple(x.shape), torch.is_grad_enabled()))
            return _forward(x, *rest)
        net.forward = recording
    return calls


METHODS_WITH_NETS = ["supervised", "mean_teacher", "uamt", "ict", "entropy_min", "adversarial", "co_training",
                     "cps", "cross_teaching"]


@pytest.mark.parametrize("method", METHODS_WITH_NETS)
def test_students_run_once_on_the_graph_input_and_teachers_without_gradients(method):
    """The contract train.cuda_graphs relies on, per method that declares itself `graphable`: each student
    is called once per step, with a tensor shaped like `graph_input(batch)` (what the capture records), and
    the no-grad networks (teachers, replayed per shape) only with gradients off; a method that is not
    graphable (co_training) indeed breaks it.  ICT's student sees the labeled rows plus one mix per
    unlabeled pair (fewer rows than the batch): capturing the whole batch had failed on the card."""
    from test_methods import DISC_SIZE, SIZE, build, make_batch

    nets = ["test_unet", "test_unet"] if method in ("cps", "cross_teaching") else ["test_unet"]
    options = {"discriminator": "test_discriminator"} if method == "adversarial" else None
    m = build(method, nets, options, batch_size=6, labeled=2)
    batch = make_batch(size=6, labeled=2, spatial=DISC_SIZE if method == "adversarial" else SIZE)
    calls = _record_calls(m)
    m.training_step(batch, 0)
    expected = tuple(m.graph_input(batch).shape)
    once = all([shape for n, shape, _ in calls if n == name] == [expected] for name in m.students())
    assert once == m.graphable, calls
    teacher_calls = [(n, grad) for n, _, grad in calls if n in m.no_grad_networks()]
    assert all(not grad for _, grad in teacher_calls)
    assert bool(teacher_calls) == (method in ("mean_teacher", "uamt", "ict"))


def test_teacher_replay_falls_back_to_the_plain_forward_off_the_gpu_or_with_gradients():
    from ssl_mamba.engine.cuda_graphs import _replay_forward

    torch.manual_seed(0)
    net = create_model("test_unet", num_classes=4).train()
    x = torch.randn(2, 1, 32, 32)
    torch.manual_seed(1)
    expected = net(x)  # train mode: BatchNorm statistics move, dropout draws masks
    torch.manual_seed(1)
    graphs = _replay_forward(net)
    with torch.no_grad():
        assert torch.equal(net(x), expected.detach())  # CPU: the original forward, not a recursion
    assert net(x).requires_grad and graphs.graphs == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_teacher_replays_match_the_plain_forward_in_either_mode(full_fp32):
    """Per shape and mode a replay equals the plain forward, moves a train-mode teacher's BatchNorm
    statistics as the plain forward does (the capture's warm-up passes undone), and reads weights
    updated in place (the EMA update)."""
    from ssl_mamba.engine.cuda_graphs import _replay_forward

    torch.manual_seed(0)
    eager = _without_dropout(create_model("unet", num_classes=4)).cuda()
    graphed = copy.deepcopy(eager)
    graphs = _replay_forward(graphed)
    with torch.no_grad():
        for mode in (True, False, True):
            eager.train(mode), graphed.train(mode)
            for rows in (3, 6, 3):  # UAMT runs its teacher on U and 2U rows
                x = torch.randn(rows, 1, 64, 64, device="cuda")
                assert _rel(graphed(x), eager(x)) <= 1e-5, (mode, rows)
            for a, b in zip(eager.parameters(), graphed.parameters()):
                a.mul_(0.9), b.mul_(0.9)
        assert len(graphs.graphs) == 4  # (3 rows, 6 rows) x (train, eval)
        for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values()):
            if a.is_floating_point():
                assert _rel(b, a) <= 1e-4 or float((b - a).abs().max()) <= 1e-6, name
            else:
                assert torch.equal(a, b), name  # num_batches_tracked: one per plain or replayed call
        x = torch.randn(3, 1, 64, 64, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert _rel(graphed(x).float(), eager(x).float()) <= 2e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("method", ["mean_teacher", "uamt", "ict"])
def test_teacher_method_iterations_with_graphs_match_eager_ones(full_fp32, method):
    """Whole iterations (student graphed for `graph_input`, teacher replayed per shape, EMA update)
    end with the same student and teacher as eager iterations from the same seed."""
    from ssl_mamba.engine.step import finish_readback, run_iteration
    from test_methods import build, make_batch

    device = torch.device("cuda")
    runs = []
    for use_graphs in (False, True):
        m = build(method, ["unet"], batch_size=6, labeled=2)
        for net in m.modules.values():
            _without_dropout(net)
        m.to(device)
        optimizers = [torch.optim.SGD(g.params, lr=0.01, momentum=0.9) for g in m.optimizer_groups()]
        batch = make_batch(size=6, labeled=2, spatial=64).to("cuda")
        graphs = None
        if use_graphs:
            graphs = graph_method(m, batch, lambda: autocast_context(device, "none", cache=False))
        torch.manual_seed(1)  # the same noise draws in both runs
        for step in range(3):
            finish_readback(run_iteration(m, optimizers, batch, step, device, graphs=graphs))
        runs.append(m.state_dict())
    for (name, a), b in zip(runs[0].items(), runs[1].values()):
        if a.is_floating_point():
            assert _rel(b, a) <= 1e-4 or float((b - a).abs().max()) <= 1e-6, name
        else:
            assert torch.equal(a, b), name
