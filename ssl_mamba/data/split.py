"""Label-scarce splits of the training slices: which slices are labeled, which are not.

The papers' "N labeled patients" means the first N patients of `train_slices.list`, which the
originals turn into a slice count with a hand-made table (`patients_to_slices`).  Here the count
is derived by grouping slice names by case, so it is right for any dataset and any N.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..errors import DataError
from .sources import SegmentationSource


@dataclass
class LabeledSplit:
    """Indices into `source.train_slice_names`: labeled first-N part and the unlabeled rest."""

    labeled_indices: List[int]
    unlabeled_indices: List[int]
    labeled_cases: List[str]
    unlabeled_cases: List[str]
    rule: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """What the trainer writes to `split.json` in the run directory."""
        return {
            "rule": dict(self.rule),
            "labeled_slices": len(self.labeled_indices),
            "unlabeled_slices": len(self.unlabeled_indices),
            "labeled_cases": list(self.labeled_cases),
            "unlabeled_cases": list(self.unlabeled_cases),
            "labeled_indices": list(self.labeled_indices),
        }


def cases_in_order(source: SegmentationSource) -> List[str]:
    """Distinct cases of the training slices, in order of first appearance."""
    return list(dict.fromkeys(source.case_of(n) for n in source.train_slice_names))


def make_split(
    source: SegmentationSource,
    labeled_cases: Optional[int] = None,
    labeled_slices: Optional[int] = None,
    labeled_fraction: Optional[float] = None,
) -> LabeledSplit:
    """Split the training slices.  Set at most one rule; none means every slice is labeled.

    labeled_cases=N: every slice of the first N cases (ACDC: 3 -> 68, 7 -> 136, 14 -> 256 slices);
    labeled_slices=K: the first K slices (the originals' literal meaning, may cut a patient);
    labeled_fraction=f: the first max(1, floor(f * n_cases)) cases.
    """
    chosen = {k: v for k, v in (("labeled_cases", labeled_cases), ("labeled_slices", labeled_slices),
                                ("labeled_fraction", labeled_fraction)) if v is not None}
    if len(chosen) > 1:
        raise DataError(f"set only one of {', '.join(chosen)}")
    names = source.train_slice_names
    cases = cases_in_order(source)
    if labeled_slices is not None:
        if not 1 <= labeled_slices <= len(names):
            raise DataError(f"{source.root}: labeled_slices={labeled_slices} but the training list has "
                            f"{len(names)} slices")
        labeled = list(range(labeled_slices))
    else:
        n_cases = len(cases) if not chosen else _cases_from_rule(source, cases, labeled_cases, labeled_fraction)
        keep = set(cases[:n_cases])
        labeled = [i for i, n in enumerate(names) if source.case_of(n) in keep]
    labeled_set = set(labeled)
    unlabeled = [i for i in range(len(names)) if i not in labeled_set]
    lab_cases = list(dict.fromkeys(source.case_of(names[i]) for i in labeled))
    unlab_cases = list(dict.fromkeys(source.case_of(names[i]) for i in unlabeled))
    return LabeledSplit(labeled, unlabeled, lab_cases, unlab_cases, rule=chosen or {"all_labeled": True})


def _cases_from_rule(source: SegmentationSource, cases: List[str], labeled_cases: Optional[int],
                     labeled_fraction: Optional[float]) -> int:
    if labeled_cases is not None:
        if not 1 <= labeled_cases <= len(cases):
            raise DataError(f"{source.root}: labeled_cases={labeled_cases} but the training list has only "
                            f"{len(cases)} cases")
        return labeled_cases
    assert labeled_fraction is not None
    if not 0 < labeled_fraction <= 1:
        raise DataError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    return max(1, math.floor(labeled_fraction * len(cases)))
