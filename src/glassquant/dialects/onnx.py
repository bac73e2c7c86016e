"""onnx dialect: ONNX Runtime 1.32 (CPU execution provider) integer arithmetic, bit for bit.

Each rule below is one ONNX (or ``com.microsoft``) operator as ORT's CPU kernels compute it;
``f32`` is one rounding to float32, ``rne`` round half to even:

  QuantizeLinear           ``q = clamp(rne(f32(x / scale)) + zp, qmin, qmax)``: a float32
                           *division*, ties to even, *then* the zero point (with zp 11:
                           0.5 -> 11, 1.5 -> 13, 2.5 -> 13). PyTorch adds zp before rounding.
  DequantizeLinear         ``x = f32(q - zp) * scale`` (one float32 multiply).
  DynamicQuantizeLinear    uint8 only: ``lo = min(x_min, 0)``, ``hi = max(x_max, 0)``,
                           ``scale = f32(f32(hi - lo) / 255)`` (1.0 when ``hi == lo``),
                           ``zp = rne(clamp(-f32(lo / scale), 0, 255))``, then QuantizeLinear.
  MatMulInteger            exact int32 ``acc`` (eq. 4).
  QLinearMatMul, QGemm,    ``multiplier = f32(f32(sx * sw[n]) / sy)``; int32 bias added to the
  QLinearConv (and fused   accumulator first: ``y_q = clamp(rne(f32(f32(acc + bias_q) *
  QDQ Gemm / Conv)         multiplier)) + zy, 0, 255)``; a conv's ``acc`` pads with ``zx``.
  quantize_dynamic graph   ``y = f32(f32(acc) * f32(sx * sw[n])) + b`` (Cast, Mul, Add; the
                           fused DynamicQuantizeMatMul ORT runs by default computes the same).

The float bias of a glassquant Linear becomes QGemm's int32 bias by the rule of
``onnxruntime.quantization``: ``bias_q = rne(f64(b) / f64(f32(sx * sw[n])))``. Weights and static
activation qparams follow that tool's ``compute_scale_zp`` (:func:`choose_qparams_static`).
Proven in tests/equivalence/test_onnxruntime.py; see docs/dialects-onnx.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import check_finite
from ..floatops import f32
from ..scheme import QScheme
from ._base import INT32_MAX, INT32_MIN, accumulate, as_column, check_int32, scaled_float_output
from .pytorch import qrange, tensor_range

NAME = "onnx"
#: Smallest normal float32: ``compute_scale_zp`` replaces a smaller scale by 1.0 (zero-range rule).
TINY_F32 = float(torch.finfo(torch.float32).tiny)

__all__ = [
    "NAME",
    "accumulate",
    "choose_qparams",
    "choose_qparams_static",
    "dequantize",
    "dynamic_output",
    "linear",
    "linear_dynamic",
    "multiplier",
    "prerounding",
    "quantize",
    "quantize_activation",
    "quantize_bias",
    "quantize_weight",
    "requantize",
    "tensor_range",
]


def _along(p: Tensor, x: Tensor, axis: int | None) -> Tensor:
    """A scalar or per-axis ``(C,)`` parameter shaped to broadcast against ``x`` along ``axis``."""
    if axis is None:
        if p.numel() != 1:
            raise ValueError(f"per-tensor parameter must have one element, got {p.numel()} (give axis)")
        return p.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    if p.numel() not in (1, x.shape[axis]):
        raise ValueError(f"parameter with {p.numel()} elements does not match axis {axis} of size {x.shape[axis]}")
    return p.reshape(shape)


def quantize(x: Tensor, scale: float | Tensor, zero_point: int | Tensor, dtype: torch.dtype,
             axis: int | None = None) -> Tensor:
    """``QuantizeLinear``, per tensor or per ``axis`` (eq. 3, ORT form).

    ``q = clamp(rne(f32(x / scale)) + zero_point, qmin, qmax)``: one float32 division (not a
    multiply by ``1/scale``), half-to-even, then the zero point in integers. Example, scale 1,
    zp 11: 0.5 -> 11, 1.5 -> 13, 2.5 -> 13, -0.5 -> 11.

    Numerics: x any float (rounded to float32 first); scale float32 > 0 (scalar, or (C,) along
    ``axis``); zero_point int; output ``dtype`` (uint8, int8 or int32), saturated.
    """
    check_finite(x, "quantize: x")
    qmin, qmax = qrange(dtype)
    x = f32(x)
    s = _along(f32(torch.as_tensor(scale, dtype=torch.float64)), x, axis)
    z = _along(torch.as_tensor(zero_point, dtype=torch.float64), x, axis)
    if not bool((s > 0).all()):
        raise ValueError("quantize: scale must be positive")
    v = torch.round(x / s).to(torch.float64) + z  # rne of the float32 quotient, then + zp (exact)
    return v.clamp(qmin, qmax).to(torch.int64).to(dtype)


def dequantize(x_q: Tensor, scale: float | Tensor, zero_point: int | Tensor, axis: int | None = None) -> Tensor:
    """``DequantizeLinear``: ``x = f32(x_q - zero_point) * scale`` (eq. 1), one float32 rounding.

    Numerics: x_q any integer dtype; the difference is exact in int64 and converted to
    float32 (exact below 2**24); scale float32 (scalar or (C,) along ``axis``). Returns float32.
    """
    s = _along(f32(torch.as_tensor(scale, dtype=torch.float64)), x_q, axis)
    z = _along(torch.as_tensor(zero_point, dtype=torch.int64), x_q, axis)
    return f32(x_q.to(torch.int64) - z) * s


def choose_qparams(x_min: float, x_max: float) -> tuple[float, int]:
    """``DynamicQuantizeLinear``'s uint8 qparams from a tensor's exact min and max.

    Steps, all float32: widen to include 0 (``lo <= 0 <= hi``); ``scale = f32(hi - lo) / 255``,
    or 1.0 when ``hi == lo`` (the zero-range rule: an all-zero tensor gets scale 1, zp 0);
    ``zp = rne(clamp(0 - f32(lo / scale), 0, 255))``. Example: range (-1, 3): ``scale =
    4/255 = 0.015686275``, ``lo / scale = -63.75`` -> zp 64. Returns ``(scale as a Python
    float holding a float32, zp in [0, 255])``. Raises ValueError for NaN/Inf or a range
    too wide for float32.
    """
    lo = torch.clamp_max(f32(float(x_min)), 0.0)
    hi = torch.clamp_min(f32(float(x_max)), 0.0)
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise ValueError("choose_qparams: range contains NaN or Inf")
    if bool(lo > hi):
        raise ValueError(f"choose_qparams: min {float(x_min)} > max {float(x_max)}")
    scale = f32(1.0) if bool(hi == lo) else (hi - lo) / f32(255.0)
    if not bool(torch.isfinite(scale)):
        raise ValueError(f"choose_qparams: range [{float(lo)}, {float(hi)}] overflows float32")
    initial = f32(0.0) - lo / scale  # float32
    zp = int(torch.round(initial.clamp(0.0, 255.0)))
    return float(scale), zp


def quantize_activation(x: Tensor, reduce_range: bool = False) -> tuple[Tensor, float, int]:
    """``DynamicQuantizeLinear``: ``(x_q uint8, scale, zero_point)`` of a whole float tensor.

    Numerics: qparams from :func:`choose_qparams` on the exact min/max of ``x`` (float32),
    then :func:`quantize`. ORT always uses the full [0, 255]; ``reduce_range`` is accepted for
    interface compatibility and ignored (``quantize_dynamic``'s option only narrows weights).
    """
    x_min, x_max = tensor_range(x, f"{NAME} DynamicQuantizeLinear: input")
    scale, zp = choose_qparams(x_min, x_max)
    return quantize(x, scale, zp, torch.uint8), scale, zp


def choose_qparams_static(x_min: Tensor | float, x_max: Tensor | float, qmin: int, qmax: int,
                          symmetric: bool = False) -> tuple[Tensor, Tensor]:
    """``onnxruntime.quantization``'s ``compute_scale_zp``: calibrated activations and weights.

    Widen to include 0 (float32); symmetric: ``lo, hi = -amax, amax`` with ``amax = max(-lo,
    hi)``; ``scale = (f64(hi) - f64(lo)) / (qmax - qmin)`` in float64; a scale below the
    smallest normal float32 becomes 1.0 with zp 0 (zero-range rule); zp = ``rne(qmin - lo /
    scale)`` in float64 (symmetric: ``rne((qmin + qmax) / 2)``, 0 for int8); the scale is then
    stored as float32. The tool calls this with int8 [-127, 127] for symmetric weights.

    Numerics: x_min/x_max float32 scalars or (C,); returns ``(scale float32, zero_point int32)``
    of the same shape.
    """
    lo = torch.clamp_max(f32(torch.as_tensor(x_min, dtype=torch.float64)), 0.0).to(torch.float64)
    hi = torch.clamp_min(f32(torch.as_tensor(x_max, dtype=torch.float64)), 0.0).to(torch.float64)
    check_finite(torch.stack([lo.reshape(-1), hi.reshape(-1)]), "choose_qparams_static: range")
    if bool((lo > hi).any()):
        raise ValueError("choose_qparams_static: x_min > x_max")
    if symmetric:
        amax = torch.maximum(-lo, hi)
        lo, hi = -amax, amax
    scale = (hi - lo) / float(qmax - qmin)  # float64
    if symmetric:
        zp = torch.full_like(scale, round((qmin + qmax) / 2.0))
    else:
        zp = torch.round(qmin - lo / scale)
    tiny = scale < TINY_F32
    zp = torch.where(tiny, torch.zeros_like(zp), zp).clamp(qmin, qmax).to(torch.int32)
    return f32(torch.where(tiny, torch.ones_like(scale), scale)), zp


def quantize_weight(weight: Tensor, scheme: QScheme, name: str = "weight") -> tuple[Tensor, Tensor, Tensor]:
    """Weight integers as ``onnxruntime.quantization.quantize_static/quantize_dynamic`` make them.

    Symmetric int8 uses the narrow grid [-127, 127] whatever ``scheme.narrow_range`` says
    (the tool's rule): ``scale = f32(2 * amax / 254)``, zp 0; asymmetric uses [-128, 127] and
    :func:`choose_qparams_static`. Integers: ``clamp(rne(f32(w / scale)) + zp)`` (the tool's
    numpy ``quantize_nparray``, the same as :func:`quantize`). Per channel along axis 0, or per
    tensor. Returns ``(w_q int8 (N, K), scale float32 (N,) or (1,), zero_point int32)``.
    """
    check_finite(weight, name)
    if scheme.bits != 8 or not scheme.signed:
        raise ValueError(f"{name}: the onnx dialect takes int8 weights; got {scheme}")
    if scheme.granularity == "per_group" or (scheme.axis not in (None, 0)):
        raise ValueError(f"{name}: ONNX Runtime weights are per tensor or per output channel (axis 0); got {scheme}")
    w = f32(weight.detach())
    rows = w.reshape(w.shape[0], -1) if scheme.axis == 0 else w.reshape(1, -1)  # (C, rest)
    qmin = -127 if scheme.symmetric else -128
    scale, zp = choose_qparams_static(rows.min(dim=1).values, rows.max(dim=1).values, qmin, 127, scheme.symmetric)
    axis = 0 if scheme.axis == 0 else None
    s_arg, z_arg = (scale, zp) if axis == 0 else (scale.reshape(()), zp.reshape(()))
    w_q = quantize(w, s_arg, z_arg, torch.int8, axis=axis)
    return w_q, scale, zp


def quantize_bias(bias: Tensor, x_scale: float, w_scale: Tensor | float, name: str = "bias") -> Tensor:
    """The int32 bias of QGemm / QLinearConv: ``rne(f64(b) / f64(f32(sx * sw[n])))``.

    The rule of ``onnxruntime.quantization`` (``quantize_bias_static_impl``): the bias scale is
    the float32 product of the input and weight scales, the division is done in float64,
    ties to even. Numerics: bias float32 (N,); returns int64 (N,) holding int32 values;
    ValueError naming ``name`` if a value leaves int32 (the tool would clip silently).
    """
    check_finite(bias, name)
    n = bias.shape[0]
    bias_scale = f32(x_scale) * f32(as_column(w_scale, n, torch.float64))  # (N,) float32
    q = torch.round(f32(bias).to(torch.float64) / bias_scale.to(torch.float64))
    if bool(((q > INT32_MAX) | (q < INT32_MIN)).any()):
        raise ValueError(f"{name}: quantized bias leaves int32 (bias scale sx*sw too small)")
    return q.to(torch.int64)


def multiplier(x_scale: float, w_scale: Tensor | float, y_scale: float, n: int) -> Tensor:
    """QLinearMatMul / QGemm / QLinearConv output multiplier ``f32(f32(sx * sw[n]) / sy)``, float32 (N,)."""
    sw = f32(as_column(w_scale, n, torch.float64))
    return (f32(x_scale) * sw) / f32(y_scale)


def prerounding(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
                y_scale: float) -> Tensor:
    """The float32 value rounded to give ``y_q - zy``: ``f32(f32(acc + bias_q) * multiplier)``.

    ``bias``: float32 (N,) (quantized by :func:`quantize_bias`), int32 (N,) (taken as
    ``bias_q``, as in a QGemm initializer), or None (QLinearMatMul). Numerics: acc int64 (M, N)
    holding int32 values; the int32 sum is checked for overflow (ORT would wrap); one
    conversion to float32, one float32 multiply. Returns float32 (M, N).
    """
    n = acc.shape[-1]
    total = acc
    if bias is not None:
        bias_q = bias.to(torch.int64) if bias.dtype == torch.int32 else quantize_bias(bias, x_scale, w_scale)
        total = acc + bias_q
        check_int32(total, f"{NAME}: accumulator + bias_q")
    return f32(total) * multiplier(x_scale, w_scale, y_scale, n)


def requantize(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
               y_scale: float, y_zero_point: int, relu: bool = False) -> Tensor:
    """int32 accumulators (M, N) to uint8: ``clamp(rne(prerounding) + zy, lo, 255)`` (eq. 5).

    Numerics: rounding half to even (MLAS ``cvtps2dq``), zero point added after rounding, in
    integers; ``lo = zy`` with fused ReLU (exported as an integer Clip), else 0.
    """
    qmin, qmax = qrange(torch.uint8)
    y = torch.round(prerounding(acc, x_scale, w_scale, bias, y_scale)).to(torch.float64) + y_zero_point
    return y.clamp(y_zero_point if relu else qmin, qmax).to(torch.int64).to(torch.uint8)


def linear(x_q: Tensor, x_scale: float, x_zero_point: int, w_q: Tensor, w_scale: Tensor | float,
           w_zero_point: Tensor | int, bias: Tensor | None, y_scale: float, y_zero_point: int,
           relu: bool = False) -> Tensor:
    """Static Linear as QGemm (bias) or QLinearMatMul (no bias): uint8 (M, K) x int8 (N, K) -> uint8 (M, N)."""
    acc = accumulate(x_q, x_zero_point, w_q, w_zero_point, NAME)  # (M, K) @ (K, N) -> (M, N)
    return requantize(acc, x_scale, w_scale, bias, y_scale, y_zero_point, relu)


def dynamic_output(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
                   relu: bool = False) -> Tensor:
    """Float output of ``quantize_dynamic``'s graph: ``f32(f32(acc) * f32(sx * sw[n])) + b``.

    Numerics: Cast (int32 -> float32, exact below 2**24), Mul by the float32 product of the
    scales, Add of the float32 bias: three roundings, no FMA; ``relu`` applies ``max(y, 0)``.
    Returns float32 (M, N).
    """
    return scaled_float_output(acc, x_scale, w_scale, bias, relu)


def linear_dynamic(x: Tensor, w_q: Tensor, w_scale: Tensor | float, w_zero_point: Tensor | int,
                   bias: Tensor | None, reduce_range: bool = False, relu: bool = False) -> Tensor:
    """``quantize_dynamic``'s MatMul/Gemm: float32 (M, K) -> float32 (M, N); reduce_range is ignored."""
    x_q, x_scale, x_zp = quantize_activation(x, reduce_range)
    acc = accumulate(x_q, x_zp, w_q, w_zero_point, NAME)  # (M, K) @ (K, N) -> (M, N)
    return dynamic_output(acc, x_scale, w_scale, bias, relu)
