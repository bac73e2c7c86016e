"""glassquant: int8 quantization written out step by step, proven bit-exact against real runtimes."""

from .affine import dequantize, fake_quantize, quantize as quantize_tensor
from .convert import PRESETS, DynamicConfig, StaticConfig, integer_outputs, quantize
from .qparams import choose_qparams, observe_range
from .rounding import Rounding
from .scheme import QScheme

__version__ = "0.1.0"

__all__ = ["QScheme", "Rounding", "choose_qparams", "observe_range", "quantize_tensor", "dequantize",
           "fake_quantize", "quantize", "StaticConfig", "DynamicConfig", "PRESETS", "integer_outputs",
           "__version__"]
