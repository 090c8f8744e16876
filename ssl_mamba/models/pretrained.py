"""Load ImageNet encoder weights (VMamba-Tiny / Swin-Tiny) into a U-shaped segmenter.

Mirrors the originals' `load_from`: every `layers.i.*` key is duplicated as `layers_up.(n-1-i).*`
so the decoder blocks start from the encoder stage of the same width, keys whose shape differs
from the model are dropped, and the rest loads non-strictly into the inner net.  Unlike the
original, the outcome is reported, and a missing file or a file that matches nothing is an error.
"""
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Union

import torch
from torch import nn

from ..errors import UserError
from ..utils.log import get_logger

log = get_logger(__name__)

INNER_NET_ATTRS = ("mamba_unet", "swin_unet")
STRIP_PREFIXES = ("module.",) + tuple(f"{a}." for a in INNER_NET_ATTRS)
_STAGE_KEY = re.compile(r"^layers\.(\d+)\.(.*)$")


@dataclass
class LoadReport:
    """Names (in the inner net's namespace) of checkpoint keys that loaded, had no counterpart in
    the model (skipped), or had a counterpart of another shape (mismatched)."""

    loaded: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)


def inner_network(model: nn.Module) -> nn.Module:
    """The module the checkpoint keys refer to: `model.mamba_unet` / `model.swin_unet`, else `model`."""
    for attr in INNER_NET_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Module):
            return getattr(model, attr)
    return model


def read_checkpoint(path: Union[str, Path], allow_pickle: bool = True) -> Dict[str, torch.Tensor]:
    """Read a state dict from `path`: {"model": sd} (VMamba / Swin training format) or a bare sd.

    Tries a tensors-only load first; training checkpoints that also pickle config objects need
    `allow_pickle` (only for files you trust).  Errors name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # refused by the tensors-only loader, or not a pickle at all
        if not allow_pickle:
            raise UserError(f"cannot read pretrained checkpoint {path} without full unpickling: {err}") from err
        ckpt = _load_trusted(path)
    except Exception as err:  # torch.load raises many types on a corrupt file; report one clear line
        raise UserError(f"cannot read pretrained checkpoint {path}: {err}") from err
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"pretrained checkpoint {path} is not a state dict nor a {{'model': state_dict}} file")
    return state


def _load_trusted(path: Path) -> object:
    """Full-pickle load of a checkpoint that also stores config objects (VMamba training files)."""
    log.warning("%s holds non-tensor objects; loading it with full unpickling (trusted file)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # any failure of an unreadable file becomes one clear line
        raise UserError(f"cannot read pretrained checkpoint {path}: {err}") from err


def normalise_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop `module.` / `mamba_unet.` / `swin_unet.` prefixes so keys are in the inner net's namespace."""
    out = {}
    for key, value in state.items():
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def mirror_encoder_to_decoder(state: Dict[str, torch.Tensor], num_stages: int) -> Dict[str, torch.Tensor]:
    """Add `layers_up.(n-1-i).rest` for every `layers.i.rest` key.

    A checkpoint that already has a decoder (`layers_up.*`, e.g. one saved from this library) is
    returned unchanged: mirroring is only for encoder-only ImageNet files.
    """
    if any(key.startswith("layers_up.") for key in state):
        return dict(state)
    out = dict(state)
    for key, value in state.items():
        match = _STAGE_KEY.match(key)
        if match and int(match.group(1)) < num_stages:
            out[f"layers_up.{num_stages - 1 - int(match.group(1))}.{match.group(2)}"] = value
    return out


def load_pretrained(model: nn.Module, path: Union[str, Path], allow_pickle: bool = True) -> LoadReport:
    """Load encoder weights from `path` into `model` (see module docstring); returns a LoadReport.

    Raises UserError naming the file when it is missing, unreadable, or when no key matches.
    """
    net = inner_network(model)
    state = normalise_keys(read_checkpoint(path, allow_pickle))
    num_stages = len(getattr(net, "layers", [])) or 4
    state = mirror_encoder_to_decoder(state, num_stages)
    own = net.state_dict()
    report = LoadReport()
    for key, value in state.items():
        if key not in own:
            report.skipped.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append(key)
        else:
            report.loaded.append(key)
    if not report.loaded:
        sample = ", ".join(sorted(state)[:5])
        raise UserError(f"pretrained checkpoint {path} matches no parameter of {type(model).__name__} "
                        f"({len(report.skipped)} unknown keys, e.g. {sample}; "
                        f"{len(report.mismatched)} of another shape)")
    net.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    log.info("pretrained %s: loaded %d tensors, skipped %d unknown keys, %d shape mismatches; "
             "%d model tensors keep their initialisation", path, len(report.loaded), len(report.skipped),
             len(report.mismatched), len(set(own) - set(report.loaded)))
    if report.mismatched:
        log.info("shape mismatches: %s", ", ".join(report.mismatched))
    return report
