"""Data layer: datasets in the layouts users have, label-scarce splits, samplers, augmentation, packs."""
from .batch import Batch

__all__ = ["Batch"]
