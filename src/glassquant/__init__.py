"""glassquant: int8 quantization written out step by step, proven bit-exact against real runtimes."""

from .affine import dequantize, fake_quantize
from .affine import quantize as quantize_tensor
from .convert import PRESETS, DynamicConfig, StaticConfig, integer_outputs, quantize
from .qparams import choose_qparams, observe_range
from .rounding import Rounding
from .scheme import QScheme

__version__ = "0.1.0"

__all__ = [
           "PRESETS",
           "DynamicConfig",
           "QScheme",
           "Rounding",
           "StaticConfig",
           "__version__",
           "choose_qparams",
           "dequantize",
           "fake_quantize",
           "integer_outputs",
           "observe_range",
           "quantize",
           "quantize_tensor",
]
