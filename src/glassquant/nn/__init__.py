"""Integer layers."""

from .base import LAYER_KINDS, QuantModule, register
from .linear import DynamicQuantLinear, QuantLinear

__all__ = ["LAYER_KINDS", "DynamicQuantLinear", "QuantLinear", "QuantModule", "register"]
