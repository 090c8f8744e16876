"""Losses, ramps and the EMA teacher against hand-computed values and the original formulas."""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ssl_mamba.engine.ema import ema_alpha, ema_update, make_teacher
from ssl_mamba.errors import UserError
from ssl_mamba.losses import (
    DiceLoss,
    consistency_weight,
    entropy_map,
    normalized_entropy,
    pixel_projector_consistency,
    pooled_logit_consistency,
    sigmoid_rampup,
    softmax_mse,
    supervised_loss,
)


def two_pixel_probs() -> torch.Tensor:
    # one image, 1x2 pixels, K=2: pixel 0 = (0.8, 0.2), pixel 1 = (0.3, 0.7); shape (1, 2, 1, 2)
    return torch.tensor([[[[0.8, 0.3]], [[0.2, 0.7]]]])


def test_dice_hand_value_two_classes():
    target = torch.tensor([[[0, 1]]])  # (1, 1, 2)
    # class 0: t = (1, 0): sum pt = 0.8, sum p^2 = 0.64 + 0.09, sum t^2 = 1
    # class 1: t = (0, 1): sum pt = 0.7, sum p^2 = 0.04 + 0.49, sum t^2 = 1
    c0 = 1 - (1.6 + 1e-5) / (1.73 + 1e-5)
    c1 = 1 - (1.4 + 1e-5) / (1.53 + 1e-5)
    got = DiceLoss(2)(two_pixel_probs(), target)
    assert got.item() == pytest.approx((c0 + c1) / 2, rel=1e-6)
    assert got.item() == pytest.approx(0.0800554, abs=1e-6)  # (0.0751441 + 0.0849667) / 2


def test_dice_sums_over_the_whole_batch_not_per_image():
    # image A is all class 1 predicted perfectly, image B all class 0 predicted perfectly
    probs = torch.zeros(2, 2, 1, 2)
    probs[0, 1] = 1.0
    probs[1, 0] = 1.0
    target = torch.tensor([[[1, 1]], [[0, 0]]])
    assert DiceLoss(2)(probs, target).item() == pytest.approx(0.0, abs=1e-6)
    # move one pixel of image A to class 0: batch-wide sums give class 1: sum pt = 1, sum p^2 = 1,
    # sum t^2 = 2; class 0: sum pt = 2, sum p^2 = 3, sum t^2 = 2.  (Per-image averaging would differ.)
    probs[0, 1, 0, 1], probs[0, 0, 0, 1] = 0.0, 1.0
    c1 = 1 - (2 * 1 + 1e-5) / (1 + 2 + 1e-5)
    c0 = 1 - (2 * 2 + 1e-5) / (3 + 2 + 1e-5)
    assert DiceLoss(2)(probs, target).item() == pytest.approx((c0 + c1) / 2, rel=1e-6)


def test_dice_counts_background_and_absent_classes_score_zero_loss():
    # K=4, only background present and predicted perfectly: every class (absent ones: 1 - e/e) is 0
    probs = torch.zeros(1, 4, 2, 2)
    probs[:, 0] = 1.0
    assert DiceLoss(4)(probs, torch.zeros(1, 2, 2, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-6)
    # a wrong prediction on background alone raises the mean by the background term / K
    probs_bad = torch.zeros(1, 4, 2, 2)
    probs_bad[:, 1] = 1.0
    loss = DiceLoss(4)(probs_bad, torch.zeros(1, 2, 2, dtype=torch.long)).item()
    bg = 1 - 1e-5 / (4 + 1e-5)
    cls1 = 1 - 1e-5 / (4 + 1e-5)
    assert loss == pytest.approx((bg + cls1) / 4, rel=1e-6)


def test_dice_accepts_softmax_flag_and_channel_dim_labels():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    a = DiceLoss(3)(logits, target, softmax=True)
    b = DiceLoss(3)(torch.softmax(logits, 1), target.unsqueeze(1))
    assert torch.allclose(a, b)


def test_dice_rejects_bad_shapes_and_labels():
    with pytest.raises(UserError, match="label values"):
        DiceLoss(2)(two_pixel_probs(), torch.tensor([[[0, 2]]]))
    with pytest.raises(UserError, match="predictions must be"):
        DiceLoss(3)(two_pixel_probs(), torch.tensor([[[0, 1]]]))


def test_supervised_loss_is_half_ce_plus_dice():
    logits = torch.zeros(1, 4, 2, 2)  # uniform softmax 1/4 over 4 pixels
    label = torch.tensor([[[0, 1], [1, 3]]])
    ce = math.log(4)
    # per class c with n_c pixels: 1 - (2 n_c/4 + e) / (4/16 + n_c + e)
    counts = [1, 2, 0, 1]
    dice = sum(1 - (2 * n / 4 + 1e-5) / (4 / 16 + n + 1e-5) for n in counts) / 4
    assert supervised_loss(logits, label, 4).item() == pytest.approx(0.5 * (ce + dice), rel=1e-6)


@pytest.mark.parametrize(
    "step, expected",
    [(0, 6.7379e-4), (1000, 9.054e-4), (7500, 6.005e-3), (15000, 0.0286505), (22500, 0.073162), (30000, 0.1), (45000, 0.1)],
)
def test_consistency_ramp_check_values(step, expected):
    assert consistency_weight(step, 0.1, 200.0, 150) == pytest.approx(expected, rel=2e-4)


def test_sigmoid_rampup_edges():
    assert sigmoid_rampup(5, 0) == 1.0
    assert sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5))
    # the ramp steps once per 150-iteration "epoch": 149 and 0 give the same weight
    assert consistency_weight(149, 0.1, 200.0, 150) == consistency_weight(0, 0.1, 200.0, 150)


def test_uamt_threshold_check_values():
    from methods.uamt import uncertainty_threshold

    assert uncertainty_threshold(30000, 30000, 4, "ln_2") == pytest.approx(0.69315, abs=1e-5)
    assert uncertainty_threshold(30000, 30000, 4, "ln_k") == pytest.approx(math.log(4))
    # at step 0 the ramp is exp(-5), not 0: (0.75 + 0.25 e^-5) ln 2 (reference §9 lists 0.75 ln 2 = 0.51986)
    assert uncertainty_threshold(0, 30000, 4, "ln_2") == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))


def test_entropy_uniform_is_one_and_confident_is_zero():
    uniform = torch.full((2, 4, 3, 3), 0.25)
    assert entropy_map(uniform).shape == (2, 1, 3, 3)
    assert normalized_entropy(uniform).item() == pytest.approx(1.0, abs=1e-5)
    onehot = F.one_hot(torch.randint(0, 3, (2, 3, 3)), 3).permute(0, 3, 1, 2).float()
    assert normalized_entropy(onehot).item() == pytest.approx(0.0, abs=1e-5)


def test_softmax_mse_and_pooled_logits_hand_values():
    assert softmax_mse(torch.ones(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)).item() == 1.0
    a = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3)  # pooled, normalised: (0.6, 0.8)
    b = torch.tensor([4.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3)  # (0.8, 0.6)
    assert pooled_logit_consistency(a, b).item() == pytest.approx(0.04, rel=1e-6)


def test_pixel_projector_value_and_symmetric_gradients():
    a = torch.randn(2, 5, 3, 3, requires_grad=True)
    b = torch.randn(2, 5, 3, 3, requires_grad=True)
    loss = pixel_projector_consistency(a, b)
    plain = torch.mean((F.normalize(a, dim=1) - F.normalize(b, dim=1)) ** 2)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    loss.backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    (0.5 * plain).backward()  # each side sees half the plain gradient
    assert torch.allclose(ga, a.grad, atol=1e-7) and torch.allclose(gb, b.grad, atol=1e-7)


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))


def test_ema_first_step_copies_then_averages():
    torch.manual_seed(0)
    student = bn_net()
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, step=0, decay=0.99)
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)
    before = [t.clone() for t in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(6.0)
    ema_update(teacher, student, step=5, decay=0.99)  # alpha = min(1 - 1/6, 0.99) = 5/6
    assert ema_alpha(5, 0.99) == pytest.approx(5 / 6)
    assert ema_alpha(10**6, 0.99) == 0.99
    for t, b in zip(teacher.parameters(), before):
        assert torch.allclose(t, b + 1.0)  # 5/6 * b + 1/6 * (b + 6)


def test_ema_update_is_the_originals_mul_then_add_bit_for_bit():
    """The foreach form computes exactly the original's per-tensor `t.mul_(a).add_(s, alpha=1 - a)`."""
    torch.manual_seed(1)
    student = bn_net()
    student(torch.randn(4, 1, 5, 5))  # moves the running statistics away from the teacher's
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    expected = {k: v.clone() for k, v in teacher.state_dict().items()}
    a = ema_alpha(37, 0.99)
    for name, value in student.state_dict().items():
        if value.is_floating_point():
            expected[name].mul_(a).add_(value, alpha=1.0 - a)
        else:
            expected[name].copy_(value)
    ema_update(teacher, student, step=37, decay=0.99)
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_ema_buffers_averaged_by_default_untouched_when_faithful():
    student = bn_net()
    student(torch.randn(4, 1, 5, 5) * 3 + 2)  # train-mode forward moves the running stats
    default, faithful = make_teacher(bn_net()), make_teacher(bn_net())
    ema_update(default, student, step=0, decay=0.99)
    ema_update(faithful, student, step=0, decay=0.99, faithful=True)
    bn_s, bn_d, bn_f = student[1], default[1], faithful[1]
    assert torch.equal(bn_d.running_mean, bn_s.running_mean) and int(bn_d.num_batches_tracked) == 1
    assert torch.equal(bn_f.running_mean, torch.zeros(2)) and int(bn_f.num_batches_tracked) == 0
