"""Ramp-up schedules for unsupervised weights (SSL4MIS `utils/ramps.py`)."""
import math


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """exp(-5 (1 - t)^2) with t = clip(current, 0, L) / L; 1.0 when L == 0 (Laine & Aila 2017)."""
    if rampup_length < 0:
        raise ValueError(f"sigmoid_rampup: rampup_length must be >= 0, got {rampup_length}")
    if rampup_length == 0:
        return 1.0
    t = min(max(float(current), 0.0), float(rampup_length)) / float(rampup_length)
    phase = 1.0 - t
    return float(math.exp(-5.0 * phase * phase))


def consistency_weight(step: int, consistency: float, rampup: float, epoch_iters: int) -> float:
    """w(step) = consistency * sigmoid_rampup(step // epoch_iters, rampup).

    The originals count the ramp in "epochs" of 150 iterations (integer division), so
    w(0) = 6.7379e-4, w(15000) = 0.0286505, w(30000) = 0.1 with consistency 0.1, rampup 200.
    """
    if epoch_iters < 1:
        raise ValueError(f"consistency_weight: epoch_iters must be >= 1, got {epoch_iters}")
    return consistency * sigmoid_rampup(step // epoch_iters, rampup)
