"""Bad input: each case is one DataError naming the file and the problem."""
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssl_mamba.config import DataConfig
from ssl_mamba.data import build_train_stream, check_dataset, make_split, open_dataset
from ssl_mamba.errors import DataError


def _slice(path: Path, image=None, label=None, keys=("image", "label")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        if "image" in keys:
            fh["image"] = np.zeros((8, 8), np.float32) if image is None else image
        if "label" in keys:
            fh["label"] = np.zeros((8, 8), np.uint8) if label is None else label


def _dataset(root: Path, names=("p001_frame01_slice_1", "p001_frame01_slice_2")) -> Path:
    for n in names:
        _slice(root / "data" / "slices" / f"{n}.h5")
    (root / "train_slices.list").write_text("".join(n + "\n" for n in names))
    return root


def test_missing_root_says_what_layout_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"nowhere does not exist; expected an SSL4MIS folder \(train_slices.list"):
        open_dataset(tmp_path / "nowhere")


def test_empty_list(tmp_path):
    _dataset(tmp_path)
    (tmp_path / "train_slices.list").write_text("\n")
    with pytest.raises(DataError, match=r"train_slices.list is empty"):
        open_dataset(tmp_path)


def test_list_names_a_missing_file(tmp_path):
    _dataset(tmp_path)
    (tmp_path / "train_slices.list").write_text("p001_frame01_slice_1\nghost_slice_3\n")
    src = open_dataset(tmp_path)
    with pytest.raises(DataError, match=r"ghost_slice_3.h5: file does not exist \(named in .*train_slices.list"):
        src.read_slice("ghost_slice_3")
    assert "file does not exist" in check_dataset(tmp_path, 4)[0]


def test_h5_without_label(tmp_path):
    _dataset(tmp_path)
    _slice(tmp_path / "data" / "slices" / "p001_frame01_slice_2.h5", keys=("image",))
    with pytest.raises(DataError, match=r"p001_frame01_slice_2.h5: no dataset 'label' \(found: image\)"):
        open_dataset(tmp_path).read_slice("p001_frame01_slice_2")


def test_shape_mismatch(tmp_path):
    _dataset(tmp_path)
    _slice(tmp_path / "data" / "slices" / "p001_frame01_slice_1.h5", label=np.zeros((8, 7), np.uint8))
    with pytest.raises(DataError, match=r"slice_1.h5: image shape \(8, 8\) and label shape \(8, 7\)"):
        open_dataset(tmp_path).read_slice("p001_frame01_slice_1")


def test_corrupt_truncated_h5(tmp_path):
    _dataset(tmp_path)
    path = tmp_path / "data" / "slices" / "p001_frame01_slice_1.h5"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"slice_1.h5: cannot read HDF5 file, corrupt or truncated"):
        open_dataset(tmp_path).read_slice("p001_frame01_slice_1")


@pytest.mark.parametrize("workers", [0, 1])
def test_label_values_beyond_num_classes_in_the_stream(tmp_path, workers):
    _dataset(tmp_path)
    _slice(tmp_path / "data" / "slices" / "p001_frame01_slice_2.h5", label=np.full((8, 8), 5, np.uint8))
    src = open_dataset(tmp_path)
    cfg = DataConfig(root=str(tmp_path), patch_size=[8, 8], num_workers=workers, augment="none")
    stream = build_train_stream(cfg, src, make_split(src), 2, None, 0, "cpu")
    try:
        with pytest.raises(DataError) as info:
            next(stream)
    finally:
        stream.close()
    msg = str(info.value)
    assert "\n" not in msg and "p001_frame01_slice_2" in msg and "label value 5 >= data.num_classes (4)" in msg


def test_batch_larger_than_labeled_or_unlabeled_pool(tmp_path):
    _dataset(tmp_path, names=[f"p00{i}_frame01_slice_1" for i in range(1, 5)])
    src = open_dataset(tmp_path)
    cfg = DataConfig(root=str(tmp_path), patch_size=[8, 8], num_workers=0)
    with pytest.raises(DataError, match=r"only 1 labeled slices, fewer than labeled_batch_size \(2\)"):
        build_train_stream(cfg, src, make_split(src, labeled_cases=1), 4, 2, 0, "cpu")
    with pytest.raises(DataError, match=r"only 1 unlabeled slices, fewer than the unlabeled part .* = 2\)"):
        build_train_stream(cfg, src, make_split(src, labeled_cases=3), 4, 2, 0, "cpu")
    with pytest.raises(DataError, match=r"only 2 labeled slices, fewer than batch_size \(4\)"):
        build_train_stream(cfg, src, make_split(src, labeled_cases=2), 4, None, 0, "cpu")
