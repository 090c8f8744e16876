"""The model registry (kept apart from `__init__` so model modules can register without cycles)."""
from ..registry import Registry

MODELS = Registry("model")
register_model = MODELS.register
