"""Data layer: datasets in the layouts users have, label-scarce splits, samplers, augmentation, packs."""
from .augment import (batched_affine, batched_intensity_scale, cutout, gaussian_noise, intensity_jitter,
                      random_generator, random_intensity_scale, strong_view, weak_view)
from .batch import Batch
from .inspect import check_dataset, dataset_info, intensity_coverage, suggest_intensity_scale, training_intensities
from .normalize import NormalizedSource, normalized_source, percentile_rescale
from .pack import PackSource, pack_dataset
from .phantom import generate_phantom
from .samplers import ShuffleSampler, TwoStreamSampler
from .sources import SegmentationSource, SSL4MISSource, SynapseSource, case_of, open_dataset
from .split import LabeledSplit, make_split
from .stream import SliceDataset, TrainStream, build_train_stream

__all__ = [
    "Batch", "SegmentationSource", "SSL4MISSource", "SynapseSource", "PackSource", "open_dataset", "case_of",
    "LabeledSplit", "make_split", "TwoStreamSampler", "ShuffleSampler", "SliceDataset", "TrainStream",
    "build_train_stream", "random_generator", "batched_affine", "intensity_jitter", "gaussian_noise", "cutout",
    "weak_view", "strong_view", "random_intensity_scale", "batched_intensity_scale", "pack_dataset", "dataset_info",
    "check_dataset", "intensity_coverage", "suggest_intensity_scale", "training_intensities",
    "generate_phantom",
    "NormalizedSource", "normalized_source", "percentile_rescale",
]
