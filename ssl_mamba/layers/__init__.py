"""Building blocks of the segmentation networks (depend only on `ssl_mamba.ops`)."""
from .drop_path import DropPath
from .init import init_linear_and_norm
from .norm import ProjectionLayerNorm
from .patches import FinalPatchExpand, PatchEmbed, PatchExpand, PatchMerging, pixel_shuffle_last
from .ss2d import SS2D, VSSBlock, dt_rank_for, inverse_softplus
from .swin import SwinBlock, WindowAttention, relative_position_index, shifted_window_mask, window_partition, \
    window_reverse

__all__ = [
    "DropPath", "init_linear_and_norm", "ProjectionLayerNorm", "PatchEmbed", "PatchMerging", "PatchExpand",
    "FinalPatchExpand", "pixel_shuffle_last", "SS2D", "VSSBlock", "dt_rank_for", "inverse_softplus", "SwinBlock",
    "WindowAttention", "relative_position_index", "shifted_window_mask", "window_partition", "window_reverse",
]
