"""Datasets in the users' layouts (real ACDC subset, flat variant, TransUNet Synapse), splits, info/check."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from ssl_mamba.data import case_of, check_dataset, dataset_info, generate_phantom, make_split, open_dataset
from ssl_mamba.errors import DataError

from conftest import write_synapse_folder

ACDC = Path(__file__).resolve().parents[2] / "shared/datasets/ACDC"
needs_acdc = pytest.mark.skipif(not (ACDC / "train_slices.list").is_file(),
                                reason=f"real ACDC data not found at {ACDC}")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, n_train_patients=3, n_val_patients=1, n_test_patients=1, slices=(3, 4), size=(40, 48))
    return root


def test_case_of_groups_frames_and_synapse_slices():
    assert case_of("patient099_frame01_slice_15") == "patient099"
    assert case_of("patient099_frame02_slice_1") == "patient099"
    assert case_of("patient001_frame01") == "patient001"
    assert case_of("case0005_slice012") == "case0005"
    assert case_of("Case03_slice_7") == "Case03"


@needs_acdc
def test_acdc_labeled_cases_match_the_papers_slice_counts():
    src = open_dataset(ACDC)
    assert len(src.train_slice_names) == 1312
    counts = {n: len(make_split(src, labeled_cases=n).labeled_indices) for n in (3, 7, 14)}
    assert counts == {3: 68, 7: 136, 14: 256}
    split = make_split(src, labeled_cases=3)
    assert split.labeled_cases == ["patient099", "patient038", "patient050"]
    assert split.labeled_indices == list(range(68)) and len(split.unlabeled_indices) == 1312 - 68
    assert split.to_dict()["labeled_slices"] == 68 and split.to_dict()["unlabeled_cases"][0] == "patient100"
    with pytest.raises(DataError, match=r"labeled_cases=71 .* 70 cases"):
        make_split(src, labeled_cases=71)
    assert len(make_split(src, labeled_slices=14).labeled_indices) == 14
    assert len(make_split(src, labeled_fraction=0.1).labeled_cases) == 7


@needs_acdc
def test_acdc_slice_and_volume_reads():
    src = open_dataset(ACDC)
    image, label = src.read_slice(src.train_slice_names[0])
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape and image.ndim == 2
    assert 0.0 <= image.min() and image.max() <= 1.0 and set(np.unique(label)) <= {0, 1, 2, 3}
    assert len(src.volume_names("val")) == 20 and len(src.volume_names("test")) == 40
    vol, vlab = src.read_volume(src.volume_names("val")[0])
    assert vol.ndim == 3 and vol.shape == vlab.shape and vol.min() == 0.0 and vol.max() == 1.0
    assert not src.has_volume(src.volume_names("train")[0])  # ACDC ships no training volumes


@needs_acdc
def test_flat_layout_reads_like_nested(tmp_path):
    """Some public copies keep every slice directly in data/: the same names must load."""
    src = open_dataset(ACDC)
    names = src.train_slice_names[:3]
    (tmp_path / "data").mkdir()
    for name in names:
        shutil.copy(ACDC / "data" / "slices" / f"{name}.h5", tmp_path / "data" / f"{name}.h5")
    (tmp_path / "train_slices.list").write_text("\n".join(names) + "\n")
    flat = open_dataset(tmp_path, kind="acdc")
    for name in names:
        a, b = flat.read_slice(name), src.read_slice(name)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_synapse_transunet_layout(tmp_path):
    write_synapse_folder(tmp_path)
    src = open_dataset(tmp_path)
    assert src.kind == "synapse" and len(src.train_slice_names) == 6
    image, label = src.read_slice("case0006_slice001")
    assert image.shape == (24, 24) and label.dtype == np.uint8 and label.max() <= 8
    assert src.volume_names("test") == ["case0001"] and src.volume_names("val") == ["case0001"]
    vol, vlab = src.read_volume("case0001")
    assert vol.shape == vlab.shape == (4, 24, 24)
    split = make_split(src, labeled_cases=1)
    assert split.labeled_cases == ["case0005"] and len(split.labeled_indices) == 3
    assert check_dataset(tmp_path, num_classes=9) == []
    assert any("label value 8 >= num_classes (4)" in p for p in check_dataset(tmp_path, num_classes=4))


def test_dataset_info_and_check_on_phantom(phantom):
    info = dataset_info(phantom, labeled_cases=1)
    src = open_dataset(phantom)
    assert info["train_slices"] == len(src.train_slice_names) and info["train_cases"] == 3
    assert info["labeled_cases"] == 1 and info["labeled_slices"] + info["unlabeled_slices"] == info["train_slices"]
    assert info["label_values"] == [0, 1, 2, 3] and info["num_classes"] == 4
    assert info["volumes"]["val"]["volumes_stored"] == 2 and info["volumes"]["train"]["volumes_stored"] == 0
    assert sum(info["slice_sizes"].values()) == info["train_slices"]
    assert check_dataset(phantom, 4) == []
    assert check_dataset(phantom, 3)[0].endswith(">= num_classes (3)")
