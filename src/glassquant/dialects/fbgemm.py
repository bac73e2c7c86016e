"""fbgemm dialect: PyTorch's ``fbgemm`` and ``x86`` engines' quantized Linear, bit for bit.

Static (eq. 5, float32 form). The float bias is folded into the accumulator domain, then
one float32 multiply by ``f32(f32(sx*sw) / sy)`` and a half-to-even rounding:
  per channel: ``v = f32(acc) + f32(b / f32(sx*sw[n]))``  (two float32 ops)
  per tensor:  ``v = fma(b, f32(1 / f64(f32(sx*sw))), f32(acc))``  (one fused op)
  ``y_q = clamp(rne(f32(v * multiplier)) + zy, 0, 255)``; fused ReLU clamps below at ``zy``.
Dynamic: activations quantized per call (``pytorch.choose_qparams``, uint8, [0, 127] with
reduce_range), then ``y = fma(f32(acc), f32(sx*sw[n]), b)`` (``f32(acc) * f32(sx*sw)`` with
no bias). Proven in tests/equivalence/test_fbgemm.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..floatops import f32, fma_f32
from ._base import accumulate, as_column
from .pytorch import choose_qparams, qrange, quantize, tensor_range

NAME = "fbgemm"
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


def prerounding(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
                y_scale: float) -> Tensor:
    """The float32 value that is rounded to give ``y_q - zy`` (see module docstring).

    Numerics: acc int64 (M, N) holding int32 values; scales float32; bias float32 (N,) or
    None; returns float32 (M, N).
    """
    n = acc.shape[-1]
    per_channel = torch.as_tensor(w_scale).numel() > 1
    sw = f32(as_column(w_scale, n, torch.float64))
    act_times_w = f32(x_scale) * sw  # (N,) float32
    multiplier = act_times_w / f32(y_scale)  # (N,) float32
    acc_f = f32(acc)
    if bias is None:
        v = acc_f
    elif per_channel:
        v = acc_f + f32(bias) / act_times_w
    else:
        rcp = f32(1.0 / act_times_w[:1].to(torch.float64))
        v = fma_f32(f32(bias), rcp, acc_f)
    return v * multiplier


def requantize(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
               y_scale: float, y_zero_point: int, relu: bool = False) -> Tensor:
    """int32 accumulators to uint8 outputs: ``clamp(rne(prerounding) + zy, lo, 255)``.

    Numerics: zero point added after rounding, in integers; ``lo = zy`` with fused ReLU,
    else 0. Returns uint8 with the shape of ``acc``.
    """
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
    """Float32 output of the dynamic Linear from its accumulators: ``fma(acc, sx*sw, b)``."""
    sw = f32(as_column(w_scale, acc.shape[-1], torch.float64))
    scale = f32(x_scale) * sw  # (N,) float32
    y = f32(acc) * scale if bias is None else fma_f32(f32(acc), scale, f32(bias))
    return y.clamp_min(0.0) if relu else y


def linear_dynamic(x: Tensor, w_q: Tensor, w_scale: Tensor | float, w_zero_point: Tensor | int,
                   bias: Tensor | None, reduce_range: bool = True, relu: bool = False) -> Tensor:
    """Dynamic quantized Linear: float32 (M, K) -> float32 (M, N), activations per call."""
    x_q, x_scale, x_zp = quantize_activation(x, reduce_range)
    acc = accumulate(x_q, x_zp, w_q, w_zero_point, NAME)
    return dynamic_output(acc, x_scale, w_scale, bias, relu)


def quantize_activation(x: Tensor, reduce_range: bool = True) -> tuple[Tensor, float, int]:
    """Per-call activation quantization of the dynamic Linear: ``(x_q uint8 (M, K), scale, zero_point)``.

    Numerics: qparams from ``pytorch.choose_qparams`` on the exact min/max of ``x`` (uint8,
    [0, 127] with reduce_range), then ``pytorch.quantize``.
    """
    x_min, x_max = tensor_range(x, f"{NAME} dynamic linear: input")
    x_scale, x_zp = choose_qparams(x_min, x_max, 0, 255, reduce_range)
    return quantize(x, x_scale, x_zp, torch.uint8), x_scale, x_zp
