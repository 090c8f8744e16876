"""Checkpoints: atomic writes, loading with clear errors, and the RNG states a resume needs.

`last.pt` is a dict written by the trainer (iteration, method and optimizer states, RNG
states, the data stream's state, best-so-far).  Writes go through `atomic_torch_save`
(temp file in the same folder + fsync + rename), so a SIGKILL during a write leaves the
previous checkpoint intact.  `best_<net>.pth` files hold a network's plain state_dict.
"""
import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..utils.io import atomic_torch_save

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> None:
    """Write a training checkpoint atomically (the old file survives a crash mid-write)."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; a missing or unreadable file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # Our own run-directory file: it holds python/numpy RNG states and the data stream's
        # state, which are not plain tensors, so the full unpickler is needed.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an ssl-mamba training checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def save_network(net: nn.Module, path: Union[str, Path]) -> None:
    """Save a network's plain state_dict (CPU tensors), loadable with `create_model(...).load_state_dict`."""
    atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)


def capture_rng_state() -> Dict[str, Any]:
    """python / numpy / torch CPU (and every CUDA device) generator states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        # A run resumed with fewer visible GPUs than it saved (a row moved from a 4-GPU process to one
        # CUDA_VISIBLE_DEVICES card) restores the devices it can see; device i keeps its own stream.
        for index, device_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.cpu(), index)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) as the original scripts do."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
