"""eval.postprocess: largest connected component per class, against a flood-fill reference, through
evaluate_volumes, in the config check and in the table's labels."""
import json
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_metrics_inference import K, DictSource, LabelEchoNet  # noqa: E402

from ssl_mamba.config import EvalConfig, load_config  # noqa: E402
from ssl_mamba.errors import ConfigError  # noqa: E402
from ssl_mamba.metrics import case_metrics, evaluate_volumes  # noqa: E402
from ssl_mamba.metrics.postprocess import keep_largest_component, postprocess  # noqa: E402

FACE_STEPS = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]


def _components_by_flood_fill(mask: np.ndarray) -> list:
    """Face-connected components of a boolean volume, each a list of voxels, in C order of their first voxel."""
    seen = np.zeros_like(mask, dtype=bool)
    components = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, voxels = True, deque([start]), []
        while queue:
            voxel = queue.popleft()
            voxels.append(voxel)
            for step in FACE_STEPS:
                nxt = tuple(v + s for v, s in zip(voxel, step))
                if all(0 <= n < size for n, size in zip(nxt, mask.shape)) and mask[nxt] and not seen[nxt]:
                    seen[nxt] = True
                    queue.append(nxt)
        components.append(voxels)
    return components


def _reference_largest_component(pred: np.ndarray, num_classes: int) -> np.ndarray:
    out = pred.copy()
    for c in range(1, num_classes):
        components = _components_by_flood_fill(pred == c)
        if len(components) <= 1:
            continue
        keep = max(range(len(components)), key=lambda i: (len(components[i]), -i))  # ties: the first
        for i, voxels in enumerate(components):
            if i != keep:
                for voxel in voxels:
                    out[voxel] = 0
    return out


@pytest.mark.parametrize("seed", range(6))
def test_largest_component_matches_a_flood_fill_reference(seed):
    rng = np.random.default_rng(seed)
    pred = rng.choice(K, size=(3, 9, 7), p=[0.55, 0.15, 0.15, 0.15]).astype(np.uint8)  # many small islands
    np.testing.assert_array_equal(keep_largest_component(pred, K), _reference_largest_component(pred, K))


def test_components_join_across_slices_and_classes_stay_apart():
    pred = np.zeros((3, 6, 6), np.uint8)
    pred[0, 1, 1] = pred[1, 1, 1] = pred[2, 1, 1] = 1  # one component of 3 voxels through the slices
    pred[0, 4, 4] = pred[0, 4, 5] = 1  # an island of 2
    pred[1, 4, 4] = 2  # another class beside class 1's island: untouched
    out = keep_largest_component(pred, K)
    assert out[:, 1, 1].tolist() == [1, 1, 1] and out[0, 4, 4] == out[0, 4, 5] == 0 and out[1, 4, 4] == 2
    assert out.dtype == pred.dtype and pred[0, 4, 4] == 1  # the input is not changed
    assert postprocess(pred, K, "none") is pred


def test_evaluation_scores_the_post_processed_volume():
    """A far-off false-positive island: the raw score pays for it (HD95), the post-processed one not."""
    label = np.zeros((2, 32, 32), np.uint8)
    label[:, 4:12, 4:12], label[:, 14:20, 4:12], label[:, 4:12, 14:20] = 1, 2, 3
    image = label.astype(np.float32) / (K - 1)
    image[1, 24:30, 24:30] = 1 / (K - 1)  # LabelEchoNet predicts class 1 there: a sixth of its surface
    source = DictSource({"v": (image, label)})

    def run(post):
        return evaluate_volumes(LabelEchoNet(), source, ["v"], K, (32, 32), EvalConfig(postprocess=post),
                                torch.device("cpu"))

    raw, cleaned = run("none"), run("largest_component")
    assert raw.per_class[1]["dice"] < 1 and raw.per_class[1]["hd95"] > 10
    assert cleaned.per_class[1] == case_metrics(label, label, K)[1]
    assert cleaned.settings["postprocess"] == "largest_component" and raw.settings["postprocess"] == "none"


def test_unknown_post_processing_is_refused_with_its_key():
    with pytest.raises(ConfigError, match="eval.postprocess.*'lcc'"):
        load_config(overrides=["eval.postprocess=lcc"])
    with pytest.raises(ConfigError, match="eval.postprocess"):
        postprocess(np.zeros((1, 2, 2), np.uint8), K, "lcc")


def test_table_labels_a_post_processed_evaluation_and_gives_it_no_paper_row(tmp_path):
    """A run evaluated with eval.postprocess (its summary's settings) is not the paper's protocol: its own
    label, no paper row, and no pooling with the same config evaluated raw."""
    from ssl_mamba.metrics.table import build_table

    runs = [_committed_run_evaluated(tmp_path, name, {"postprocess": post})
            for name, post in (("raw", "none"), ("lcc", "largest_component"))]
    lines = build_table(runs, compare="paper").splitlines()[2:]
    assert [line.split(" | ")[:3] for line in lines] == [
        ["| supervised (unet), all labeled", "ours", "1"], ["|   UNet", "P-MU Table 1", ""],
        ["| supervised (unet), all labeled, scored after largest component", "ours", "1"]]


def _committed_run_evaluated(tmp_path, name, settings="absent"):
    """A copy of results/acdc_fully_unet whose test summary has `settings` ("absent": no "settings" at all)."""
    committed = Path(__file__).resolve().parents[1] / "results" / "acdc_fully_unet"
    run = tmp_path / name
    (run / "metrics" / "test").mkdir(parents=True)
    (run / "config.yaml").write_text((committed / "config.yaml").read_text())
    summary = json.loads((committed / "metrics" / "test" / "summary.json").read_text())
    summary.pop("settings", None)
    if settings != "absent":
        summary["settings"] = settings
    (run / "metrics" / "test" / "summary.json").write_text(json.dumps(summary))
    return run


def test_table_groups_by_every_eval_setting_the_evaluation_scored_with(tmp_path):
    """`evaluate --run --set eval.tta_flip=true` (or another interp_order, spacing...) changes the numbers as
    much as post-processing does: such a summary is not pooled with the run scored as configured, says how
    it was scored and, not being the papers' protocol, gets no paper row.  A summary without settings (or
    with settings null) is the config's."""
    from ssl_mamba.metrics.table import build_table

    runs = [_committed_run_evaluated(tmp_path, "plain", {"tta_flip": False}),
            _committed_run_evaluated(tmp_path, "old"),
            _committed_run_evaluated(tmp_path, "null", None),
            _committed_run_evaluated(tmp_path, "tta", {"tta_flip": True})]
    lines = [line.split(" | ")[:3] for line in build_table(runs, compare="paper").splitlines()[2:]]
    assert lines == [["| supervised (unet), all labeled", "ours", "3"], ["|   UNet", "P-MU Table 1", ""],
                     ["| supervised (unet), all labeled, scored with tta_flip=True", "ours", "1"]]


def test_overlay_figure_shows_the_prediction_as_it_is_scored(tmp_path, monkeypatch):
    """With eval.postprocess the overlays draw the post-processed prediction, the one the scores and the
    Dice histogram beside them come from (the island is gone on the drawn slice)."""
    from ssl_mamba.metrics import figures

    label = np.zeros((2, 32, 32), np.uint8)
    label[:, 4:12, 4:12] = 1
    image = label.astype(np.float32) / (K - 1)
    image[0, 24:30, 24:30] = 1 / (K - 1)  # an island of class 1 on the drawn slice (the first of two alike)
    drawn = []
    monkeypatch.setattr(figures, "overlay_panels", lambda samples, path, titles: drawn.append(samples) or path)
    for post in ("none", "largest_component"):
        cfg = load_config(overrides=[f"eval.postprocess={post}", "data.patch_size=[32, 32]",
                                     f"data.num_classes={K}"])
        figures.overlay_figure(LabelEchoNet(), DictSource({"v": (image, label)}), ["v"], cfg, tmp_path / "o.png",
                               torch.device("cpu"))
    (_, _, raw), = drawn[0]
    (_, _, cleaned), = drawn[1]
    assert (raw == 1).sum() == (cleaned == 1).sum() + 36
