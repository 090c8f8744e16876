"""Evaluation: per-class volume metrics, slice-wise inference, reports, tables and figures.

Figures (`ssl_mamba.metrics.figures`) and tables (`ssl_mamba.metrics.table`) are imported on
use so that scoring does not load matplotlib.
"""
from .case import ASD_MODES, EMPTY_POLICIES, METRIC_NAMES, case_metrics, confusion_matrix, slice_dice
from .evaluate import EvalResult, evaluate_volumes, merge_results, summarize
from .inference import predict_volume, resize_bilinear, resize_nearest
from .report import PAPER_COLUMNS, lowest_cases, paper_row, write_reports
from .surface import SurfaceDistances, surface_distances


def build_table(*args, **kwargs) -> str:
    """See `ssl_mamba.metrics.table.build_table`."""
    from .table import build_table as build

    return build(*args, **kwargs)


__all__ = [
    "ASD_MODES", "EMPTY_POLICIES", "METRIC_NAMES", "PAPER_COLUMNS", "EvalResult", "SurfaceDistances", "build_table",
    "case_metrics", "confusion_matrix", "evaluate_volumes", "lowest_cases", "merge_results", "paper_row",
    "predict_volume", "resize_bilinear", "resize_nearest", "slice_dice", "summarize", "surface_distances",
    "write_reports",
]
