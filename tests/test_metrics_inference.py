"""Slice-wise inference (resize like scipy zoom) and volume evaluation, incl. a real ACDC test volume."""
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom
from torch import nn

from ssl_mamba.config import EvalConfig
from ssl_mamba.errors import ConfigError, DataError
from ssl_mamba.metrics import (case_metrics, evaluate_volumes, merge_results, predict_volume, resize_bilinear,
                               resize_nearest)

ACDC = Path(__file__).resolve().parents[2] / "shared/datasets/ACDC"
K = 4


class LabelEchoNet(nn.Module):
    """Reads the class back from an image that encodes it as label / (K - 1): logits peak at the
    nearest class, so the network is the identity on labels.  Records its mode and batch sizes."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.calls = []

    def forward(self, x):
        self.calls.append((x.shape[0], self.training, torch.is_grad_enabled()))
        classes = torch.arange(K, dtype=x.dtype).view(1, K, 1, 1)
        return -self.scale * (x * (K - 1) - classes) ** 2  # (N, K, H, W)


def original_prediction(net, image, patch):
    """The originals' `test_single_volume` loop with scipy zoom, for reference."""
    out = np.zeros(image.shape, np.uint8)
    for s in range(image.shape[0]):
        h, w = image[s].shape
        x = zoom(image[s], (patch[0] / h, patch[1] / w), order=0)
        with torch.no_grad():
            label = net(torch.from_numpy(x)[None, None].float()).softmax(1).argmax(1)[0].numpy()
        out[s] = zoom(label, (h / patch[0], w / patch[1]), order=0)
    return out


@pytest.mark.parametrize("size, target", [((256, 216), (224, 224)), ((115, 229), (224, 224)), ((224, 224), (256, 200)),
                                          ((37, 53), (32, 64))])
def test_resize_nearest_equals_scipy_zoom(size, target):
    image = np.random.default_rng(0).random(size).astype(np.float32)
    expect = zoom(image, (target[0] / size[0], target[1] / size[1]), order=0)
    got = resize_nearest(torch.from_numpy(image), target).numpy()
    assert got.shape == expect.shape == target
    np.testing.assert_array_equal(got, expect)  # includes scipy's zero last row for 115 -> 224


def test_resize_bilinear_matches_scipy_order1():
    image = np.random.default_rng(1).random((40, 30)).astype(np.float32)
    expect = zoom(image, (64 / 40, 48 / 30), order=1)
    got = resize_bilinear(torch.from_numpy(image)[None, None], (64, 48))[0, 0].numpy()
    np.testing.assert_allclose(got, expect, atol=1e-5)


def label_volume(rng, shape):
    label = np.zeros(shape, np.uint8)
    s, h, w = shape
    label[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1
    label[:, h // 3:2 * h // 3, w // 3:2 * w // 3] = 2
    label[1:, h // 2:h // 2 + 3, w // 2:] = 3
    label[rng.random(shape) < 0.01] = 3
    return label


def test_predict_volume_reproduces_the_original_loop():
    net = LabelEchoNet()
    label = label_volume(np.random.default_rng(2), (3, 50, 43))
    image = label.astype(np.float32) / (K - 1)
    pred = predict_volume(net, image, (32, 32))
    assert pred.shape == label.shape and pred.dtype == np.uint8
    np.testing.assert_array_equal(pred, original_prediction(net, image, (32, 32)))


def test_predict_volume_batches_in_eval_mode_and_restores_mode():
    net = LabelEchoNet().train()
    label = label_volume(np.random.default_rng(3), (5, 32, 32))
    image = label.astype(np.float32) / (K - 1)
    pred = predict_volume(net, image, (32, 32))
    np.testing.assert_array_equal(pred, label)  # same size: exact identity
    assert net.calls == [(5, False, False)]  # one forward over all slices, eval mode, no grad
    assert net.training
    net.calls.clear()
    chunked = predict_volume(net.eval(), image, (32, 32), batch_size=2)
    np.testing.assert_array_equal(chunked, pred)
    assert [c[0] for c in net.calls] == [2, 2, 1] and not net.training


def test_tta_and_bilinear_paths():
    net = LabelEchoNet()
    label = label_volume(np.random.default_rng(4), (2, 32, 32))
    image = label.astype(np.float32) / (K - 1)
    np.testing.assert_array_equal(predict_volume(net, image, (32, 32), tta_flip=True), label)
    net.calls.clear()
    bilinear = predict_volume(net, image, (64, 48), interp_order=1, tta_flip=True)
    assert bilinear.shape == label.shape and len(net.calls) == 3  # identity + two flips
    assert (bilinear == label).mean() > 0.95  # smooth resampling moves only a few boundary pixels


def test_predict_volume_rejects_bad_input():
    net = LabelEchoNet()
    with pytest.raises(DataError, match="shape"):
        predict_volume(net, np.zeros((4, 4), np.float32), (32, 32))
    with pytest.raises(ConfigError, match="interp_order"):
        predict_volume(net, np.zeros((1, 4, 4), np.float32), (32, 32), interp_order=3)
    net.fixed_input_size = 224
    with pytest.raises(ConfigError, match="224"):
        predict_volume(net, np.zeros((1, 4, 4), np.float32), (256, 256))


class DictSource:
    def __init__(self, volumes):
        self.volumes = volumes

    def read_volume(self, name):
        return self.volumes[name]


def test_evaluate_volumes_aggregates_cases_and_classes():
    rng = np.random.default_rng(5)
    perfect = label_volume(rng, (3, 32, 32))
    broken = label_volume(rng, (2, 32, 32))
    image_broken = broken.astype(np.float32) / (K - 1)
    image_broken[:, :, :8] = 0  # the net will miss the left strip
    source = DictSource({"a": (perfect.astype(np.float32) / (K - 1), perfect), "b": (image_broken, broken)})
    result = evaluate_volumes(LabelEchoNet(), source, ["a", "b"], K, (32, 32), EvalConfig(), torch.device("cpu"))
    assert [(r["case"], r["class"]) for r in result.per_case] == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2),
                                                                  ("b", 3)]
    expect_b = case_metrics(np.where(np.arange(32)[None, None, :] < 8, 0, broken), broken, K)
    for c in (1, 2, 3):
        assert result.per_class[c]["dice"] == pytest.approx((1.0 + expect_b[c]["dice"]) / 2)
    assert result.mean_dice == pytest.approx(np.mean([result.per_class[c]["dice"] for c in (1, 2, 3)]))
    assert len(result.slice_dice) == 5 and max(result.slice_dice) == 1.0
    d = result.to_dict()
    assert d["num_cases"] == 2 and len(d["per_case"]) == 6 and d["settings"]["empty_policy"] == "original"


def _volumes_with_different_misses(n: int) -> dict:
    rng = np.random.default_rng(7)
    volumes = {}
    for i in range(n):
        label = label_volume(rng, (2 + i % 3, 32, 32))
        image = label.astype(np.float32) / (K - 1)
        image[:, :, : 4 * i] = 0  # a different miss per volume, so the order shows
        volumes[f"v{i}"] = (image, label)
    return volumes


def test_volumes_scored_in_threads_keep_their_order_and_scores():
    """Validation and `ssl-mamba evaluate` score volumes in threads while the next ones are predicted:
    the result must be the one-thread result, case for case and slice for slice."""
    volumes = _volumes_with_different_misses(6)
    names = list(volumes)
    runs = [evaluate_volumes(LabelEchoNet(), DictSource(volumes), names, K, (32, 32), EvalConfig(), torch.device("cpu"),
                             threads=n).to_dict() for n in (1, 4)]
    assert runs[0] == runs[1]
    assert [r["case"] for r in runs[1]["per_case"]][::3] == names


@pytest.mark.parametrize("world", [2, 3, 8])
def test_volumes_shared_out_as_ranks_validate_merge_into_the_whole_evaluation(world):
    """Data-parallel validation: rank r scores names[r::world] and the parts are merged.  Per case,
    per class and overall the merge is the one evaluation of all the volumes, bit for bit (the rows
    back in the order of the names), also with more ranks than volumes (empty parts)."""
    volumes = _volumes_with_different_misses(7)
    names = list(volumes)

    def evaluate(subset):
        return evaluate_volumes(LabelEchoNet(), DictSource(volumes), subset, K, (32, 32), EvalConfig(),
                                torch.device("cpu"))

    whole = evaluate(names)
    parts = [evaluate(names[rank::world]) for rank in range(world)]
    merged = merge_results(parts[::-1], names, K)  # the order parts arrive in does not matter
    assert merged.per_case == whole.per_case
    assert merged.per_class == whole.per_class and merged.mean == whole.mean
    assert sorted(merged.slice_dice) == sorted(whole.slice_dice) and merged.settings == whole.settings
    assert len({part.mean_dice for part in parts if part.per_case}) > 1  # the parts differ: the merge matters


def test_merging_parts_that_miss_or_repeat_a_volume_is_refused():
    """A share missing a volume or scoring one twice would give a plausible but wrong mean (and a wrong
    best checkpoint): merge_results says which volumes are wrong instead."""
    volumes = _volumes_with_different_misses(3)
    names = list(volumes)
    parts = [evaluate_volumes(LabelEchoNet(), DictSource(volumes), subset, K, (32, 32), EvalConfig(),
                              torch.device("cpu")) for subset in (names[:2], names[1:])]
    with pytest.raises(ValueError, match=r"in several parts \['v1'\]"):
        merge_results(parts, names, K)
    with pytest.raises(ValueError, match=r"missing \['v2'\]"):
        merge_results(parts[:1], names, K)
    with pytest.raises(ValueError, match=r"unknown \['v2'\]"):
        merge_results([parts[1]], names[1:2], K)


@pytest.mark.skipif(not (ACDC / "test.list").is_file(), reason="ACDC data not present at ../shared/datasets/ACDC")
def test_real_acdc_volume():
    import h5py

    name = (ACDC / "test.list").read_text().split()[0]
    with h5py.File(ACDC / "data" / f"{name}.h5", "r") as f:
        image, label = f["image"][:], f["label"][:]
    scores = case_metrics(label, label, K)
    for c in (1, 2, 3):
        assert scores[c]["dice"] == 1.0 and scores[c]["hd95"] == 0.0 and scores[c]["asd"] == 0.0
    # Slice-wise inference on the real geometry equals the originals' scipy loop.
    net = LabelEchoNet()
    encoded = label.astype(np.float32) / (K - 1)
    pred = predict_volume(net, encoded, (224, 224))
    assert pred.shape == label.shape == image.shape
    np.testing.assert_array_equal(pred, original_prediction(net, encoded, (224, 224)))
