"""Shared fixtures.  The real ACDC data lives beside the repository in ../shared (read-only)."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ACDC_ROOT = REPO.parent / "shared" / "datasets" / "ACDC"


@pytest.fixture(scope="session")
def acdc_root() -> Path:
    if not (ACDC_ROOT / "train_slices.list").is_file():
        pytest.skip(f"real ACDC data not found at {ACDC_ROOT}")
    return ACDC_ROOT


def load_script(relative_path: str):
    """A script of the repository (scripts/, benchmarks/) imported as a module by its path: they are
    not packages, and importing them by name would depend on sys.path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_synapse_folder(root: Path) -> Path:
    """A small dataset in the TransUNet Synapse layout: train_npz/<case>_sliceNNN.npz (2 cases of 3
    24x24 slices), test_vol_h5/case0001.npy.h5 (4 slices), lists/lists_Synapse; random labels 0..8."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    lists = root / "lists" / "lists_Synapse"
    for folder in (root / "train_npz", root / "test_vol_h5", lists):
        folder.mkdir(parents=True)
    names = []
    for case in ("case0005", "case0006"):
        for k in range(3):
            names.append(f"{case}_slice{k:03d}")
            np.savez(root / "train_npz" / f"{names[-1]}.npz", image=rng.random((24, 24), dtype=np.float32),
                     label=rng.integers(0, 9, (24, 24)).astype(np.float32))
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as fh:
        fh["image"] = rng.random((4, 24, 24), dtype=np.float32)
        fh["label"] = rng.integers(0, 9, (4, 24, 24)).astype(np.float32)
    (lists / "train.txt").write_text("\n".join(names) + "\n")
    (lists / "test_vol.txt").write_text("case0001\n")
    return root
