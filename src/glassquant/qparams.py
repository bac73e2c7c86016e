"""Scale and zero point from an observed range (eq. 2 of docs/quantization.md)."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import check_finite
from .scheme import QScheme

#: Smallest scale glassquant produces: float32 machine epsilon (torch.ao's rule).
#: A zero-range tensor (all values 0 after widening to include 0) gets this scale and a
#: zero point that represents 0 exactly; every value then quantizes to the zero point.
SCALE_EPS = torch.finfo(torch.float32).eps


def observe_range(x: Tensor, scheme: QScheme, name: str = "tensor") -> tuple[Tensor, Tensor]:
    """Minimum and maximum of ``x`` at the scheme's granularity.

    Numerics: float32 out; shape ``()`` per tensor, ``(C,)`` per channel along
    ``scheme.axis``, ``(..., K // group_size)`` per group over the last axis.
    """
    check_finite(x, name)
    if x.numel() == 0:
        raise ValueError(f"{name}: empty tensor, no range to observe")
    x = x.detach().to(torch.float32)
    if scheme.granularity == "per_tensor":
        return x.min(), x.max()
    if scheme.granularity == "per_channel":
        axis = scheme.axis if scheme.axis is not None else 0
        flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)  # (C, rest)
        return flat.min(dim=1).values, flat.max(dim=1).values
    g = scheme.group_size or 1
    if x.shape[-1] % g:
        raise ValueError(f"{name}: last dimension {x.shape[-1]} is not a multiple of group_size {g}")
    grouped = x.reshape(*x.shape[:-1], x.shape[-1] // g, g)  # (..., K/g, g)
    return grouped.min(dim=-1).values, grouped.max(dim=-1).values


def choose_qparams(x_min: Tensor, x_max: Tensor, scheme: QScheme) -> tuple[Tensor, Tensor]:
    """Scale and zero point mapping ``[x_min, x_max]`` (widened to include 0) onto the grid.

    Affine (eq. 2): ``lo = min(x_min, 0)``, ``hi = max(x_max, 0)``,
    ``scale = (hi - lo) / (qmax - qmin)``, ``zero_point = qmin - round_half_even(lo / scale)``
    clamped to ``[qmin, qmax]``. Example: uint8, range (-1.0, 3.0): scale = 4/255 =
    0.0156863, zero_point = 0 - round(-63.75) = 64.
    Symmetric: ``scale = max(-lo, hi) / ((qmax - qmin) / 2)``, zero point 0 when signed, the
    midpoint ``(qmin + qmax + 1) // 2`` when unsigned (128 for uint8).

    Numerics: float32 arithmetic in exactly this order (the same as torch.ao's observers,
    so that their qparams agree bit for bit); ``scale >= SCALE_EPS`` (zero-range rule);
    zero_point int32. Shapes follow ``x_min``.
    """
    x_min = torch.as_tensor(x_min, dtype=torch.float32)
    x_max = torch.as_tensor(x_max, dtype=torch.float32)
    check_finite(x_min, "x_min")
    check_finite(x_max, "x_max")
    if bool((x_min > x_max).any()):
        raise ValueError("choose_qparams: x_min > x_max (no values observed?)")
    lo = torch.min(x_min, torch.zeros_like(x_min))
    hi = torch.max(x_max, torch.zeros_like(x_max))
    eps = torch.tensor(SCALE_EPS, dtype=torch.float32)
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.symmetric:
        amax = torch.max(-lo, hi)
        scale = torch.max(amax / (float(qmax - qmin) / 2), eps)
        zp = 0 if scheme.signed else (qmin + qmax + 1) // 2
        zero_point = torch.full_like(scale, zp, dtype=torch.int32)
    else:
        scale = torch.max((hi - lo) / float(qmax - qmin), eps)
        zero_point = qmin - torch.round(lo / scale).to(torch.int32)
        zero_point = torch.clamp(zero_point, qmin, qmax).to(torch.int32)
    if not bool(torch.isfinite(scale).all()):
        raise ValueError(f"choose_qparams: range [{float(lo.min())}, {float(hi.max())}] is wider than float32 "
                         "can hold (scale overflows to inf); rescale the tensor")
    return scale, zero_point
