"""A training step queues its GPU work without waiting for the GPU.

Each value read back to the host mid-step (a `.item()`, an `int()` of a tensor, a small CPU tensor
copied up without `non_blocking`) makes the host wait for everything queued so far, and the GPU then
idles while the host queues the rest.  The 30k UNet rows lost ~14 ms of a 34 ms iteration that way
(benchmarks/NOTES-gpu.md, ninth session).  Under `torch.cuda.set_sync_debug_mode("error")` any such
sync raises, so these tests name the method that brings one back.  The trainer's read-back of each
iteration's losses is deferred (step.py): the last test checks that a whole deferred iteration, optimizer
step included, does not wait either.  GPU only.
"""
import contextlib
import math

import pytest
import torch

from ssl_mamba.engine.step import finish_readback, run_iteration
from ssl_mamba.losses.supervised import supervised_loss
from test_methods import build, make_batch  # noqa: E402  (the tiny methods and batches of the method tests)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="device syncs exist only on a GPU")

UNET_ROWS = [("supervised", ["test_unet"]), ("mean_teacher", ["test_unet"]), ("uamt", ["test_unet"]),
             ("ict", ["test_unet"]), ("entropy_min", ["test_unet"]), ("co_training", ["test_unet"]),
             ("cps", ["test_unet", "test_unet"])]


class no_device_syncs:
    """Raise on any device-to-host synchronisation inside the block."""

    def __enter__(self):
        torch.cuda.synchronize()  # what was queued before the block may finish however it likes
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        return False


def test_supervised_loss_does_not_sync():
    logits = torch.randn(4, 4, 32, 32, device="cuda", requires_grad=True)
    label = torch.randint(0, 4, (4, 32, 32), device="cuda")
    with no_device_syncs():
        loss = supervised_loss(logits, label, 4)
        loss.backward()
    assert torch.isfinite(loss.detach()).item()


@pytest.mark.parametrize("method, nets", UNET_ROWS, ids=[m for m, _ in UNET_ROWS])
def test_training_step_and_backward_do_not_sync(method, nets):
    m = build(method, nets)
    m.to(torch.device("cuda"))
    batch = make_batch().to("cuda")
    for step in range(2):  # step 0 warms up (cuDNN's algorithm choice, lazy inits); step 1 is checked
        with no_device_syncs() if step else contextlib.nullcontext():
            out = m.training_step(batch, step)
            losses = [loss() if callable(loss) else loss for loss in out.losses.values()]
            sum(losses).backward()
            m.after_step(step)


def test_a_deferred_iteration_does_not_sync():
    m = build("mean_teacher", ["test_unet"])
    device = torch.device("cuda")
    m.to(device)
    optimizers = [torch.optim.SGD(g.params, lr=0.01, momentum=0.9) for g in m.optimizer_groups()]
    batch = make_batch().to("cuda")
    finish_readback(run_iteration(m, optimizers, batch, 0, device, defer=True))  # warm-up, momentum buffers
    with no_device_syncs():
        result = run_iteration(m, optimizers, batch, 1, device, defer=True)
    finish_readback(result)
    assert math.isfinite(result.losses["seg"]) and isinstance(result.logs["loss/sup"], float)
