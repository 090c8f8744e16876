"""data.normalize: per-slice percentile rescaling, for training slices and evaluation volumes alike."""
import dataclasses
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from ssl_mamba.config import ExperimentConfig, from_dict, validate
from ssl_mamba.data import NormalizedSource, normalized_source, open_dataset, percentile_rescale
from ssl_mamba.errors import ConfigError, DataError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_trainer as th  # noqa: E402
from test_trainer import phantom_root  # noqa: E402,F401  (shared fixture)

ACDC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ACDC"


def test_rescaling_undoes_a_volume_wide_scale_and_offset():
    """What the option is for: a slice stored darker (another volume's maximum) comes out the same."""
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 0.1, size=(40, 50)).astype(np.float32)
    out = percentile_rescale(image)
    assert np.allclose(percentile_rescale(0.3 * image + 0.05), out, atol=1e-5)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.percentile(out, 0.5) == pytest.approx(0.0, abs=1e-4)
    assert np.percentile(out, 99.5) == pytest.approx(1.0, abs=1e-4)


def test_a_volume_is_rescaled_slice_by_slice():
    rng = np.random.default_rng(1)
    volume = np.stack([rng.random((8, 9)) * scale for scale in (1.0, 0.2, 5.0)]).astype(np.float32)
    volume[1, :, :] = 0.7  # a constant slice: no contrast to stretch
    out = percentile_rescale(volume)
    assert out.shape == volume.shape
    for index in (0, 2):
        assert np.array_equal(out[index], percentile_rescale(volume[index]))
    assert not out[1].any()


def test_a_nearly_flat_slice_falls_back_to_its_range_and_bad_pixels_are_named(phantom_root, tmp_path):  # noqa: F811
    sparse = np.zeros((40, 50), dtype=np.float32)
    sparse[0, :4] = 2.0  # 0.2% of the pixels: both percentiles are 0
    assert np.array_equal(percentile_rescale(sparse), sparse / 2.0)
    with pytest.raises(ValueError, match="non-finite"):
        percentile_rescale(np.array([[0.0, np.nan], [1.0, 2.0]]))

    class Broken:
        root = Path("/data/acdc")

        def read_slice(self, name):
            return np.full((4, 4), np.inf, dtype=np.float32), np.zeros((4, 4), dtype=np.uint8)

    with pytest.raises(DataError, match="/data/acdc: slice 'patient001_slice_3': image has non-finite"):
        NormalizedSource(Broken()).read_slice("patient001_slice_3")


def test_evaluating_a_run_checkpoint_needs_the_run_normalisation(tmp_path, phantom_root):  # noqa: F811
    """`evaluate --checkpoint` scores into the checkpoint's run folder by default: reading the images
    another way than the run trained on them would put wrong scores there, so it refuses."""
    from ssl_mamba.config import save_config
    from ssl_mamba.errors import UserError
    from ssl_mamba.runs import evaluate_checkpoint

    base = th.tiny_config(phantom_root)
    trained = dataclasses.replace(base, data=dataclasses.replace(base.data, normalize="percentile"))
    save_config(trained, tmp_path / "run" / "config.yaml")
    (tmp_path / "run" / "best_net1.pth").write_bytes(b"weights")
    with pytest.raises(UserError, match="trained with data.normalize=percentile .* data.normalize=none"):
        evaluate_checkpoint(base, tmp_path / "run" / "best_net1.pth", "test", tmp_path / "out")


def test_none_is_the_source_itself_and_other_names_are_refused(phantom_root):  # noqa: F811
    source = open_dataset(phantom_root)
    assert normalized_source(source, "none") is source
    with pytest.raises(ValueError, match="data.normalize is 'zscore'"):
        normalized_source(source, "zscore")
    base = th.tiny_config(phantom_root)
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, normalize="zscore"))
    with pytest.raises(ConfigError, match="'data.normalize' is 'zscore'"):
        validate(cfg, "test config")


def test_the_wrapped_source_changes_images_only(phantom_root):  # noqa: F811
    plain = open_dataset(phantom_root)
    wrapped = pickle.loads(pickle.dumps(normalized_source(plain, "percentile")))  # as DataLoader workers get it
    assert isinstance(wrapped, NormalizedSource)
    name = plain.train_slice_names[0]
    image, label = wrapped.read_slice(name)
    raw_image, raw_label = plain.read_slice(name)
    assert np.array_equal(label, raw_label) and np.array_equal(image, percentile_rescale(raw_image))
    volume = plain.volume_names("val")[0]
    assert np.array_equal(wrapped.read_volume(volume)[0], percentile_rescale(plain.read_volume(volume)[0]))
    assert wrapped.train_slice_names == plain.train_slice_names and wrapped.root == plain.root
    assert wrapped.case_of(name) == plain.case_of(name) and wrapped.volume_names("test") == plain.volume_names("test")


def test_training_and_evaluation_read_through_the_option(phantom_root, tmp_path):  # noqa: F811
    from ssl_mamba.engine.trainer import Trainer
    from ssl_mamba.runs import _open_split

    base = th.tiny_config(phantom_root)
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, normalize="percentile"))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert isinstance(trainer.source, NormalizedSource) and isinstance(trainer.stream.dataset.source, NormalizedSource)
    source, names = _open_split(cfg, "test")
    assert isinstance(source, NormalizedSource) and names
    assert not isinstance(_open_split(base, "test")[0], NormalizedSource)


@pytest.mark.skipif(not ACDC.is_dir(), reason="needs ../shared/datasets/ACDC")
def test_real_acdc_dark_test_volume_lands_among_the_labeled_patients():
    """patient007's left ventricle (label 3) is stored at ~0.15 of its volume's range, the 3-case split's
    labeled patients' at 0.39-0.58 (mean over their slices that show it; results/README.md measured
    0.41-0.62 another way).  Rescaled per slice it falls among them."""
    source = normalized_source(open_dataset(ACDC), "percentile")
    raw = open_dataset(ACDC)
    image, label = raw.read_volume("patient007_frame01")
    assert image[label == 3].mean() < 0.2
    dark = source.read_volume("patient007_frame01")[0][label == 3].mean()
    labeled = []
    for patient in ("patient099", "patient038", "patient050"):  # the first three of train_slices.list
        slices = [source.read_slice(n) for n in source.train_slice_names if n.startswith(patient + "_")]
        labeled.append(float(np.mean([img[lab == 3].mean() for img, lab in slices if (lab == 3).any()])))
    assert min(labeled) < dark < max(labeled), (dark, labeled)


def test_default_config_leaves_images_as_stored():
    cfg = from_dict(ExperimentConfig, {}, "defaults")
    assert cfg.data.normalize == "none"


@pytest.mark.skipif(not ACDC.is_dir(), reason="needs ../shared/datasets/ACDC")
def test_real_acdc_three_labeled_cases_leave_dark_test_volumes_uncovered_and_seven_do_not(tmp_path, monkeypatch):
    """The 3 labeled patients are all bright (99.5th percentile 0.60-1.00), so patient007 (0.31), which
    MT + UNet missed, is flagged (below 0.8 x 0.60); the 7 include two dark patients and flag nothing."""
    from ssl_mamba.data import intensity_coverage

    three = intensity_coverage(ACDC, 3, splits=("test",))
    assert sorted(three["labeled"]) == ["patient038", "patient050", "patient099"]
    darker = dict(three["darker"]["test"])
    assert darker["patient007_frame01"] == pytest.approx(0.31, abs=0.01)
    assert "patient075_frame01" not in darker  # a bright volume MT segmented well (0.92)
    assert "patient093_frame01" not in darker  # 0.60: below the darkest labeled case, not clearly
    assert [v for _, v in three["darker"]["test"]] == sorted(darker.values())  # darkest first
    # from the training images alone: 5% of the 67 unlabeled cases are darker than 0.284, over the brightest
    # labeled case (1.00)
    assert three["unlabeled_quantile"] == pytest.approx(0.284, abs=0.005)
    assert three["suggested_intensity_scale"] == [0.25, 1.0] and len(three["unlabeled"]) == 67
    ax = _drawn_strip(monkeypatch, three, tmp_path / "coverage.png")
    assert sorted(_lane_dots(ax, "unlabeled (training)")) == pytest.approx(sorted(three["unlabeled"].values()))
    bars = _bars(ax)  # [0.25, 1.0]: from each labeled case down to a quarter of it
    assert len(bars) == 3 and np.allclose(bars, sorted((v * 0.25, v) for v in three["labeled"].values()))
    seven = intensity_coverage(ACDC, 7, splits=("test",))
    assert min(seven["labeled"].values()) < 0.2 and seven["darker"]["test"] == []
    assert seven["suggested_intensity_scale"] is None


def _catch_axes(monkeypatch):
    """A list that gets the axes of each figure drawn from now on, caught on their way to the file (still
    written as before): a picture's content is checked on its artists, not its pixels."""
    from ssl_mamba.metrics import figures

    caught = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, where: caught.append(fig.axes[0]) or save(fig, where))
    return caught


def _drawn_strip(monkeypatch, coverage, path):
    from ssl_mamba.metrics.figures import intensity_strip

    caught = _catch_axes(monkeypatch)
    assert intensity_strip(coverage, path).read_bytes()[:4] == b"\x89PNG"
    return caught[-1]


def _lane_dots(ax, lane):
    """The x of each dot drawn in the lane whose tick reads '<lane> (<count>)' (dots jitter by < 0.25)."""
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    rows = [row for row, text in enumerate(ticks) if text.startswith(f"{lane} (")]
    assert len(rows) == 1, f"no lane {lane!r} among {ticks}"
    return [float(line.get_xdata()[0]) for line in ax.lines
            if line.get_marker() == "o" and abs(float(line.get_ydata()[0]) - rows[0]) < 0.25]


def _bars(ax):
    """(low, high) of each horizontal two-point line: the scale's bars (the threshold line is vertical)."""
    return sorted((float(x[0]), float(x[1])) for x, y in ((line.get_xdata(), line.get_ydata()) for line in ax.lines)
                  if len(x) == 2 and y[0] == y[1] and x[0] != x[1])


def test_intensity_strip_draws_the_unlabeled_lane_and_a_bar_per_labeled_case(tmp_path, monkeypatch):
    coverage = {"labeled": {"p1": 0.9, "p2": 0.6}, "unlabeled": {"p3": 0.3, "p4": 0.5, "p5": 0.8},
                "volumes": {"test": {"v1": 0.2, "v2": 0.7}}, "darker": {"test": [("v1", 0.2)]},
                "threshold": 0.48, "suggested_intensity_scale": [0.3, 1.0]}
    ax = _drawn_strip(monkeypatch, coverage, tmp_path / "strip.png")
    assert sorted(_lane_dots(ax, "unlabeled (training)")) == [0.3, 0.5, 0.8]
    bars = _bars(ax)  # from each labeled case down to its darkest scaled version
    assert len(bars) == 2 and np.allclose(bars, [(0.6 * 0.3, 0.6), (0.9 * 0.3, 0.9)])
    ax = _drawn_strip(monkeypatch, {**coverage, "suggested_intensity_scale": None}, tmp_path / "none.png")
    assert _bars(ax) == []


def test_suggested_intensity_scale_reaches_the_unlabeled_quantile_from_the_brightest_labeled_case():
    from ssl_mamba.data import suggest_intensity_scale

    # 0.3 over the brightest labeled case 1.0 is 0.3 exactly, kept despite float rounding (0.3 / 0.05 = 5.999...)
    assert suggest_intensity_scale([1.0, 0.8], [0.3] * 20) == [0.3, 1.0]
    unlabeled = [0.14] + [0.3 + 0.01 * i for i in range(40)]  # one odd dark case among 41
    assert suggest_intensity_scale([1.0, 0.8], unlabeled) == [0.3, 1.0]  # 5% quantile 0.31: not the odd 0.14
    assert suggest_intensity_scale([0.5, 0.4], [0.1] * 5) == [0.2, 1.0]  # rounded down, from the brightest
    assert suggest_intensity_scale([1.0], [0.001] * 5) == [0.05, 1.0]  # the floor
    assert suggest_intensity_scale([1.0, 0.4], [0.33] * 5) is None  # covered: 0.33 >= 0.8 x 0.4
    assert suggest_intensity_scale([1.0], []) is None  # fully supervised: no unlabeled cases


def _scale_images(root, names, factor):
    """Multiply the stored image of each named slice or volume file by `factor` (darker tissue)."""
    import h5py

    for name in names:
        with h5py.File(next(root.rglob(f"{name}.h5")), "r+") as f:
            f["image"][...] = f["image"][()] * factor


def test_data_info_names_volumes_clearly_darker_than_the_darkest_labeled_case(tmp_path, monkeypatch):
    """A phantom with one labeled case darkened to 0.5x: the threshold follows the darkest labeled case
    (0.8 x its 99.5th percentile), so a volume at 0.6x is covered and volumes at 0.2x / 0.3x are not."""
    import json

    from click.testing import CliRunner

    from ssl_mamba.cli import main
    from ssl_mamba.data import generate_phantom, intensity_coverage, make_split

    root = tmp_path / "phantom"
    generate_phantom(root, n_train_patients=3, n_val_patients=1, n_test_patients=2, slices=(2, 3), size=(40, 48))
    source = open_dataset(root)
    split = make_split(source, labeled_cases=2)
    dark_case = split.labeled_cases[1]
    _scale_images(root, [n for n in source.train_slice_names if source.case_of(n) == dark_case], 0.5)
    test, val = source.volume_names("test"), source.volume_names("val")
    _scale_images(root, [test[0]], 0.3)
    _scale_images(root, [test[1]], 0.6)
    _scale_images(root, [test[2], val[0]], 0.2)
    coverage = intensity_coverage(root, 2)
    assert coverage["threshold"] == pytest.approx(0.8 * coverage["labeled"][dark_case])
    assert coverage["labeled"][dark_case] < min(v for c, v in coverage["labeled"].items() if c != dark_case)
    assert [name for name, _ in coverage["darker"]["test"]] == [test[2], test[0]]  # darkest first; 0.6x covered
    assert [name for name, _ in coverage["darker"]["val"]] == [val[0]] and coverage["checked"]["test"] == len(test)
    result = CliRunner().invoke(main, ["data", "info", str(root), "--labeled-cases", "2", "--intensity"])
    assert result.exit_code == 0, result.output
    line = [row for row in result.output.splitlines() if row.startswith("test:")][0]
    assert line.startswith(f"test: 2 of {len(test)} volumes clearly darker than every labeled case")
    assert "data.normalize: percentile" in result.output
    # the unlabeled training cases are as bright as the labeled ones: no intensity range is suggested, however
    # dark the evaluation volumes (they are never used to choose it)
    assert coverage["suggested_intensity_scale"] is None and "intensity_scale" not in result.output
    report = json.loads(CliRunner().invoke(main, ["data", "info", str(root), "--labeled-cases", "2", "--intensity",
                                                  "--json"]).output)
    assert report["intensity"]["darker"]["val"][0][0] == val[0]
    refused = CliRunner().invoke(main, ["data", "info", str(root), "--intensity"])
    assert refused.exit_code == 2 and "give --labeled-cases N" in refused.output
    assert sorted(coverage["volumes"]["test"]) == sorted(test)  # every checked volume, for the figure
    png = tmp_path / "coverage.png"
    caught = _catch_axes(monkeypatch)
    drawn = CliRunner().invoke(main, ["data", "info", str(root), "--labeled-cases", "2", "--intensity",
                                      "--figure", str(png)])
    assert f"figure: {png}" in drawn.output and png.read_bytes()[:4] == b"\x89PNG"
    dots = _lane_dots(caught[0], "unlabeled (training)")
    assert sorted(dots) == pytest.approx(sorted(coverage["unlabeled"].values()))
    assert _bars(caught[0]) == []  # no scale suggested: no bars
    refused = CliRunner().invoke(main, ["data", "info", str(root), "--figure", str(png)])
    assert refused.exit_code == 2 and "give --intensity too" in refused.output


def test_intensity_coverage_counts_missing_volumes_and_names_a_bad_one(tmp_path):
    import h5py

    from ssl_mamba.data import generate_phantom, intensity_coverage

    root = tmp_path / "phantom"
    generate_phantom(root, n_train_patients=3, n_val_patients=1, n_test_patients=2, slices=(2, 3), size=(40, 48))
    test = open_dataset(root).volume_names("test")
    next(root.rglob(f"{test[0]}.h5")).unlink()
    coverage = intensity_coverage(root, 2, splits=("test",))
    assert coverage["not_stored"]["test"] == 1 and coverage["checked"]["test"] == len(test) - 1
    with h5py.File(next(root.rglob(f"{test[1]}.h5")), "r+") as f:
        image = f["image"][()]
        image[0, 0, 0] = np.nan
        f["image"][...] = image
    with pytest.raises(DataError, match=f"volume {test[1]}: image has NaN"):
        intensity_coverage(root, 2, splits=("test",))


def test_training_intensities_hold_one_case_at_a_time():
    """`train` computes them at its start from every training slice: the slices of one case are pooled,
    not the whole training set (Synapse's 2211 slices of 512 x 512 are 2.3 GB as float32)."""
    import tracemalloc
    from types import SimpleNamespace

    from ssl_mamba.data import training_intensities

    class Slices:
        root = "fake"
        train_slice_names = [f"case{c:02d}_slice{s}" for c in range(20) for s in range(10)]

        @staticmethod
        def case_of(name):
            return name.split("_")[0]

        @staticmethod
        def read_slice(name):
            case = int(name[4:6])
            return np.full((128, 128), 0.2 + 0.04 * case, np.float32), np.zeros((128, 128), np.uint8)

    split = SimpleNamespace(labeled_indices=list(range(30)), unlabeled_indices=list(range(30, 200)))
    tracemalloc.start()
    try:
        found = training_intensities(Slices(), split)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(found["labeled"]) == ["case00", "case01", "case02"] and len(found["unlabeled"]) == 17
    assert found["unlabeled"]["case19"] == pytest.approx(0.2 + 0.04 * 19)
    case_bytes = 10 * 128 * 128 * 4
    assert peak < 5 * case_bytes, peak / case_bytes  # the 17 unlabeled cases pooled at once were 17+
