"""Integer layers."""

from .linear import DynamicQuantLinear, QuantLinear

__all__ = ["DynamicQuantLinear", "QuantLinear"]
