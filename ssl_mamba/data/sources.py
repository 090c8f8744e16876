"""Segmentation sources: read slices and volumes from the on-disk layouts users already have.

Three layouts, one interface (`SegmentationSource`):

* SSL4MIS (ACDC, PROMISE12, the phantom): `train_slices.list`, `train.list`, `val.list`,
  `test.list` beside a `data/` folder holding `slices/<name>.h5` (2-D image float32 HxW +
  label uint8 HxW) and `<name>.h5` volumes (SxHxW, slice axis first).  The flat variant keeps
  the slice files directly in `data/`.
* TransUNet Synapse: `train_npz/<case>_sliceNNN.npz` (keys image, label),
  `test_vol_h5/<case>.npy.h5` (SxHxW), lists in `lists/lists_Synapse/{train,test_vol}.txt`.
* A pack file written by `pack_dataset` (see `pack.py`), read fully into memory.

Every read error becomes one `DataError` naming the file and the problem.
"""
import re
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

from ..errors import DataError

PathLike = Union[str, Path]
SPLITS = ("train", "val", "test")
SSL4MIS_EXPECTED = (
    "an SSL4MIS folder (train_slices.list, val.list, test.list, data/slices/<name>.h5 or data/<name>.h5), "
    "a TransUNet Synapse folder (train_npz/, test_vol_h5/, lists/lists_Synapse/train.txt) "
    "or a pack file written by `ssl-mamba data pack`"
)
_SLICE_SUFFIX = re.compile(r"_slice_?\d+$")
_FRAME_SUFFIX = re.compile(r"_frame\d+$")


def case_of(name: str) -> str:
    """The patient/case a slice or volume name belongs to.

    `patient099_frame01_slice_15` -> `patient099` (both frames are one patient);
    `case0005_slice012` -> `case0005`; `Case03_slice_7` -> `Case03`.
    """
    return _FRAME_SUFFIX.sub("", _SLICE_SUFFIX.sub("", name))


def read_list(path: Path, required: bool = True) -> List[str]:
    """Names in a list file, one per line, blank lines ignored.  A missing required list or an
    empty list is a DataError; a missing optional list reads as []."""
    if not path.is_file():
        if required:
            raise DataError(f"list file {path} does not exist")
        return []
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if required and not names:
        raise DataError(f"list file {path} is empty")
    return names


def read_h5_pair(path: Path, ndim: int) -> Tuple[np.ndarray, np.ndarray]:
    """Read datasets `image` (float32) and `label` (uint8) of `ndim` dims from an h5 file."""
    import h5py

    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in ("image", "label") if k not in fh]
            if missing:
                raise DataError(f"{path}: no dataset '{missing[0]}' (found: {', '.join(fh.keys()) or 'nothing'})")
            image, label = fh["image"][()], fh["label"][()]
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise DataError(f"{path}: cannot read HDF5 file, corrupt or truncated? ({exc})") from None
    return check_pair(image, label, path, ndim)


def read_npz_pair(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Read keys `image`, `label` of a 2-D TransUNet `.npz` slice."""
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        with np.load(path) as data:
            missing = [k for k in ("image", "label") if k not in data.files]
            if missing:
                raise DataError(f"{path}: no array '{missing[0]}' (found: {', '.join(data.files) or 'nothing'})")
            image, label = data["image"], data["label"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read .npz file, corrupt or truncated? ({exc})") from None
    return check_pair(image, label, path, 2)


def check_pair(image: np.ndarray, label: np.ndarray, where: PathLike, ndim: int) -> Tuple[np.ndarray, np.ndarray]:
    """Check shapes and label values; return (image float32, label uint8)."""
    if image.ndim != ndim or image.shape != label.shape:
        raise DataError(
            f"{where}: image shape {tuple(image.shape)} and label shape {tuple(label.shape)} must be equal "
            f"and {ndim}-D"
        )
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255 or not np.all(np.equal(np.mod(label, 1), 0))):
            raise DataError(f"{where}: label values must be integers in 0..255, got dtype {label.dtype}")
        label = label.astype(np.uint8)
    return np.asarray(image, dtype=np.float32), label


class SegmentationSource(ABC):
    """What the rest of the library reads data through (see docs/DESIGN.md)."""

    kind: str = ""

    def __init__(self, root: Path, train_slice_names: List[str]):
        self.root = root
        self.train_slice_names = train_slice_names
        self.metadata: Dict[str, object] = {"kind": self.kind}

    def case_of(self, name: str) -> str:
        return case_of(name)

    @abstractmethod
    def read_slice(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """(image float32 HxW, label uint8 HxW) of a training slice."""

    @abstractmethod
    def volume_names(self, split: str) -> List[str]:
        """Volume names of `split` (train / val / test) in list order."""

    @abstractmethod
    def read_volume(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """(image float32 SxHxW, label uint8 SxHxW), slice axis first."""

    @abstractmethod
    def has_volume(self, name: str) -> bool:
        """Whether volume `name` is stored (ACDC lists training volumes it does not ship)."""

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"{self.root}: unknown split {split!r}; choose one of {', '.join(SPLITS)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self.train_slice_names)} training slices)"


class SSL4MISSource(SegmentationSource):
    """ACDC / PROMISE12 / phantom folders in the SSL4MIS layout (nested or flat slices)."""

    kind = "ssl4mis"

    def __init__(self, root: Path):
        super().__init__(root, read_list(root / "train_slices.list"))
        self.data_dir = root / "data"
        if not self.data_dir.is_dir():
            raise DataError(f"{root}: no data/ folder; expected {SSL4MIS_EXPECTED}")
        self._lists = {s: read_list(root / f"{s}.list", required=False) for s in SPLITS}

    def slice_path(self, name: str) -> Path:
        nested = self.data_dir / "slices" / f"{name}.h5"
        flat = self.data_dir / f"{name}.h5"
        if nested.is_file() or not flat.is_file():
            return nested
        return flat

    def read_slice(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        path = self.slice_path(name)
        if not path.is_file():
            raise DataError(
                f"{path}: file does not exist (named in {self.root / 'train_slices.list'}; "
                f"also looked for {self.data_dir / (name + '.h5')})"
            )
        return read_h5_pair(path, 2)

    def volume_path(self, name: str) -> Path:
        return self.data_dir / f"{name}.h5"

    def volume_names(self, split: str) -> List[str]:
        self._check_split(split)
        return list(self._lists[split])

    def read_volume(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        return read_h5_pair(self.volume_path(name), 3)

    def has_volume(self, name: str) -> bool:
        return self.volume_path(name).is_file()


class SynapseSource(SegmentationSource):
    """The TransUNet Synapse layout.  Validation uses `val.txt` when present, else `test_vol.txt`
    (the originals validate on the test volumes; there is no separate val list)."""

    kind = "synapse"

    def __init__(self, root: Path):
        self.list_dir = self._find_lists(root)
        super().__init__(root, read_list(self.list_dir / "train.txt"))
        self._test = read_list(self.list_dir / "test_vol.txt", required=False)
        self._val = read_list(self.list_dir / "val.txt", required=False) or list(self._test)

    @staticmethod
    def _find_lists(root: Path) -> Path:
        for cand in (root / "lists" / "lists_Synapse", root / "lists_Synapse", root / "lists", root):
            if (cand / "train.txt").is_file():
                return cand
        raise DataError(f"{root}: no lists/lists_Synapse/train.txt; expected {SSL4MIS_EXPECTED}")

    def read_slice(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        return read_npz_pair(self.root / "train_npz" / f"{name}.npz")

    def volume_path(self, name: str) -> Path:
        return self.root / "test_vol_h5" / f"{name}.npy.h5"

    def volume_names(self, split: str) -> List[str]:
        self._check_split(split)
        return {"train": [], "val": list(self._val), "test": list(self._test)}[split]

    def read_volume(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        return read_h5_pair(self.volume_path(name), 3)

    def has_volume(self, name: str) -> bool:
        return self.volume_path(name).is_file()


_KIND_ALIASES = {"acdc": "ssl4mis", "promise12": "ssl4mis", "phantom": "ssl4mis", "prostate": "ssl4mis"}


def detect_kind(root: Path) -> str:
    """'pack' for a file or a folder of pack parts, 'synapse' for a folder with train_npz/,
    'ssl4mis' for train_slices.list."""
    if not root.exists():
        raise DataError(f"dataset root {root} does not exist; expected {SSL4MIS_EXPECTED}")
    if root.is_file():
        return "pack"
    if (root / "train_npz").is_dir():
        return "synapse"
    if (root / "train_slices.list").is_file():
        return "ssl4mis"
    if any(root.glob("*.npz")):
        return "pack"  # a folder of pack parts
    raise DataError(f"{root}: not a dataset folder (no train_slices.list, no train_npz/); expected {SSL4MIS_EXPECTED}")


def open_dataset(root: PathLike, kind: str = "auto") -> SegmentationSource:
    """Open a dataset folder or pack file.  `kind`: auto | ssl4mis | synapse | pack, or a dataset
    name (acdc, promise12, phantom are SSL4MIS layouts)."""
    root = Path(root).expanduser()
    kind = _KIND_ALIASES.get(kind.lower(), kind.lower())
    if kind == "auto":
        kind = detect_kind(root)
    elif not root.exists():
        raise DataError(f"dataset root {root} does not exist; expected {SSL4MIS_EXPECTED}")
    if kind == "ssl4mis":
        return SSL4MISSource(root)
    if kind == "synapse":
        return SynapseSource(root)
    if kind == "pack":
        from .pack import PackSource

        return PackSource(root)
    raise DataError(f"unknown dataset kind {kind!r}; choose auto, ssl4mis, synapse or pack")


def slice_shape_summary(shapes: List[Tuple[int, ...]]) -> Dict[str, int]:
    """{'HxW': count} sorted by count, for reports."""
    counts: Dict[str, int] = {}
    for shp in shapes:
        key = "x".join(str(s) for s in shp)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
