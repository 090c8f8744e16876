"""Per-slice intensity normalisation (`data.normalize`), an option outside the papers' protocol.

The SSL4MIS ACDC files hold each volume rescaled by its own minimum and maximum, so a few bright
pixels darken a whole volume: at 3 labeled cases the test volumes our networks miss are among the
darkest (results/README.md: the left ventricle of patients 007 / 008 at 0.15-0.17 of the range against
0.41-0.62 in the labeled patients).  `percentile` rescales every 2-D slice so that its 0.5th and 99.5th
percentiles map to 0 and 1 (clipped), for training slices and for the slices of validation and test
volumes alike, so a network sees the same convention everywhere.  `none` (the default, and the papers')
leaves the images as stored.

`normalized_source` wraps a dataset source; everything but the images is the wrapped source's.
"""
from typing import Tuple

import numpy as np

from ..errors import DataError

NORMALIZERS = ("none", "percentile")
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5


def percentile_rescale(image: np.ndarray) -> np.ndarray:
    """Each 2-D slice of `image` (H, W) or (S, H, W) mapped so its LOW / HIGH percentiles become 0 / 1,
    clipped to [0, 1].  A slice whose two percentiles coincide (nearly constant: a few bright pixels on a
    flat background) falls back to its minimum / maximum; a constant slice becomes zeros.  Non-finite
    pixels are a ValueError (they would otherwise turn the whole slice black without a word)."""
    stack = np.asarray(image, dtype=np.float32)
    if not np.isfinite(stack).all():
        raise ValueError("image has non-finite pixels (NaN or inf)")
    flat = stack.reshape(-1, stack.shape[-2] * stack.shape[-1])  # one row per slice
    low, high = np.percentile(flat, [LOW_PERCENTILE, HIGH_PERCENTILE], axis=1)  # (slices,) each
    flat_range = high <= low
    low = np.where(flat_range, flat.min(axis=1), low)
    high = np.where(flat_range, flat.max(axis=1), high)
    span = (high - low)[:, None]
    scaled = np.where(span > 0, (flat - low[:, None]) / np.where(span > 0, span, 1.0), 0.0)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32).reshape(stack.shape)


class NormalizedSource:
    """A dataset source whose slices and volumes come back per-slice normalised (`percentile_rescale`)."""

    def __init__(self, source):
        self.source = source

    def read_slice(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        image, label = self.source.read_slice(name)
        return self._rescaled(image, f"slice {name!r}"), label

    def read_volume(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        image, label = self.source.read_volume(name)
        return self._rescaled(image, f"volume {name!r}"), label

    def _rescaled(self, image: np.ndarray, what: str) -> np.ndarray:
        try:
            return percentile_rescale(image)
        except ValueError as exc:
            raise DataError(f"{self.source.root}: {what}: {exc}; data.normalize=percentile cannot rescale it") from None

    def __getattr__(self, attribute: str):  # names, splits, metadata, case_of: the wrapped source's
        if attribute == "source":  # not set yet (unpickling): no recursion through __getattr__
            raise AttributeError(attribute)
        return getattr(self.source, attribute)

    def __repr__(self) -> str:
        return f"NormalizedSource({self.source!r}, percentile {LOW_PERCENTILE}-{HIGH_PERCENTILE})"


def normalized_source(source, mode: str):
    """`source` itself for "none", else wrapped so its images follow `mode`."""
    if mode == "none":
        return source
    if mode == "percentile":
        return NormalizedSource(source)
    raise ValueError(f"data.normalize is {mode!r}; choose one of {', '.join(NORMALIZERS)}")
