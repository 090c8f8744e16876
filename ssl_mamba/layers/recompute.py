"""Recompute a cheap, activation-heavy piece of a network in the backward instead of saving it.

For a few regions the tensors autograd would keep are large while the work to rebuild them is
small (a LayerNorm, an elementwise gate, a depthwise convolution): there keeping only the region's
inputs and running it again during the backward lowers the training step's peak memory for a
fraction of a millisecond.  `benchmarks/saved_activations.py` counts what each region saves.
"""
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint


def recompute_in_backward(fn: Callable[..., torch.Tensor], *args: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """fn(*args); when autograd records (and `enabled`), only args are kept and fn runs again in
    the backward.  `enabled=False` is a plain call that saves what fn's ops save.

    fn must be deterministic (no dropout, no random draws): the RNG state is not replayed, which
    also keeps the call free of RNG-state reads that CUDA graph capture would not allow.
    Autocast's state at the call is reapplied during the recomputation.
    """
    if not enabled or not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
