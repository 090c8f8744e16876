"""Reports on disk, the paper-style table over run directories, and PNG figures."""
import csv
import json
import math

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
from PIL import Image  # noqa: E402

from ssl_mamba.config import ExperimentConfig, load_config, save_config  # noqa: E402
from ssl_mamba.errors import DataError  # noqa: E402
from ssl_mamba.metrics import METRIC_NAMES, paper_row, summarize, write_reports  # noqa: E402
from ssl_mamba.metrics import figures  # noqa: E402
from ssl_mamba.metrics.table import build_table  # noqa: E402
from ssl_mamba.paper_tables import PAPER_ROWS, find_paper_rows  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_result(dice_a=0.8, dice_b=0.6):
    rows = []
    for case, dice in (("case_a", dice_a), ("case_b", dice_b)):
        for c in (1, 2):
            row = {m: 0.5 for m in METRIC_NAMES}
            row.update(case=case, **{"class": c}, dice=dice + 0.1 * c, hd95=float(c))
            rows.append(row)
    return summarize(rows, 3, slice_values=[0.1, 0.5, 0.9, 0.95], settings={"empty_policy": "original"})


def test_write_reports_files(tmp_path):
    result = make_result()
    write_reports(result, tmp_path, extra={"network": "net1"})
    with open(tmp_path / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["case"] == "case_a" and float(rows[0]["dice"]) == pytest.approx(0.9)
    with open(tmp_path / "per_class.csv") as f:
        classes = list(csv.DictReader(f))
    assert [r["class"] for r in classes] == ["1", "2", "mean"]
    assert float(classes[0]["dice"]) == pytest.approx(0.8)  # (0.9 + 0.7) / 2
    assert float(classes[2]["hd95"]) == pytest.approx(1.5)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mean_dice"] == pytest.approx(0.85)  # classes: (0.9 + 0.7) / 2 and (1.0 + 0.8) / 2
    assert summary["network"] == "net1" and summary["num_cases"] == 2 and len(summary["slice_dice"]) == 4
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_lowest_cases_ranks_volumes_by_their_mean_dice_over_classes():
    from ssl_mamba.metrics import lowest_cases

    rows = [{"case": "a", "class": 1, "dice": 0.9}, {"case": "a", "class": 2, "dice": 0.1},  # mean 0.5
            {"case": "b", "class": 1, "dice": 0.2}, {"case": "b", "class": 2, "dice": math.nan},  # 0.2 (NaN left out)
            {"case": "c", "class": 1, "dice": 0.95}, {"case": "c", "class": 2, "dice": 0.85}]  # 0.9
    assert lowest_cases(rows, count=2) == "lowest mean Dice: b 0.2000, a 0.5000"
    assert lowest_cases(make_result().per_case, count=1) == "lowest mean Dice: case_b 0.7500"


def test_paper_row_format_and_nan():
    result = make_result()
    assert paper_row(result.summary) == "0.8500 0.5000 0.5000 0.5000 0.5000 0.5000 1.5000 0.5000"
    rows = [dict(r, hd95=math.nan) for r in result.per_case]
    nan_result = summarize(rows, 3)
    assert paper_row(nan_result.summary).split()[6] == "nan"


def test_nan_is_written_as_null_and_read_back(tmp_path):
    rows = [dict(r, hd95=math.nan) for r in make_result().per_case]
    write_reports(summarize(rows, 3), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: no NaN tokens
    assert summary["mean"]["hd95"] is None and paper_row(summary).split()[6] == "nan"


def make_run(root, name, seed, dice, method="cross_teaching", networks=("unet", "mamba_unet"), labeled=3, lr=0.01):
    cfg = ExperimentConfig(name=name)
    cfg.train.seed = seed
    cfg.train.lr = lr
    cfg.method.name = method
    cfg.model.networks = list(networks)
    cfg.data.labeled_cases = labeled
    run = root / name
    save_config(cfg, run / "config.yaml")
    write_reports(make_result(dice, dice), run / "metrics" / "test")
    return run


def test_table_groups_seeds_into_mean_and_std(tmp_path):
    runs = [make_run(tmp_path, "smu_s1", 1, 0.70), make_run(tmp_path, "smu_s2", 2, 0.80),
            make_run(tmp_path, "mt", 1, 0.60, method="mean_teacher", networks=("unet",), labeled=7)]
    text = build_table(runs)
    lines = text.splitlines()
    assert len(lines) == 4  # header, rule, two groups
    # seed runs: per-run mean Dice = dice + 0.15 -> 0.85 and 0.95: mean 0.9, sample std 0.0707
    assert "cross_teaching (unet + mamba_unet), 3 labeled cases" in lines[2]
    assert "| 2 | 0.9000 ± 0.0707 |" in lines[2]
    assert "mean_teacher (unet), 7 labeled cases" in lines[3] and "| 1 | 0.7500 |" in lines[3]


def test_seeds_written_with_other_checkpoint_or_picture_cadences_pool_but_other_settings_do_not(tmp_path):
    """How often a run writes last.pt, logs pictures or scores validation distances does not change its
    training (a resumed run equals an uninterrupted one; model selection reads Dice only), so seeds that
    differ there pool; a training setting (lr) splits the row."""
    a = make_run(tmp_path, "s1", 1, 0.70)
    b = make_run(tmp_path, "s2", 2, 0.80)
    c = make_run(tmp_path, "s3", 3, 0.90, lr=0.02)
    cfg = load_config(b / "config.yaml")
    cfg.train.checkpoint_every, cfg.train.log_images_every, cfg.eval.val_distances_every = 500, 0, 10
    save_config(cfg, b / "config.yaml")
    lines = build_table([a, b, c]).splitlines()
    assert len(lines) == 4 and "| 2 | 0.9000 ± 0.0707 |" in lines[2] and "| 1 | 1.0500 |" in lines[3]


def test_table_compare_paper_and_formats(tmp_path):
    runs = [make_run(tmp_path, "a", 1, 0.7), make_run(tmp_path, "b", 2, 0.8)]
    text = build_table(runs, compare="paper")
    paper_lines = [line for line in text.splitlines() if "P-SMU" in line]
    assert len(paper_lines) == 2  # Table 2 row and the Table 6 ablation row
    assert "0.8386" in paper_lines[0] and "6.2139" in paper_lines[0] and "–" in paper_lines[0]  # no IoU in P-SMU
    latex = build_table(runs, fmt="latex", compare="paper")
    assert latex.startswith("\\begin{tabular}") and "cross\\_teaching" in latex and "$\\pm$" in latex
    rows = list(csv.reader(build_table(runs, fmt="csv").splitlines()))
    assert rows[0][:3] == ["Method", "Source", "n"] and rows[1][2] == "2"


def test_paper_pairs_put_our_mean_beside_the_first_published_row(tmp_path):
    from ssl_mamba.metrics.table import paper_pairs

    runs = [make_run(tmp_path, "smu_s1", 1, 0.70), make_run(tmp_path, "smu_s2", 2, 0.80),
            make_run(tmp_path, "mt", 1, 0.60, method="mean_teacher", networks=("unet",), labeled=7),
            make_run(tmp_path, "no_paper", 1, 0.60, method="mean_teacher", networks=("unet",), labeled=5)]
    pairs = paper_pairs(runs)
    assert [p["paper_label"] for p in pairs] == ["Semi-Mamba-UNet", "MT + UNet"]  # 5 cases: no published row
    assert pairs[0]["ours"] == pytest.approx(0.90) and pairs[0]["paper"] == 0.8386  # Table 2 before Table 6
    assert pairs[0]["labeled"] == "3 labeled cases" and [r.name for r in pairs[0]["runs"]] == ["smu_s1", "smu_s2"]
    assert pairs[1]["ours"] == pytest.approx(0.75) and pairs[1]["paper"] == 0.8781


def test_a_run_labeled_by_fraction_meets_no_fully_supervised_paper_row(tmp_path):
    from ssl_mamba.metrics.table import paper_pairs

    full = make_run(tmp_path, "full", 1, 0.8, method="supervised", networks=("unet",), labeled=None)
    cfg = ExperimentConfig(name="tenth")
    cfg.method.name, cfg.model.networks, cfg.data.labeled_fraction = "supervised", ["unet"], 0.1
    save_config(cfg, tmp_path / "tenth" / "config.yaml")
    write_reports(make_result(0.5, 0.5), tmp_path / "tenth" / "metrics" / "test")
    assert [p["label"] for p in paper_pairs([full, tmp_path / "tenth"])] == ["supervised (unet), all labeled"]
    lines = build_table([full, tmp_path / "tenth"], compare="paper").splitlines()
    assert "10% labeled" in lines[-1] and "P-MU" in lines[-2]  # the paper's UNet row follows only the full run


def test_figure_names_rows_by_the_paper_unless_two_of_ours_meet_one_paper_row(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "paper_comparison", lambda points, path: drawn.append(points) or path)
    a = make_run(tmp_path, "a", 1, 0.8, method="supervised", networks=("unet",), labeled=None)
    b = make_run(tmp_path, "b", 1, 0.7, method="supervised", networks=("unet",), labeled=None, lr=0.02)
    (b / "provenance.json").write_text(json.dumps({"shortened": True}))  # as scripts/reproduce.py writes it
    figures.paper_comparison_of_runs([a], tmp_path / "one.png")
    figures.paper_comparison_of_runs([a, b], tmp_path / "two.png")  # same row, another lr: two of ours
    assert [p["name"] for p in drawn[0]] == ["UNet"]
    assert [p["name"] for p in drawn[1]] == ["supervised (unet), all labeled [train.lr=0.01]",
                                             "supervised (unet), all labeled [train.lr=0.02]"]
    assert [p["shortened"] for p in drawn[1]] == [False, True] and {p["group"] for p in drawn[1]} == {"all labeled"}
    no_paper = make_run(tmp_path, "c", 1, 0.7, method="mean_teacher", networks=("unet",), labeled=5)
    assert figures.paper_comparison_of_runs([no_paper], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_paper_comparison_writes_a_png_and_needs_a_row(tmp_path):
    points = [{"paper": 0.88, "ours": 0.82, "name": "MT + UNet", "group": "7 labeled cases", "shortened": False},
              {"paper": 0.91, "ours": 0.66, "name": "Semi-Mamba-UNet", "group": "7 labeled cases", "shortened": True}]
    path = figures.paper_comparison(points, tmp_path / "f" / "ours_vs_paper.png")
    assert path.read_bytes()[:8] == PNG_MAGIC and Image.open(path).size[1] > 100
    with pytest.raises(DataError, match="no rows with a published value"):
        figures.paper_comparison([], tmp_path / "empty.png")


def test_table_separates_configs_that_differ_beyond_seed(tmp_path):
    runs = [make_run(tmp_path, "a", 1, 0.7, lr=0.01), make_run(tmp_path, "b", 1, 0.8, lr=0.001)]
    lines = build_table(runs).splitlines()[2:]
    assert len(lines) == 2 and "train.lr=0.01" in lines[0] and "train.lr=0.001" in lines[1]


def test_table_missing_summary_is_a_clear_error(tmp_path):
    run = make_run(tmp_path, "a", 1, 0.7)
    (run / "metrics" / "test" / "summary.json").unlink()
    with pytest.raises(DataError, match="summary.json"):
        build_table([run])


def test_paper_tables_hold_the_published_numbers():
    assert len(PAPER_ROWS) == 48
    mu = find_paper_rows("acdc", "supervised", ["mamba_unet"], None)
    assert len(mu) == 1 and mu[0].metrics["dice"] == 0.9281 and mu[0].metrics["asd"] == 0.7677
    cps = find_paper_rows("acdc", "cps", ["unet", "unet"], 7)
    assert cps[0].metrics["hd95"] == 7.8319 and "iou" not in cps[0].metrics


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert Image.open(path).mode == "P"  # a palette PNG: half the bytes of RGBA in every results folder
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels[..., :3].std() > 0.01  # something was drawn


def test_dice_histogram_and_overlays(tmp_path):
    result = make_result()
    assert_png(figures.dice_histogram(result, tmp_path / "hist.png"))
    label = np.zeros((16, 16), np.uint8)
    label[4:12, 4:12] = 1
    label[6:10, 6:10] = 3
    image = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    assert_png(figures.overlay_panels([(image, label, np.roll(label, 2, axis=1))], tmp_path / "ov.png"))
    rgba = figures.label_rgba(label)
    assert rgba[0, 0, 3] == 0 and tuple(rgba[5, 5, :3]) == figures.CLASS_COLOURS[1]


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_overlay_figure_runs_inference(tmp_path):
    class Source:
        def read_volume(self, name):
            label = np.zeros((3, 20, 18), np.uint8)
            label[1, 5:15, 5:12] = 2
            return label.astype(np.float32) / 3, label

    cfg = ExperimentConfig()
    cfg.data.patch_size = [16, 16]
    torch.manual_seed(0)
    assert_png(figures.overlay_figure(TinyNet(), Source(), ["v1", "v2"], cfg, tmp_path / "ov.png"))


def test_training_curves_from_jsonl(tmp_path):
    lines = [json.dumps({"step": s, "loss/total": 1.0 / s, "lr/seg": 0.01, "val/net1/dice": None if s == 2 else s / 4})
             for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "loss/to')  # last line cut off
    scalars = figures.read_scalars(tmp_path)
    assert scalars["loss/total"][0] == [1, 2, 3, 4]
    assert math.isnan(scalars["val/net1/dice"][1][1])
    assert_png(figures.training_curves(tmp_path, tmp_path / "curves.png"))


def test_curve_panels_group_validation_by_metric_and_leave_out_the_clutter():
    keys = ["loss/seg", "loss/sup1", "lr/seg", "val/net1/dice", "val/net2/dice", "val/net1/hd95",
            "val/net1/iou", "val/net1/class2/dice", "weight/consistency"]
    assert figures.curve_panels(keys) == {
        "loss": ["loss/seg", "loss/sup1"], "lr": ["lr/seg"], "val dice": ["val/net1/dice", "val/net2/dice"],
        "val hd95": ["val/net1/hd95"], "weight": ["weight/consistency"]}
    # keys asked for by name are all drawn
    assert figures.curve_panels(["val/net1/iou", "val/net1/class2/dice"], default=False) == {
        "val iou": ["val/net1/iou"], "val": ["val/net1/class2/dice"]}


def test_training_curves_from_tensorboard_events(tmp_path):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(logdir=str(tmp_path))
    for step in range(1, 6):
        writer.add_scalar("loss/total", 1.0 / step, step)
        writer.add_scalar("val/net1/dice", 0.1 * step, step)
    writer.close()
    scalars = figures.read_scalars(tmp_path)
    assert scalars["loss/total"][0] == [1, 2, 3, 4, 5]
    assert scalars["val/net1/dice"][1] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert_png(figures.training_curves(tmp_path, tmp_path / "curves.png", keys=["loss/total"]))


def test_training_curves_without_logs_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="metrics.jsonl"):
        figures.read_scalars(tmp_path)


def test_every_acdc_experiment_config_has_its_paper_row():
    """`--compare paper` must find the published row of every paper-table experiment file."""
    from pathlib import Path

    from ssl_mamba.config import load_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "acdc").glob("*.yaml"))
    if not configs:
        pytest.skip("no experiment files under configs/acdc")
    unmatched = []
    for path in configs:
        cfg = load_config(path)
        if not find_paper_rows(cfg.data.dataset, cfg.method.name, cfg.model.networks, cfg.data.labeled_cases):
            unmatched.append(path.name)
    assert not unmatched, f"no paper row for: {unmatched}"


def _run_with(path, key, values, start=200):
    path.mkdir(parents=True)
    lines = [json.dumps({"step": start * (i + 1), key: v}) for i, v in enumerate(values)]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_compare_curves_draws_each_run_and_names_a_run_without_the_key(tmp_path):
    a = _run_with(tmp_path / "a", "val/net1/dice", [0.5, 0.8, 0.7])
    b = _run_with(tmp_path / "b", "val/net1/dice", [0.4, 0.6, float("nan")])
    assert_png(figures.compare_curves({"A": a, "B": b}, tmp_path / "cmp.png"))
    assert_png(figures.compare_curves({"A": a}, tmp_path / "late.png", start=400))
    with pytest.raises(DataError, match="no .* value at or after iteration 10000"):
        figures.compare_curves({"A": a}, tmp_path / "x.png", start=10000)
    c = _run_with(tmp_path / "c", "loss/total", [1.0, 0.5])
    with pytest.raises(DataError, match=r"c: no scalar 'val/net1/dice' logged; it has \['loss/total'\]"):
        figures.compare_curves({"A": a, "C": c}, tmp_path / "y.png")


def test_overlays_are_cut_to_the_labelled_and_predicted_structures():
    image = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    label = np.zeros((100, 120), np.int64)
    pred = np.zeros_like(label)
    label[40:50, 30:60] = 1
    pred[45:70, 55:65] = 2  # a prediction reaching past the label still shows whole
    cut = figures.foreground_crop(image, label, pred, margin=5)
    assert cut[0].shape == cut[1].shape == cut[2].shape == (70 + 5 - 35, 65 + 5 - 25)
    assert cut[1].sum() == label.sum() and cut[2].sum() == pred.sum()
    assert cut[0][0, 0] == image[35, 25]
    whole = figures.foreground_crop(image, np.zeros_like(label), np.zeros_like(pred))
    assert whole[0] is image
    edge = np.zeros_like(label)
    edge[0:3, 0:3] = 1  # the margin stops at the border
    assert figures.foreground_crop(image, edge, np.zeros_like(edge), margin=5)[0].shape == (8, 8)


@pytest.mark.parametrize("key, value, label", [("normalize", "percentile", "percentile-normalised slices"),
                                               ("intensity_scale", [0.5, 1.0], "intensities scaled by 0.5-1"),
                                               ("intensity_scale", "auto", "intensities scaled (auto)")])
def test_a_rescaled_run_is_its_own_row_without_a_paper_counterpart(tmp_path, key, value, label):
    """A diagnostic with data.normalize or data.intensity_scale neither pools with the row it varies
    nor meets the paper's row, and its label says how it differs."""
    from ssl_mamba.metrics.table import paper_pairs

    plain = make_run(tmp_path, "mt", 1, 0.60, method="mean_teacher", networks=("unet",), labeled=3)
    cfg = ExperimentConfig(name="mt_rescaled")
    cfg.method.name, cfg.model.networks, cfg.data.labeled_cases = "mean_teacher", ["unet"], 3
    cfg.train.seed = 1
    setattr(cfg.data, key, value)
    save_config(cfg, tmp_path / "mt_rescaled" / "config.yaml")
    write_reports(make_result(0.7, 0.7), tmp_path / "mt_rescaled" / "metrics" / "test")
    runs = [plain, tmp_path / "mt_rescaled"]
    assert [p["ours"] for p in paper_pairs(runs)] == [pytest.approx(0.75)]  # the plain run alone
    lines = build_table(runs, compare="paper").splitlines()
    ours = [line for line in lines if "| ours |" in line]
    assert len(ours) == 2 and "| 1 |" in ours[1]
    assert label in ours[1] and "normalised" not in ours[0] and "scaled" not in ours[0]
    alone = [line for line in build_table(runs[1:]).splitlines() if "| ours |" in line]
    assert label in alone[0]  # said even without the plain row beside it

