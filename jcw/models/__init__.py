"""Base networks, by name. A new torchvision CNN is one entry in `registry.MODELS`."""
from jcw.models.registry import MODELS, create_model

__all__ = ["MODELS", "create_model"]
