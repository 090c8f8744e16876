"""Packs: one file with slices, volumes and lists; quantisation error bounded and recorded."""
from pathlib import Path

import numpy as np
import pytest

from ssl_mamba.data import dataset_info, generate_phantom, make_split, open_dataset, pack_dataset
from ssl_mamba.errors import DataError


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, n_train_patients=3, n_val_patients=1, n_test_patients=1, slices=(3, 4), size=(30, 36))
    return root


@pytest.mark.parametrize("dtype,levels", [("uint16", 65535), ("uint8", 255)])
def test_pack_round_trip(phantom, tmp_path, dtype, levels):
    meta = pack_dataset(phantom, tmp_path / "p.npz", dtype=dtype)
    assert meta["dtype"] == dtype and meta["bytes"] == (tmp_path / "p.npz").stat().st_size
    assert 0 < meta["max_abs_error"] <= 0.5 / levels + 1e-7
    src, pack = open_dataset(phantom), open_dataset(tmp_path / "p.npz")
    assert pack.kind == "pack" and pack.metadata["dtype"] == dtype
    assert pack.train_slice_names == src.train_slice_names
    for split in ("train", "val", "test"):
        assert pack.volume_names(split) == src.volume_names(split)
    worst = 0.0
    for name in src.train_slice_names:
        (a, la), (b, lb) = src.read_slice(name), pack.read_slice(name)
        assert np.array_equal(la, lb) and b.dtype == np.float32
        worst = max(worst, float(np.abs(a - b).max()))
    for name in src.volume_names("val") + src.volume_names("test"):
        (a, la), (b, lb) = src.read_volume(name), pack.read_volume(name)
        assert np.array_equal(la, lb) and np.abs(a - b).max() <= meta["max_abs_error"] + 1e-7
    assert worst <= meta["max_abs_error"] + 1e-7
    assert make_split(pack, labeled_cases=2).labeled_indices == make_split(src, labeled_cases=2).labeled_indices
    assert dataset_info(tmp_path / "p.npz")["pack"]["dtype"] == dtype


def test_pack_errors(phantom, tmp_path):
    with pytest.raises(DataError, match="choose uint16 or uint8"):
        pack_dataset(phantom, tmp_path / "p.npz", dtype="float16")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"bad.npz: not a readable pack file"):
        open_dataset(bad)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match=r"other.npz: not an ssl-mamba pack"):
        open_dataset(tmp_path / "other.npz")
    pack_dataset(phantom, tmp_path / "p.npz")
    with pytest.raises(DataError, match=r"slice 'nope' is not in the pack"):
        open_dataset(tmp_path / "p.npz").read_slice("nope")


def test_pack_parts_merge_back(phantom, tmp_path):
    """A folder of two parts (for transfers with a size cap) reads exactly like the single file."""
    pack_dataset(phantom, tmp_path / "p.npz", dtype="uint8")
    single = open_dataset(tmp_path / "p.npz")
    meta = pack_dataset(phantom, tmp_path / "parts", dtype="uint8", split_parts=True)
    assert sorted(meta["part_bytes"]) == ["slices.npz", "volumes.npz"]
    assert meta["bytes"] == sum((tmp_path / "parts" / f).stat().st_size for f in meta["part_bytes"])
    parts = open_dataset(tmp_path / "parts")
    assert parts.kind == "pack" and parts.train_slice_names == single.train_slice_names
    for name in single.train_slice_names[:3]:
        assert all(np.array_equal(a, b) for a, b in zip(parts.read_slice(name), single.read_slice(name)))
    for name in single.volume_names("test"):
        assert all(np.array_equal(a, b) for a, b in zip(parts.read_volume(name), single.read_volume(name)))
    (tmp_path / "parts" / "volumes.npz").unlink()
    with pytest.raises(DataError, match=r"lacks its volumes part \(volumes.npz\)"):
        open_dataset(tmp_path / "parts")
