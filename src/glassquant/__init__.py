"""glassquant: int8 quantization written out step by step, proven bit-exact against real runtimes."""

from .affine import dequantize, fake_quantize
from .affine import quantize as quantize_tensor
from .config import PRESETS, DynamicConfig, StaticConfig, WeightOnlyConfig
from .convert import integer_outputs, quantize
from .export.format import FormatError, load, save
from .qparams import choose_qparams, observe_range
from .rounding import Rounding
from .scheme import QScheme

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "DynamicConfig",
    "FormatError",
    "QScheme",
    "Rounding",
    "StaticConfig",
    "WeightOnlyConfig",
    "__version__",
    "choose_qparams",
    "dequantize",
    "fake_quantize",
    "integer_outputs",
    "load",
    "observe_range",
    "quantize",
    "quantize_tensor",
    "save",
]
