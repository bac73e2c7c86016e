"""qnnpack dialect: PyTorch's ``qnnpack`` engine's quantized Linear, bit for bit.

Static (eq. 5, float32 form). The bias is quantized to int32 first and added to the
accumulator; the sum is converted to float32 and multiplied by a per-channel multiplier
formed with the *reciprocal* of the output scale:
  ``bias_q = rne(f32(b * f32(1 / f64(f32(sx*sw[n])))))`` (int32)
  ``multiplier = f32(f32(sx*sw[n]) * f32(1 / sy))``
  ``y_q = clamp(rne(f32(f32(acc + bias_q) * multiplier)) + zy, 0, 255)``.
Dynamic: activations quantized per call over the full uint8 range ([0, 255]; reduce_range
is ignored), then ``y = f32(f32(acc) * f32(sx*sw[n])) + b`` (two roundings, no FMA).
Proven in tests/equivalence/test_qnnpack.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..floatops import f32
from ._base import accumulate, as_column, check_int32, scaled_float_output
from .pytorch import choose_qparams, qrange, quantize, tensor_range

NAME = "qnnpack"
__all__ = [
    "NAME",
    "choose_qparams",
    "dynamic_output",
    "linear",
    "linear_dynamic",
    "prerounding",
    "quantize",
    "quantize_bias",
    "requantize",
    "tensor_range",
]


def quantize_bias(bias: Tensor, x_scale: float, w_scale: Tensor | float) -> Tensor:
    """int32 bias on the accumulator grid: ``rne(b * f32(1 / f64(f32(sx*sw))))``.

    Numerics: bias float32 (N,); one float32 multiply by the float32 reciprocal (computed
    in float64), half-to-even; int64 (N,) holding int32 values.
    """
    sw = f32(as_column(w_scale, bias.shape[0], torch.float64))
    act_times_w = f32(x_scale) * sw
    rcp = f32(1.0 / act_times_w.to(torch.float64))
    return torch.round(f32(bias) * rcp).to(torch.int64)


def prerounding(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
                y_scale: float) -> Tensor:
    """The float32 value rounded to give ``y_q - zy``: ``f32(acc + bias_q) * multiplier``."""
    n = acc.shape[-1]
    sw = f32(as_column(w_scale, n, torch.float64))
    multiplier = (f32(x_scale) * sw) * (f32(1.0) / f32(y_scale))  # (N,) float32
    total = acc if bias is None else acc + quantize_bias(bias, x_scale, w_scale)
    check_int32(total, f"{NAME}: accumulator + bias_q")
    return f32(total) * multiplier


def requantize(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
               y_scale: float, y_zero_point: int, relu: bool = False) -> Tensor:
    """int32 accumulators to uint8: ``clamp(rne(prerounding) + zy, lo, 255)`` (lo = zy with ReLU)."""
    qmin, qmax = qrange(torch.uint8)
    y = torch.round(prerounding(acc, x_scale, w_scale, bias, y_scale)).to(torch.float64) + y_zero_point
    return y.clamp(y_zero_point if relu else qmin, qmax).to(torch.int64).to(torch.uint8)


def linear(x_q: Tensor, x_scale: float, x_zero_point: int, w_q: Tensor, w_scale: Tensor | float,
           w_zero_point: Tensor | int, bias: Tensor | None, y_scale: float, y_zero_point: int,
           relu: bool = False) -> Tensor:
    """Static quantized Linear: uint8 (M, K) x int8 (N, K) -> uint8 (M, N)."""
    acc = accumulate(x_q, x_zero_point, w_q, w_zero_point, NAME)  # (M, N)
    return requantize(acc, x_scale, w_scale, bias, y_scale, y_zero_point, relu)


def dynamic_output(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
                   relu: bool = False) -> Tensor:
    """Float32 output of the dynamic Linear: ``f32(acc) * f32(sx*sw)``, then ``+ b``
    (``_base.scaled_float_output``)."""
    return scaled_float_output(acc, x_scale, w_scale, bias, relu)


def linear_dynamic(x: Tensor, w_q: Tensor, w_scale: Tensor | float, w_zero_point: Tensor | int,
                   bias: Tensor | None, reduce_range: bool = False, relu: bool = False) -> Tensor:
    """Dynamic quantized Linear: float32 (M, K) -> float32 (M, N); reduce_range is ignored."""
    x_q, x_scale, x_zp = quantize_activation(x, reduce_range)
    acc = accumulate(x_q, x_zp, w_q, w_zero_point, NAME)
    return dynamic_output(acc, x_scale, w_scale, bias, relu)


def quantize_activation(x: Tensor, reduce_range: bool = False) -> tuple[Tensor, float, int]:
    """Per-call activation quantization of the dynamic Linear: ``(x_q uint8 (M, K), scale, zero_point)``.

    Numerics: qparams from ``pytorch.choose_qparams`` on the exact min/max of ``x`` (uint8,
    [0, 127] with reduce_range, which qnnpack ignores), then ``pytorch.quantize``.
    """
    x_min, x_max = tensor_range(x, f"{NAME} dynamic linear: input")
    x_scale, x_zp = choose_qparams(x_min, x_max, 0, 255, False)
    return quantize(x, x_scale, x_zp, torch.uint8), x_scale, x_zp
