"""onednn dialect: PyTorch's ``onednn`` engine's quantized Linear, bit for bit (static).

Static (eq. 5, float32 form). oneDNN receives each scale as a float32 reciprocal and
inverts it back, scales the accumulator in float32 in a fixed order, adds the float bias
*after* scaling and the output zero point *before* rounding:
  ``sx' = f32(1 / f32(1 / f64(sx)))``, ``sw' = f32(1 / f32(1 / f64(sw[n])))``,
  ``inv_sy = f32(1 / f32(1 / f32(1 / f64(sy))))``
  (PyTorch passes ``1/sy`` in double, ideep
  inverts it to oneDNN's convention, the kernel inverts it back)
  ``y_q = clamp(rne(f32(f32(f32(f32(f32(acc) * sx') * sw') + b) * inv_sy) + zy), 0, 255)``.
The multiplication order ``(acc * sx) * sw`` matters, and so does each reciprocal of ``sy``:
``f32(1) / f32(sy)`` or ``f32(1 / f64(sy))`` alone each miss a few percent of forced ties.
Fused ReLU clamps below at ``zy``.
Dynamic: see ``linear_dynamic``. Proven in tests/equivalence/test_onednn.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..floatops import f32
from ._base import accumulate, as_column
from .pytorch import choose_qparams, qrange, quantize, tensor_range

NAME = "onednn"
__all__ = [
    "NAME",
    "choose_qparams",
    "dynamic_output",
    "linear",
    "linear_dynamic",
    "prerounding",
    "quantize",
    "requantize",
    "tensor_range",
]


def _recip_f64(scale: Tensor | float) -> Tensor:
    """``f32(1 / f64(s))``: the reciprocal PyTorch hands to oneDNN, formed in double."""
    return f32(1.0 / torch.as_tensor(scale, dtype=torch.float64))


def _round_trip(scale: Tensor | float) -> Tensor:
    """``f32(1 / f32(1 / f64(s)))``: a scale after oneDNN inverts PyTorch's reciprocal."""
    return f32(1.0) / _recip_f64(scale)


def prerounding(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
                y_scale: float, y_zero_point: int = 0) -> Tensor:
    """The float32 value that is rounded to give ``y_q`` (zero point included)."""
    n = acc.shape[-1]
    sx = _round_trip(float(x_scale))
    sw = _round_trip(as_column(w_scale, n, torch.float64))
    v = (f32(acc) * sx) * sw  # (M, N) float32, in this order
    if bias is not None:
        v = v + f32(bias)
    inv_y_scale = f32(1.0) / _round_trip(float(y_scale))  # three reciprocals: f64, f32, f32
    return v * inv_y_scale + f32(float(y_zero_point))


def requantize(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
               y_scale: float, y_zero_point: int, relu: bool = False) -> Tensor:
    """int32 accumulators to uint8: ``clamp(rne(prerounding), lo, 255)`` (lo = zy with ReLU)."""
    qmin, qmax = qrange(torch.uint8)
    y = torch.round(prerounding(acc, x_scale, w_scale, bias, y_scale, y_zero_point)).to(torch.float64)
    return y.clamp(y_zero_point if relu else qmin, qmax).to(torch.int64).to(torch.uint8)


def linear(x_q: Tensor, x_scale: float, x_zero_point: int, w_q: Tensor, w_scale: Tensor | float,
           w_zero_point: Tensor | int, bias: Tensor | None, y_scale: float, y_zero_point: int,
           relu: bool = False) -> Tensor:
    """Static quantized Linear: uint8 (M, K) x int8 (N, K) -> uint8 (M, N)."""
    acc = accumulate(x_q, x_zero_point, w_q, w_zero_point, NAME)  # (M, N)
    return requantize(acc, x_scale, w_scale, bias, y_scale, y_zero_point, relu)


def dynamic_output(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
                   relu: bool = False) -> Tensor:
    """Float32 output of the dynamic Linear: ``f32(f32(acc) * sx) * sw + b``."""
    sw = f32(as_column(w_scale, acc.shape[-1], torch.float64))
    y = (f32(acc) * f32(x_scale)) * sw
    if bias is not None:
        y = y + f32(bias)
    return y.clamp_min(0.0) if relu else y


def linear_dynamic(x: Tensor, w_q: Tensor, w_scale: Tensor | float, w_zero_point: Tensor | int,
                   bias: Tensor | None, reduce_range: bool = False, relu: bool = False) -> Tensor:
    """Dynamic quantized Linear: float32 (M, K) -> float32 (M, N)."""
    x_q, x_scale, x_zp = quantize_activation(x, reduce_range)
    acc = accumulate(x_q, x_zp, w_q, w_zero_point, NAME)
    return dynamic_output(acc, x_scale, w_scale, bias, relu)


def quantize_activation(x: Tensor, reduce_range: bool = False) -> tuple[Tensor, float, int]:
    """Per-call activation quantization of the dynamic Linear: ``(x_q uint8 (M, K), scale, zero_point)``.

    Numerics: qparams from ``pytorch.choose_qparams`` on the exact min/max of ``x`` (uint8,
    [0, 127] with reduce_range), then ``pytorch.quantize``.
    """
    x_min, x_max = tensor_range(x, f"{NAME} dynamic linear: input")
    x_scale, x_zp = choose_qparams(x_min, x_max, 0, 255, reduce_range)
    return quantize(x, x_scale, x_zp, torch.uint8), x_scale, x_zp
