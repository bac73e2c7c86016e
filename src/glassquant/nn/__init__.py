"""Integer layers. Importing this package registers every layer kind for ``glassquant.load``."""

from .base import LAYER_KINDS, QuantModule, register
from .conv import QuantConv1d, QuantConv2d
from .embedding import QuantEmbedding
from .linear import DynamicQuantLinear, QuantLinear
from .weight_only import WeightOnlyLinear

__all__ = ["LAYER_KINDS", "DynamicQuantLinear", "QuantConv1d", "QuantConv2d", "QuantEmbedding", "QuantLinear",
           "QuantModule",
           "WeightOnlyLinear", "register"]
