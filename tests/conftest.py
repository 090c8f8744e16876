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
