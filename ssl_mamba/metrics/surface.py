"""Surface distances between two binary masks, computed once and shared by HD95 and every ASD.

Definitions follow medpy (`medpy.metric.binary.__surface_distances`): the surface of a mask is
the mask minus its erosion by the face-connected structuring element (voxels outside the array
count as background), and a distance is the Euclidean distance, in spacing units, from a surface
voxel of one mask to the nearest surface voxel of the other.

Speed: both masks are cropped to the bounding box of their union plus a one-voxel margin before
eroding and running the distance transforms.  The result is identical to the uncropped one:
inside the margin both masks are background, so erosion sees the same neighbourhoods, and a
Euclidean distance transform measures to the nearest zero wherever that zero lies, so only the
positions of surface voxels matter, and all of them lie inside the crop.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure


@dataclass
class SurfaceDistances:
    """Distances from each surface voxel of `pred` to the `gt` surface, and the reverse."""

    pred_to_gt: np.ndarray  # (number of pred surface voxels,)
    gt_to_pred: np.ndarray  # (number of gt surface voxels,)

    def hd95(self) -> float:
        """95th percentile of both directions pooled (medpy `hd95`)."""
        return float(np.percentile(np.concatenate([self.pred_to_gt, self.gt_to_pred]), 95))

    def asd(self, mode: str = "symmetric") -> float:
        """Average surface distance.

        symmetric: mean over the points of both surfaces (Mamba-UNet paper Eq. 9); this is
                   also medpy >= 0.5's `assd`, which pools both directions;
        medpy_asd: mean of pred->gt only (medpy `asd`, what the SSL4MIS test script reports);
        assd:      mean of the two directional means, (asd(p, g) + asd(g, p)) / 2: medpy 0.4's
                   `assd`, the version of the SSL4MIS / Mamba-UNet era.  It differs from
                   "symmetric" when the two surfaces have different numbers of voxels.
        """
        if mode == "symmetric":
            return float(np.concatenate([self.pred_to_gt, self.gt_to_pred]).mean())
        if mode == "medpy_asd":
            return float(self.pred_to_gt.mean())
        if mode == "assd":
            return float((self.pred_to_gt.mean() + self.gt_to_pred.mean()) / 2.0)
        raise ValueError(f"unknown asd mode {mode!r}")


def _crop_box(a: np.ndarray, b: np.ndarray) -> Tuple[slice, ...]:
    """Bounding box of a | b grown by one voxel on every side, clipped to the array."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        hits = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, union.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    footprint = generate_binary_structure(mask.ndim, 1)
    return mask ^ binary_erosion(mask, structure=footprint, iterations=1)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None) -> SurfaceDistances:
    """Both directed surface-distance sets of two non-empty boolean masks of equal shape.

    One distance transform per surface.  `spacing` is the voxel size per axis (None: unit).
    """
    box = _crop_box(pred, gt)
    pred_surface = _surface(pred[box])
    gt_surface = _surface(gt[box])
    sampling = None if spacing is None else np.asarray(spacing, dtype=np.float64)
    to_gt = distance_transform_edt(~gt_surface, sampling=sampling)
    to_pred = distance_transform_edt(~pred_surface, sampling=sampling)
    return SurfaceDistances(pred_to_gt=to_gt[pred_surface], gt_to_pred=to_pred[gt_surface])
