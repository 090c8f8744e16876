"""The batch every method receives: labeled rows first, then unlabeled rows."""
from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass
class Batch:
    """A training batch.

    image: (N, 1, H, W) float32; label: (N, H, W) int64.  Rows [0, n_labeled) are labeled; the
    labels of the other rows are not to be used (they are kept only so shapes stay uniform).
    `indices` are the dataset slice indices, for logging/debugging.
    """

    image: torch.Tensor
    label: torch.Tensor
    n_labeled: int
    indices: Optional[torch.Tensor] = None

    @property
    def size(self) -> int:
        return self.image.shape[0]

    @property
    def labeled_image(self) -> torch.Tensor:
        return self.image[: self.n_labeled]

    @property
    def labeled_label(self) -> torch.Tensor:
        return self.label[: self.n_labeled]

    @property
    def unlabeled_image(self) -> torch.Tensor:
        return self.image[self.n_labeled:]

    @property
    def n_unlabeled(self) -> int:
        return self.size - self.n_labeled

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return replace(
            self,
            image=self.image.to(device, non_blocking=non_blocking),
            label=self.label.to(device, non_blocking=non_blocking),
        )
