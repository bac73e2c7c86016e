"""Integer-only requantization arithmetic: gemmlowp's fixed-point primitives and TFLite's Q31 multipliers.

The real multiplier ``M = sx * sw / sy`` of eq. (5) (docs/quantization.md) is written as
``M ~= multiplier * 2**(shift - 31)`` with ``multiplier`` an int32 in ``[2**30, 2**31)`` (Q31, i.e.
a fraction in ``[0.5, 1)``) and ``shift`` a *left* shift exponent, TFLite's convention (positive:
shift left, negative: shift right). :func:`split_shift` turns it into the ``(left_shift,
right_shift)`` pair (both >= 0) that the kernels apply; :func:`right_shift_of` gives
``right_shift = -shift``, the name the rest of glassquant uses (``multiplier`` with ``right_shift``).

Tensors are int64 holding int32 values (the C types are int32 with an int64 product); every
function checks that range and raises ValueError naming the argument otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_HALF = 2**62  # |x| bound for rounding_right_shift: x + 2**61 cannot overflow int64


def _int64(v: int | Tensor, name: str, lo: int, hi: int) -> Tensor:
    """``v`` as an int64 tensor after checking it is an integer in ``[lo, hi]``."""
    if isinstance(v, bool) or not isinstance(v, (int, Tensor)):
        raise TypeError(f"{name}: expected an int or an integer tensor, got {type(v).__name__}")
    if isinstance(v, int):
        t = torch.tensor(v, dtype=torch.int64)
    else:
        if v.dtype == torch.bool or v.is_floating_point() or v.is_complex():
            raise TypeError(f"{name}: expected an integer tensor, got dtype {v.dtype}")
        t = v.to(torch.int64)
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        raise ValueError(f"{name}: values must lie in [{lo}, {hi}], got [{int(t.min())}, {int(t.max())}]")
    return t


# ----------------------------------------------------------------------------- multipliers


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real ~= multiplier * 2**(shift - 31)``.

    Numerics: ``real`` a finite float >= 0 (a Python float is a C double, as in TFLite).
    ``frexp(real) = (fraction, shift)`` with fraction in [0.5, 1); ``q = round_half_away(fraction
    * 2**31)`` (``TfLiteRound`` = C ``round``; the product is exact, a power-of-two scaling);
    if ``q == 2**31`` (fraction within half an LSB of 1) then ``q //= 2; shift += 1``. Result:
    ``multiplier`` in [2**30, 2**31) and ``shift`` a *left* exponent (negative = right shift),
    error ``|multiplier * 2**(shift-31) - real| <= 2**(shift-32)`` (half an LSB). Powers of two
    are exact: ``2**k -> (2**30, k + 1)``. ``real == 0 -> (0, 0)``; like TFLite, a ``shift < -31``
    (real < 2**-32, every product would shift out to zero) is flushed to ``(0, 0)`` as well.
    Negative, NaN or infinite ``real`` raise ValueError.
    """
    if isinstance(real, bool) or not isinstance(real, (int, float)):
        raise TypeError(f"real multiplier: expected a float, got {type(real).__name__}")
    real = float(real)
    if math.isnan(real) or math.isinf(real) or real < 0:
        raise ValueError(f"real multiplier must be finite and >= 0, got {real!r}")
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)  # real = fraction * 2**shift, fraction in [0.5, 1)
    v = fraction * 2.0**31  # exact
    q = math.floor(v)
    q += 1 if v - q >= 0.5 else 0  # round half away from zero (v > 0); v - q is exact
    if q == 2**31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q, shift


def right_shift_of(shift: int) -> int:
    """The right-shift amount ``-shift`` of a left exponent from :func:`quantize_multiplier`."""
    return -shift


def split_shift(shift: int) -> tuple[int, int]:
    """TFLite's split of a left exponent: ``(left_shift, right_shift) = (max(shift, 0), max(-shift, 0))``."""
    return max(shift, 0), max(-shift, 0)


# ----------------------------------------------------------------------------- gemmlowp primitives


def saturating_rounding_doubling_high_mul(a: Tensor, b: int | Tensor) -> Tensor:
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: the high int32 of ``2 * a * b``, rounded.

    Numerics: a, b int32 values (any integer dtype, broadcast), result int64 holding int32.
    ``ab = a * b`` in int64 (|ab| <= 2**62, exact); ``nudge = 2**30 if ab >= 0 else 1 - 2**30``;
    ``result = (ab + nudge) / 2**31`` with C division (truncation toward zero). Together this is
    ``floor(ab / 2**31 + 1/2)``: round to nearest, ties toward +infinity (-2.5 -> -2, 2.5 -> 3).
    Saturation: the only overflow, ``a == b == INT32_MIN`` (true value 2**31), gives INT32_MAX.
    """
    a64 = _int64(a, "a", INT32_MIN, INT32_MAX)
    b64 = _int64(b, "b", INT32_MIN, INT32_MAX)
    ab = a64 * b64
    nudge = torch.where(ab >= 0, 2**30, 1 - 2**30)
    high = torch.div(ab + nudge, 2**31, rounding_mode="trunc")  # C integer division
    overflow = (a64 == INT32_MIN) & (b64 == INT32_MIN)
    return torch.where(overflow, INT32_MAX, high)


def rounding_divide_by_pot(x: Tensor, exponent: int | Tensor) -> Tensor:
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero.

    Numerics: x int32 values, exponent in [0, 31] (int or tensor, broadcast); result int64
    holding int32. ``mask = 2**exponent - 1; remainder = x & mask; threshold = (mask >> 1) +
    (1 if x < 0 else 0); result = (x >> exponent) + (1 if remainder > threshold else 0)`` with
    ``>>`` arithmetic (floor). Exact; no overflow. ``exponent == 0 -> x``.
    """
    x64 = _int64(x, "x", INT32_MIN, INT32_MAX)
    e = _int64(exponent, "exponent", 0, 31)
    mask = (torch.ones_like(e) << e) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0).to(torch.int64)
    return (x64 >> e) + (remainder > threshold).to(torch.int64)


def rounding_right_shift(x: Tensor, shift: int | Tensor) -> Tensor:
    """A single rounding shift ``(x + 2**(shift - 1)) >> shift``: ``x / 2**shift`` rounded half up.

    Numerics: x int64 with |x| <= 2**62, shift in [0, 62] (int or tensor, broadcast); ``>>`` is
    arithmetic (floor), so ties go toward +infinity (-2.5 -> -2). ``shift == 0 -> x``. The sum
    cannot overflow int64 (|x| + 2**61 < 2**63). Result int64.
    """
    x64 = _int64(x, "x", -INT64_HALF, INT64_HALF)
    s = _int64(shift, "shift", 0, 62)
    rounding = (torch.ones_like(s) << s) >> 1  # 2**(shift-1), 0 for shift 0
    return (x64 + rounding) >> s


# ----------------------------------------------------------------------------- TFLite requantization


def requantize_double_rounding(acc: Tensor, multiplier: int | Tensor, shift: int | Tensor) -> Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier`` (gemmlowp form, two roundings): ``acc * M``.

    Numerics: acc int32 values; multiplier in [0, 2**31) (Q31); shift a left exponent in
    [-31, 31] as returned by :func:`quantize_multiplier` (int or tensor, broadcast). With
    ``(left, right) = split_shift(shift)``: ``rounding_divide_by_pot(srdhm(acc * 2**left,
    multiplier), right)`` — first rounding half up (SRDHM), second half away from zero.
    ``acc * 2**left`` must fit int32 (int32 overflow is undefined in TFLite): ValueError
    otherwise. Result int64 holding int32, before the zero point and clamp of eq. (5).
    """
    acc64 = _int64(acc, "acc", INT32_MIN, INT32_MAX)
    m = _int64(multiplier, "multiplier", 0, INT32_MAX)
    s = _int64(shift, "shift", -31, 31)
    left = s.clamp(min=0)
    right = (-s).clamp(min=0)
    scaled = acc64 << left
    if scaled.numel() and (int(scaled.min()) < INT32_MIN or int(scaled.max()) > INT32_MAX):
        raise ValueError("acc * 2**left_shift overflows int32 (TFLite computes it in int32)")
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(scaled, m), right)


def requantize_single_rounding(acc: Tensor, multiplier: int | Tensor, shift: int | Tensor) -> Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier`` under ``TFLITE_SINGLE_ROUNDING``: one rounding.

    Numerics: acc int32 values; multiplier in [0, 2**31); shift a left exponent in [-31, 30]
    (TFLite's DCHECK range; int or tensor, broadcast). ``total_shift = 31 - shift`` in [1, 62];
    ``result = (acc * multiplier + 2**(total_shift - 1)) >> total_shift`` in int64 (|product| <=
    2**62, exact): ``floor(acc * multiplier / 2**total_shift + 1/2)``, ties toward +infinity.
    A result outside int32 (TFLite's DCHECK) raises ValueError. Result int64 holding int32.
    """
    acc64 = _int64(acc, "acc", INT32_MIN, INT32_MAX)
    m = _int64(multiplier, "multiplier", 0, INT32_MAX)
    s = _int64(shift, "shift", -31, 30)
    out = rounding_right_shift(acc64 * m, 31 - s)
    if out.numel() and (int(out.min()) < INT32_MIN or int(out.max()) > INT32_MAX):
        raise ValueError("requantized result overflows int32 (shift too large for this acc)")
    return out
