"""Exact float32 arithmetic helpers: the building blocks every dialect is written in.

A runtime that computes in float32 rounds after each operation; to reproduce it bit for
bit we must round at the same places. These helpers make each rounding explicit:
``f32`` (one rounding to float32), ``fma_f32`` (a*b + c rounded once, as a hardware FMA),
``mul_f32`` / ``add_f32`` / ``div_f32`` (one IEEE float32 operation each).
"""

from __future__ import annotations

import torch
from torch import Tensor


def f32(v: Tensor | float) -> Tensor:
    """Round to the nearest float32 (half to even, the IEEE default).

    Numerics: any float dtype in, float32 out; exactly one rounding.
    """
    t = v if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float64)
    return t.to(torch.float32)


def _round_to_odd_f64(hi: Tensor, lo: Tensor) -> Tensor:
    """The exact value ``hi + lo`` rounded to float64 *to odd*.

    ``hi`` is the float64 round-to-nearest of an exact sum and ``lo`` its exact remainder
    (a TwoSum error term, ``|lo| <= ulp(hi)/2``). Round-to-odd keeps a sticky bit, so a
    later rounding to float32 is the correct single rounding of the exact value
    (Boldo & Melquiond, 2008).
    """
    away = torch.where(hi > 0, torch.full_like(hi, float("inf")), torch.full_like(hi, float("-inf")))
    zero = torch.zeros_like(hi)
    # the float64 neighbours bracketing the exact value: `lower` toward zero, `upper` away
    lower = torch.where((lo > 0) == (hi > 0), hi, torch.nextafter(hi, zero))
    upper = torch.nextafter(lower, away)
    lower_odd = (lower.view(torch.int64) & 1) == 1
    odd = torch.where(lower_odd, lower, upper)
    return torch.where(lo != 0, odd, hi)


def fma_f32(a: Tensor | float, b: Tensor | float, c: Tensor | float) -> Tensor:
    """``a*b + c`` on float32 operands, rounded once to float32 (a hardware FMA).

    Numerics: operands are rounded to float32 first (they are float32 in the runtime).
    The product of two float32 values is exact in float64 (48 significant bits), so the only
    error of ``f32(f64(a*b) + c)`` is double rounding, and that can only strike where the
    float64 sum lands exactly on a float32 midpoint (or in float32's subnormal range). Those
    few elements are redone exactly: TwoSum gives the sum's exact error, the sum is rounded
    to float64 *to odd*, then to float32 to nearest-even — one correct rounding.
    """
    a64, b64, c64 = (f32(t).to(torch.float64) for t in (a, b, c))
    p = a64 * b64  # exact
    s = p + c64
    out = s.to(torch.float32)
    low = s.view(torch.int64) & 0x1FFFFFFF  # the 29 float64 mantissa bits below float32's
    suspect = (low == 0x10000000) | (out.abs() < 2.0**-126)
    if bool(suspect.any()):
        idx = suspect.nonzero(as_tuple=True)
        ps, ss, cs = p.expand_as(s)[idx], s[idx], c64.expand_as(s)[idx]
        bv = ss - ps  # TwoSum: exact error of the float64 addition
        err = (ps - (ss - bv)) + (cs - bv)
        out[idx] = _round_to_odd_f64(ss, err).to(torch.float32)
    return out


def mul_f32(a: Tensor | float, b: Tensor | float) -> Tensor:
    """One IEEE float32 multiplication (operands rounded to float32 first)."""
    return f32(a) * f32(b)


def add_f32(a: Tensor | float, b: Tensor | float) -> Tensor:
    """One IEEE float32 addition (operands rounded to float32 first)."""
    return f32(a) + f32(b)


def div_f32(a: Tensor | float, b: Tensor | float) -> Tensor:
    """One IEEE float32 division (operands rounded to float32 first)."""
    return f32(a) / f32(b)


def recip_f32_of_f64(v: float) -> Tensor:
    """``f32(1 / v)`` with the division done in float64 (e.g. ``f32(1/f64(sx*sw))``)."""
    return f32(torch.tensor(1.0 / float(v), dtype=torch.float64))
