"""Surface distances between two binary masks, computed once and shared by HD95 and every ASD.

Definitions follow medpy (`medpy.metric.binary.__surface_distances`): the surface of a mask is
the mask minus its erosion by the face-connected structuring element (voxels outside the array
count as background), and a distance is the Euclidean distance, in spacing units, from a surface
voxel of one mask to the nearest surface voxel of the other.

Speed: both masks are cropped to the bounding box of their union plus a one-voxel margin before
eroding.  The result is identical to the uncropped one: inside the margin both masks are background,
so erosion sees the same neighbourhoods, and only the positions of surface voxels matter, all of
which lie inside the crop.  The nearest-surface distances then come from one of two exact methods,
whichever is cheaper for the pair: Euclidean distance transforms of the crop (time in proportion to
the crop's voxels) or a k-d tree over the surface voxels' coordinates (time in proportion to the
surface voxels, times a log).  A compact prediction has a tight crop: transforms.  A fragmented one,
with false positives far from the target, stretches the crop over most of the image while its
surfaces stay small: the tree, several times faster there (benchmarks/RESULTS.md, Evaluation speed).
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
from scipy.spatial import cKDTree

# Crop voxels per surface voxel above which the k-d tree beats the two distance transforms
# (measured on ACDC validation volumes, 2-core workstation: the two cost the same near 8).
TREE_ABOVE_CROP_PER_SURFACE_VOXEL = 8.0


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

    One distance transform per surface, or one k-d tree query per direction where that is cheaper
    (module docstring).  `spacing` is the voxel size per axis (None: unit).
    """
    box = _crop_box(pred, gt)
    pred_surface = _surface(pred[box])
    gt_surface = _surface(gt[box])
    sampling = None if spacing is None else np.asarray(spacing, dtype=np.float64)
    surface_voxels = int(np.count_nonzero(pred_surface)) + int(np.count_nonzero(gt_surface))
    if pred_surface.size > TREE_ABOVE_CROP_PER_SURFACE_VOXEL * surface_voxels:
        return _tree_distances(pred_surface, gt_surface, sampling)
    to_gt = distance_transform_edt(~gt_surface, sampling=sampling)
    to_pred = distance_transform_edt(~pred_surface, sampling=sampling)
    return SurfaceDistances(pred_to_gt=to_gt[pred_surface], gt_to_pred=to_pred[gt_surface])


def _tree_distances(pred_surface: np.ndarray, gt_surface: np.ndarray,
                    sampling: Optional[np.ndarray]) -> SurfaceDistances:
    """The same distances as the transforms, from nearest-neighbour queries between the two surfaces'
    voxel coordinates (scaled by the spacing), in the transforms' order (C order of the crop)."""
    scale = 1.0 if sampling is None else sampling
    pred_points = np.argwhere(pred_surface) * scale
    gt_points = np.argwhere(gt_surface) * scale
    pred_to_gt, _ = cKDTree(gt_points).query(pred_points)
    gt_to_pred, _ = cKDTree(pred_points).query(gt_points)
    return SurfaceDistances(pred_to_gt=pred_to_gt, gt_to_pred=gt_to_pred)
