"""quantize / dequantize / fake_quantize on a QScheme's grid (eqs. 1 and 3).

These are glassquant's own definitions: true float32 division by the scale, the named
rounding, then the zero point, then the clamp. A runtime that orders the steps
differently (PyTorch adds the zero point *before* rounding) has its own ``quantize`` in
``glassquant.dialects``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import check_finite
from .rounding import Rounding, round_
from .scheme import QScheme


def expand_param(p: Tensor, x: Tensor, scheme: QScheme) -> Tensor:
    """Broadcast a per-tensor/channel/group parameter to ``x``'s shape.

    Shapes: per tensor ``()`` or ``(1,)``; per channel ``(C,)`` along ``scheme.axis``;
    per group ``(..., K // g)`` repeated ``g`` times along the last axis.
    """
    p = torch.as_tensor(p)
    if scheme.granularity == "per_tensor":
        if p.numel() != 1:
            raise ValueError(f"per-tensor parameter must have one element, got shape {tuple(p.shape)}")
        return p.reshape(())
    if scheme.granularity == "per_channel":
        axis = (scheme.axis or 0) % x.dim()
        if p.shape != (x.shape[axis],):
            raise ValueError(f"per-channel parameter shape {tuple(p.shape)} does not match "
                             f"{x.shape[axis]} channels on axis {axis}")
        shape = [1] * x.dim()
        shape[axis] = x.shape[axis]
        return p.reshape(shape)
    g = scheme.group_size or 1
    if p.shape != (*x.shape[:-1], x.shape[-1] // g):
        raise ValueError(f"per-group parameter shape {tuple(p.shape)} does not match "
                         f"{tuple(x.shape)} with group_size {g}")
    return p.repeat_interleave(g, dim=-1)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, scheme: QScheme,
             rounding: Rounding | str = Rounding.HALF_EVEN) -> Tensor:
    """Map reals to the grid: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` (eq. 3).

    Numerics: ``x`` float (computed in float32), ``scale`` float32 > 0, ``zero_point`` int;
    one float32 division, one rounding (``rounding``), integer add, saturating clamp.
    Output dtype ``scheme.dtype``. Example, scale 0.5, zp 10, half-even: x = 1.25 -> 2.5 ->
    2 -> 12; floor: x = 1.4 -> 2.8 -> 2 -> 12.
    """
    check_finite(x, "quantize: x")
    s = expand_param(torch.as_tensor(scale, dtype=torch.float32), x, scheme)
    z = expand_param(torch.as_tensor(zero_point).to(torch.int32), x, scheme)
    r = round_(x.to(torch.float32) / s, rounding)
    # clamp in float first so huge values cannot wrap when cast to int32
    r = r.clamp(scheme.qmin - 2.0**31, scheme.qmax + 2.0**31).to(torch.int64)
    return torch.clamp(r + z, scheme.qmin, scheme.qmax).to(scheme.dtype)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, scheme: QScheme) -> Tensor:
    """Map integers back to reals: ``x = scale * (q - zero_point)`` (eq. 1).

    Numerics: integer subtraction (exact), converted to float32, one float32 multiply.
    """
    s = expand_param(torch.as_tensor(scale, dtype=torch.float32), q, scheme)
    z = expand_param(torch.as_tensor(zero_point).to(torch.int32), q, scheme)
    return (q.to(torch.int32) - z).to(torch.float32) * s


class _FakeQuantize(torch.autograd.Function):
    """dequantize(quantize(x)) forward; straight-through gradient inside the grid's range."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, scheme, rounding):  # type: ignore[override]
        q = quantize(x, scale, zero_point, scheme, rounding)
        s = expand_param(torch.as_tensor(scale, dtype=torch.float32), x, scheme)
        z = expand_param(torch.as_tensor(zero_point).to(torch.float32), x, scheme)
        inside = (x >= (scheme.qmin - z) * s) & (x <= (scheme.qmax - z) * s)
        ctx.save_for_backward(inside)
        return dequantize(q, scale, zero_point, scheme).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None, None


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, scheme: QScheme,
                  rounding: Rounding | str = Rounding.HALF_EVEN) -> Tensor:
    """Quantize and dequantize in one step, for training (straight-through estimator).

    Forward equals ``dequantize(quantize(x))`` exactly. Backward passes the gradient
    through unchanged where ``x`` lies inside the representable range
    ``[(qmin - zp) * scale, (qmax - zp) * scale]`` and zeroes it where the clamp saturates
    (the clipped straight-through estimator torch.ao's FakeQuantize also uses).
    """
    return _FakeQuantize.apply(x, scale, zero_point, scheme, Rounding(rounding))
