"""eval.cuda_graphs: EvalGraphs runs the plain forward where graphs do not apply, and on a GPU
replays per-shape graphs that agree with the plain forward and see weight updates."""
import pytest
import torch

from ssl_mamba.metrics import predict_volume
from ssl_mamba.metrics.graphs import EvalGraphs
from ssl_mamba.models import create_model


def _net(device="cpu"):
    torch.manual_seed(0)
    return create_model("test_unet", num_classes=4).to(device).eval()


def test_on_cpu_the_plain_forward_runs_and_predictions_are_unchanged():
    net = _net()
    graphs = EvalGraphs(net)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(graphs(x), net(x))  # CPU: nothing to capture
    assert graphs.graphs == {}
    volume = torch.rand(5, 40, 36).numpy()
    assert (predict_volume(net, volume, (32, 32), graphs=graphs) == predict_volume(net, volume, (32, 32))).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_replays_match_the_plain_forward_per_shape_and_follow_weight_updates():
    net = _net("cuda")
    graphs = EvalGraphs(net, max_shapes=2)
    xs = [torch.randn(n, 1, 32, 32, device="cuda") for n in (3, 5, 3, 7)]
    with torch.no_grad():
        for x in xs:  # 3 and 5 are captured, 7 is past max_shapes and runs plain
            assert torch.allclose(graphs(x), net(x), rtol=1e-5, atol=1e-5)
        assert sorted(k[0][0] for k in graphs.graphs) == [3, 5]
        for p in net.parameters():
            p.mul_(0.5)  # in-place, as an optimizer step: the replay reads the new weights
        assert torch.allclose(graphs(xs[0]), net(xs[0]), rtol=1e-5, atol=1e-5)
        graphs = EvalGraphs(net)
        for scale in (1.0, 0.5):  # under autocast the graph casts the current weights at each replay
            for p in net.parameters():
                p.mul_(scale)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                assert torch.allclose(graphs(xs[1]).float(), net(xs[1]).float(), rtol=2e-2, atol=2e-2)
