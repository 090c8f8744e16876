"""Per-class volume metrics: hand-computed cases, agreement with medpy, empty-mask policies, errors."""
import math

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary

from ssl_mamba.errors import ConfigError, DataError
from ssl_mamba.metrics import case_metrics, slice_dice, surface_distances


def square_pair(shift: int = 1):
    """(1, 8, 8) volumes: a 3x3 label square and the same square shifted `shift` columns right."""
    gt = np.zeros((1, 8, 8), np.uint8)
    pred = np.zeros_like(gt)
    gt[0, 2:5, 2:5] = 1
    pred[0, 2:5, 2 + shift:5 + shift] = 1
    return pred, gt


def test_shifted_square_by_hand():
    pred, gt = square_pair()
    m = case_metrics(pred, gt, 2)[1]
    # TP 6, FP 3, FN 3, TN 52 of 64 voxels.
    assert m["dice"] == pytest.approx(12 / 18)
    assert m["iou"] == pytest.approx(6 / 12)
    assert m["acc"] == pytest.approx(58 / 64)
    assert m["pre"] == pytest.approx(6 / 9)
    assert m["sen"] == pytest.approx(6 / 9)
    assert m["spe"] == pytest.approx(52 / 55)
    # One slice: the erosion removes everything, so all 9 voxels are surface.  Each direction has
    # 6 zero distances and 3 distances of 1: 18 pooled values, 6 of them 1.
    assert m["hd95"] == pytest.approx(1.0)
    assert m["asd"] == pytest.approx(6 / 18)


def test_shifted_square_with_spacing():
    pred, gt = square_pair()
    m = case_metrics(pred, gt, 2, spacing=(1.0, 1.0, 2.5))[1]
    assert m["hd95"] == pytest.approx(2.5)  # the one-column shift is 2.5 units long
    assert m["asd"] == pytest.approx(6 * 2.5 / 18)


def test_centre_pixel_in_2d_separates_the_asd_modes():
    # 2-D: the 3x3 label square has an 8-pixel ring surface; the prediction is its centre pixel.
    gt = np.zeros((8, 8), np.uint8)
    gt[2:5, 2:5] = 1
    pred = np.zeros_like(gt)
    pred[3, 3] = 1
    # pred->gt: [1]; gt->pred: four edge pixels at 1, four corners at sqrt(2).
    r2 = math.sqrt(2)
    expect = {"symmetric": (1 + 4 + 4 * r2) / 9, "medpy_asd": 1.0, "assd": (1 + (4 + 4 * r2) / 8) / 2}
    for mode, value in expect.items():
        m = case_metrics(pred, gt, 2, asd_mode=mode)[1]
        assert m["asd"] == pytest.approx(value), mode
        assert m["hd95"] == pytest.approx(r2)  # 5 ones and 4 sqrt(2): the 95th percentile is sqrt(2)
        assert m["dice"] == pytest.approx(2 / 10)
        assert m["iou"] == pytest.approx(1 / 9)


def random_masks(rng, shape):
    """Two overlapping blobs with noise, touching the array border in places."""
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    s, h, w = shape
    gt[1:s - 1, h // 6:h // 2 + 3, w // 5:3 * w // 4] = True
    pred[2:s, h // 4:2 * h // 3, w // 8:w // 2] = True
    pred |= rng.random(shape) < 0.03
    gt &= rng.random(shape) > 0.02
    return pred, gt


@pytest.mark.parametrize("spacing", [None, (10.0, 1.5625, 1.5625), (3.0, 0.7, 1.9)])
def test_agrees_with_medpy(spacing):
    rng = np.random.default_rng(7)
    for shape in [(5, 30, 26), (8, 17, 40)]:
        pred_b, gt_b = random_masks(rng, shape)
        pred, gt = pred_b.astype(np.uint8), gt_b.astype(np.uint8)
        out = {mode: case_metrics(pred, gt, 2, spacing, asd_mode=mode)[1] for mode in ("symmetric", "medpy_asd", "assd")}
        m = out["symmetric"]
        assert m["dice"] == pytest.approx(medpy_binary.dc(pred_b, gt_b), abs=1e-12)
        assert m["iou"] == pytest.approx(medpy_binary.jc(pred_b, gt_b), abs=1e-12)
        assert m["pre"] == pytest.approx(medpy_binary.precision(pred_b, gt_b), abs=1e-12)
        assert m["sen"] == pytest.approx(medpy_binary.sensitivity(pred_b, gt_b), abs=1e-12)
        assert m["spe"] == pytest.approx(medpy_binary.specificity(pred_b, gt_b), abs=1e-12)
        assert m["hd95"] == pytest.approx(medpy_binary.hd95(pred_b, gt_b, spacing), abs=1e-6)
        # medpy >= 0.5 `assd` pools both directions: that is the paper's Eq. 9 ("symmetric").
        assert m["asd"] == pytest.approx(medpy_binary.assd(pred_b, gt_b, spacing), abs=1e-6)
        forward = medpy_binary.asd(pred_b, gt_b, spacing)
        backward = medpy_binary.asd(gt_b, pred_b, spacing)
        assert out["medpy_asd"]["asd"] == pytest.approx(forward, abs=1e-6)
        assert out["assd"]["asd"] == pytest.approx((forward + backward) / 2, abs=1e-6)  # medpy 0.4 `assd`


@pytest.mark.parametrize("spacing", [None, (3.0, 0.7, 1.9)])
def test_tree_and_transforms_give_the_same_distances(monkeypatch, spacing):
    from ssl_mamba.metrics import surface as surface_module

    pred, gt = random_masks(np.random.default_rng(11), (6, 40, 36))
    pred[0, 0, 0] = pred[-1, -1, -1] = True  # far false positives, as a fragmented prediction has
    both = {}
    for method, threshold in (("tree", 0.0), ("transforms", math.inf)):
        monkeypatch.setattr(surface_module, "TREE_ABOVE_CROP_PER_SURFACE_VOXEL", threshold)
        both[method] = surface_distances(pred, gt, spacing)
    for direction in ("pred_to_gt", "gt_to_pred"):  # same distances, in the same order
        np.testing.assert_allclose(getattr(both["tree"], direction), getattr(both["transforms"], direction),
                                   rtol=0, atol=1e-9)
    assert both["tree"].hd95() == pytest.approx(medpy_binary.hd95(pred, gt, spacing), abs=1e-6)


def test_scattered_surfaces_take_the_tree_and_a_tight_pair_the_transforms(monkeypatch):
    from ssl_mamba.metrics import surface as surface_module

    trees = []
    tree = surface_module._tree_distances
    monkeypatch.setattr(surface_module, "_tree_distances", lambda *args: trees.append(1) or tree(*args))
    gt = np.zeros((8, 200, 200), bool)
    gt[2:6, 90:110, 90:110] = True
    tight = np.roll(gt, 1, axis=2)
    surface_distances(tight, gt)
    assert trees == []  # the crop is a few voxels around the blocks: transforms
    scattered = tight.copy()
    scattered[0, 0, 0] = scattered[7, 199, 199] = True  # the crop spans the whole volume, the surfaces do not
    assert surface_distances(scattered, gt).hd95() == pytest.approx(medpy_binary.hd95(scattered, gt), abs=1e-9)
    assert trees == [1]


def test_multiclass_classes_scored_independently():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, size=(4, 20, 20)).astype(np.uint8)
    pred = gt.copy()
    pred[:, :5] = rng.integers(0, 4, size=(4, 5, 20))
    m = case_metrics(pred, gt, 4)
    assert sorted(m) == [1, 2, 3]
    for c in (1, 2, 3):
        assert m[c]["dice"] == pytest.approx(medpy_binary.dc(pred == c, gt == c))
        assert m[c]["hd95"] == pytest.approx(medpy_binary.hd95(pred == c, gt == c), abs=1e-6)


def test_without_distances_the_overlap_metrics_are_unchanged_and_hd95_asd_are_nan():
    """Validation between eval.val_distances_every skips the surface distances only."""
    rng = np.random.default_rng(4)
    gt = rng.integers(0, 4, size=(3, 16, 16)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.2, rng.integers(0, 4, size=gt.shape), gt).astype(np.uint8)
    full, quick = case_metrics(pred, gt, 4), case_metrics(pred, gt, 4, distances=False)
    for c in (1, 2, 3):
        assert {k: v for k, v in quick[c].items() if k not in ("hd95", "asd")} == {
            k: v for k, v in full[c].items() if k not in ("hd95", "asd")}
        assert np.isnan(quick[c]["hd95"]) and np.isnan(quick[c]["asd"]) and full[c]["hd95"] > 0


def test_cropping_keeps_distances_for_masks_on_the_border():
    pred = np.zeros((3, 20, 20), bool)
    gt = np.zeros_like(pred)
    pred[:, 0:4, 0:4] = True  # touches three array faces
    gt[:, 15:20, 16:20] = True
    d = surface_distances(pred, gt)
    assert np.concatenate([d.pred_to_gt, d.gt_to_pred]).max() == pytest.approx(
        max(medpy_binary.hd(pred, gt), 0.0), abs=1e-9)


EMPTY = np.zeros((2, 6, 6), np.uint8)
BLOB = EMPTY.copy()
BLOB[:, 1:4, 1:4] = 1
DIAGONAL = math.sqrt(2**2 + 6**2 + 6**2)


@pytest.mark.parametrize(
    "policy, pred, gt, expect",
    [
        # empty prediction: the original gives Dice 0, HD95 0
        ("original", EMPTY, BLOB, {"dice": 0.0, "iou": 0.0, "pre": 0.0, "sen": 0.0, "spe": 1.0, "hd95": 0.0, "asd": 0.0}),
        ("nan", EMPTY, BLOB, {"dice": 0.0, "pre": math.nan, "sen": 0.0, "hd95": math.nan, "asd": math.nan}),
        ("worst", EMPTY, BLOB, {"dice": 0.0, "pre": 0.0, "hd95": DIAGONAL, "asd": DIAGONAL}),
        # empty label, spurious prediction (medpy would raise in the original)
        ("original", BLOB, EMPTY, {"dice": 0.0, "sen": 0.0, "hd95": 0.0, "asd": 0.0}),
        ("nan", BLOB, EMPTY, {"dice": 0.0, "sen": math.nan, "pre": 0.0, "hd95": math.nan}),
        ("worst", BLOB, EMPTY, {"dice": 0.0, "sen": 0.0, "hd95": DIAGONAL}),
        # both empty
        ("original", EMPTY, EMPTY, {"dice": 0.0, "iou": 0.0, "acc": 1.0, "spe": 1.0, "hd95": 0.0}),
        ("nan", EMPTY, EMPTY, {"dice": math.nan, "iou": math.nan, "acc": 1.0, "hd95": math.nan}),
        ("worst", EMPTY, EMPTY, {"dice": 1.0, "iou": 1.0, "pre": 1.0, "sen": 1.0, "hd95": 0.0, "asd": 0.0}),
    ],
)
def test_empty_mask_policies(policy, pred, gt, expect):
    m = case_metrics(pred, gt, 2, empty_policy=policy)[1]
    for key, value in expect.items():
        if math.isnan(value):
            assert math.isnan(m[key]), (key, m[key])
        else:
            assert m[key] == pytest.approx(value), (key, m[key])


def test_worst_uses_spacing_for_the_diagonal():
    m = case_metrics(EMPTY, BLOB, 2, spacing=(10.0, 1.0, 2.0), empty_policy="worst")[1]
    assert m["hd95"] == pytest.approx(math.sqrt(20**2 + 6**2 + 12**2))


def test_all_foreground_volume_does_not_crash():
    full = np.ones((2, 4, 4), np.uint8)
    m = case_metrics(full, full, 2, empty_policy="original")[1]
    assert m["dice"] == 1.0 and m["spe"] == 0.0 and m["hd95"] == 0.0


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"pred": np.zeros((2, 3, 3), np.uint8), "gt": np.zeros((2, 3, 4), np.uint8)}, DataError, "shape"),
        ({"pred": np.full((2, 3, 3), 4, np.uint8)}, DataError, "class 4"),
        ({"pred": np.zeros((2, 3, 3), np.float32)}, DataError, "dtype"),
        ({"empty_policy": "zero"}, ConfigError, "empty_policy"),
        ({"asd_mode": "mean"}, ConfigError, "asd_mode"),
        ({"spacing": (1.0, 1.0)}, ConfigError, "spacing"),
    ],
)
def test_bad_input_names_the_problem(kwargs, error, words):
    args = {"pred": np.zeros((2, 3, 3), np.uint8), "gt": np.zeros((2, 3, 3), np.uint8), "num_classes": 4}
    args.update(kwargs)
    with pytest.raises(error, match=words):
        case_metrics(**args)


def test_slice_dice_by_hand():
    gt = np.zeros((3, 4, 4), np.uint8)
    pred = np.zeros_like(gt)
    gt[0, :2, :2] = 1  # slice 0: class 1 perfect, class 2 half right
    pred[0, :2, :2] = 1
    gt[0, 2:, 2:] = 2
    pred[0, 2:, 2] = 2
    # slice 1 has no foreground anywhere: left out
    pred[2, 0, 0] = 1  # slice 2: a spurious pixel, Dice 0
    values = slice_dice(pred, gt, 3)
    assert values == pytest.approx([(1.0 + 2 * 2 / (2 + 4)) / 2, 0.0])
