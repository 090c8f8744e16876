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
