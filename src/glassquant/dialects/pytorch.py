"""Rules shared by PyTorch's quantized CPU engines (fbgemm/x86, qnnpack, onednn).

Every engine quantizes tensors through the same ATen kernels, so ``quantize`` and the
dynamic-activation ``choose_qparams`` live here; the engines differ in ``linear``.
Proven against ``torch.quantize_per_tensor`` / ``quantize_per_channel`` and the engines'
``quantized::linear*`` ops in ``tests/equivalence/``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import check_finite
from ..floatops import f32, fma_f32

#: fbgemm's ``SMALL_SCALE_THRESHOLD``: dynamic scales below it are raised to it.
SMALL_SCALE_THRESHOLD = float(f32(6.1e-5))

_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int32: (-(2**31), 2**31 - 1)}


def qrange(dtype: torch.dtype) -> tuple[int, int]:
    """``(qmin, qmax)`` of a storage dtype (uint8, int8 or int32)."""
    if dtype not in _RANGES:
        raise TypeError(f"unsupported quantized dtype {dtype}; use torch.uint8, torch.int8 or torch.int32")
    return _RANGES[dtype]


def quantize(x: Tensor, scale: float | Tensor, zero_point: int | Tensor, dtype: torch.dtype,
             axis: int | None = None) -> Tensor:
    """``torch.quantize_per_tensor`` / ``quantize_per_channel``, bit for bit (eq. 3, PyTorch form).

    The zero point is added *before* rounding, to ``x * f32(1/scale)``:
    per tensor to uint8/int8 (fbgemm's vector kernel) in one fused multiply-add,
    ``q = rne(fma(x, f32(1/scale), zp))``; per channel and to int32 (the scalar kernel)
    in two float32 roundings, ``q = rne(f32(x * f32(1/scale)) + zp)``. Then clamp.
    Example, scale 1, zp 10: 0.5 -> 10, 1.5 -> 12, 2.5 -> 12 (ties break on x/scale + zp).

    Numerics: x float (rounded to float32), scale float32 (scalar, or (C,) along ``axis``),
    zero_point int; output ``dtype`` (uint8, int8 or int32).
    """
    check_finite(x, "quantize: x")
    qmin, qmax = qrange(dtype)
    x = f32(x)
    s = f32(torch.as_tensor(scale, dtype=torch.float64))
    z = torch.as_tensor(zero_point, dtype=torch.float64)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    inv_scale = f32(1.0) / s
    if axis is None and dtype != torch.int32:
        v = fma_f32(x, inv_scale, f32(z))
    else:
        v = (x * inv_scale).to(torch.float64) + z  # exact in float64 ...
        v = f32(v)  # ... then the float32 rounding of the add
    v = torch.round(v).to(torch.float64).clamp(qmin, qmax)
    return v.to(torch.int64).to(dtype)


def choose_qparams(x_min: float, x_max: float, qmin: int = 0, qmax: int = 255,
                   reduce_range: bool = False) -> tuple[float, int]:
    """fbgemm's ``ChooseQuantizationParams``: the dynamic per-call activation qparams.

    Steps: halve ``qmin``/``qmax`` if ``reduce_range`` (uint8 -> [0, 127]); widen the range to
    include 0; ``scale = (f64(max) - min) / (qmax - qmin)`` in float64, set to 0.1 if its
    float32 is 0 or has an infinite reciprocal, raised to ``SMALL_SCALE_THRESHOLD`` (6.1e-5,
    stretching the range) if below it; zero point from whichever end has the smaller
    ``|q| - |x/scale|``, ``nearbyint`` (half to even), clamped. The scale is then used as
    float32.

    Numerics: float64 arithmetic exactly as in ATen's QuantUtils.h; returns
    ``(float32 scale as a Python float, int zero point)``.
    """
    x_min, x_max = float(f32(x_min)), float(f32(x_max))
    if not (math.isfinite(x_min) and math.isfinite(x_max)):
        raise ValueError("choose_qparams: activation range contains NaN or Inf")
    if x_min > x_max:
        raise ValueError(f"choose_qparams: min {x_min} > max {x_max}")
    if reduce_range:
        qmin, qmax = qmin // 2, qmax // 2
    x_min, x_max = min(x_min, 0.0), max(x_max, 0.0)
    scale = (x_max - x_min) / (qmax - qmin)
    s32 = float(f32(scale))
    if s32 == 0.0 or math.isinf(float(f32(1.0) / f32(s32))):
        scale = 0.1
    if scale < SMALL_SCALE_THRESHOLD:
        org_scale = float(f32(scale))
        scale = SMALL_SCALE_THRESHOLD
        if x_min == 0.0:
            x_max = float(f32(SMALL_SCALE_THRESHOLD * (qmax - qmin)))
        elif x_max == 0.0:
            x_min = float(f32(-SMALL_SCALE_THRESHOLD * (qmax - qmin)))
        else:
            amplifier = float(f32(SMALL_SCALE_THRESHOLD) / f32(org_scale))
            x_min = float(f32(x_min) * f32(amplifier))
            x_max = float(f32(x_max) * f32(amplifier))
    zp_from_min = qmin - x_min / scale
    zp_from_max = qmax - x_max / scale
    err_min = abs(qmin) - abs(x_min / scale)
    err_max = abs(qmax) - abs(x_max / scale)
    initial = zp_from_min if err_min < err_max else zp_from_max
    if initial < qmin:
        zp = qmin
    elif initial > qmax:
        zp = qmax
    else:
        zp = int(torch.round(torch.tensor(initial, dtype=torch.float64)))
    return float(f32(scale)), zp


def tensor_range(x: Tensor, name: str = "x") -> tuple[float, float]:
    """Min and max of a float tensor (exact), rejecting NaN/Inf and empty tensors."""
    check_finite(x, name)
    if x.numel() == 0:
        raise ValueError(f"{name}: empty tensor")
    x = f32(x)
    return float(x.min()), float(x.max())
