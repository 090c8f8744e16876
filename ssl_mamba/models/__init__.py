"""Segmentation networks and the discriminator, built by name.

    create_model(name, in_chans=1, num_classes=4, **kwargs) -> nn.Module
    list_models() -> sorted names;  register_model(name) decorator
    load_pretrained(model, path) -> LoadReport(loaded, skipped, mismatched)

Segmenters expose `input_multiple` / `fixed_input_size` and `check_input_size(h, w)`.
"""
import inspect
from typing import Any, List

from torch import nn

from ..errors import UserError
from ..utils.log import get_logger
from . import discriminator, mamba_unet, swin_unet, unet  # noqa: F401  (register the models)
from .base import InputSizeError, Segmenter
from .discriminator import FCDiscriminator
from .mamba_unet import MambaUNet
from .pretrained import LoadReport, load_pretrained
from .registry import MODELS, register_model
from .swin_unet import SwinUNet
from .unet import UNet

log = get_logger(__name__)

# Options a caller may pass to every model (the trainer passes the config's scan backend to all
# networks); models that do not use them ignore them.
SHARED_OPTIONS = ("scan_backend",)


def list_models() -> List[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def create_model(name: str, in_chans: int = 1, num_classes: int = 4, **kwargs: Any) -> nn.Module:
    """Build model `name`.  Unknown names or keyword arguments raise a UserError naming them."""
    factory = MODELS.get(name)
    accepted = inspect.signature(factory).parameters
    for key in SHARED_OPTIONS:
        if key in kwargs and key not in accepted:
            log.debug("model %s ignores option %s=%r", name, key, kwargs.pop(key))
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        options = ", ".join(p for p in accepted if p not in ("in_chans", "num_classes")) or "none"
        raise UserError(f"model {name!r} has no option {', '.join(unknown)}; its options: {options}")
    return factory(in_chans=in_chans, num_classes=num_classes, **kwargs)


__all__ = ["create_model", "list_models", "register_model", "load_pretrained", "LoadReport", "MODELS",
           "Segmenter", "InputSizeError", "MambaUNet", "SwinUNet", "UNet", "FCDiscriminator"]
