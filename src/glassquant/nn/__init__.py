"""Integer layers. Importing this package registers every layer kind for ``glassquant.load``."""

from .base import LAYER_KINDS, QuantModule, register
from .conv import QuantConv1d, QuantConv2d
from .embedding import QuantEmbedding
from .integer import IntegerModel, IntLinear, to_integer_only
from .linear import DynamicQuantLinear, QuantLinear
from .weight_only import WeightOnlyLinear

__all__ = ["LAYER_KINDS", "DynamicQuantLinear", "IntLinear", "IntegerModel", "QuantConv1d", "QuantConv2d",
           "QuantEmbedding", "QuantLinear", "QuantModule", "WeightOnlyLinear", "register", "to_integer_only"]
