"""glassquant.fixedpoint against exact Python-integer / Fraction references written from the maths.

The references never use shifts, masks or nudges: each is a rounding of an exact rational.
Tolerance 0 everywhere (``torch.equal``).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from glassquant.fixedpoint import (
    quantize_multiplier,
    requantize_double_rounding,
    requantize_single_rounding,
    right_shift_of,
    rounding_divide_by_pot,
    rounding_right_shift,
    saturating_rounding_doubling_high_mul,
    split_shift,
)

from gq_testing import int32_edges

I32_MIN, I32_MAX = -(2**31), 2**31 - 1



EDGES = int32_edges()
_RNG = random.Random(20261128)
RANDOM = [_RNG.randint(I32_MIN, I32_MAX) for _ in range(300)]
VALUES = EDGES + RANDOM


def _t(vals: list[int]) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.int64)


# ---------------------------------------------------------------- exact references (maths only)


def ref_half_up(q: Fraction) -> int:
    """Nearest integer, ties toward +infinity."""
    return math.floor(q + Fraction(1, 2))


def ref_half_away(q: Fraction) -> int:
    """Nearest integer, ties away from zero."""
    r = math.floor(abs(q) + Fraction(1, 2))
    return r if q >= 0 else -r


def ref_srdhm(a: int, b: int) -> int:
    """Nearest integer to 2ab / 2**32, saturated to int32 (gemmlowp's rounding ties upward)."""
    return min(ref_half_up(Fraction(a * b, 2**31)), I32_MAX)


def ref_srdhm_c(a: int, b: int) -> int:
    """A literal transcription of gemmlowp's C (division truncating toward zero), for cross-checking."""
    if a == b == I32_MIN:
        return I32_MAX
    ab = a * b
    num = ab + (2**30 if ab >= 0 else 1 - 2**30)
    q = abs(num) // 2**31
    return q if num >= 0 else -q


# ---------------------------------------------------------------- SRDHM


def test_srdhm_reference_agrees_with_c_transcription() -> None:
    pairs = [(a, b) for a in EDGES for b in EDGES[::3]]
    assert all(ref_srdhm(a, b) == ref_srdhm_c(a, b) for a, b in pairs)


def test_srdhm_edges_cartesian() -> None:
    a = _t(EDGES)[:, None]  # (E, 1)
    b = _t(EDGES)[None, :]  # (1, E)
    expected = _t([ref_srdhm(x, y) for x in EDGES for y in EDGES]).reshape(len(EDGES), len(EDGES))
    assert torch.equal(saturating_rounding_doubling_high_mul(a, b), expected)


def test_srdhm_random_and_saturation() -> None:
    a, b = VALUES, VALUES[::-1]
    expected = _t([ref_srdhm(x, y) for x, y in zip(a, b, strict=True)])
    assert torch.equal(saturating_rounding_doubling_high_mul(_t(a), _t(b)), expected)
    assert int(saturating_rounding_doubling_high_mul(_t([I32_MIN]), I32_MIN)) == I32_MAX
    # ties: 2ab/2**32 = ±2.5 and ±0.5 -> 3, -2, 1, 0 (ties upward)
    got = saturating_rounding_doubling_high_mul(_t([5, -5, 1, -1]), 2**30)
    assert torch.equal(got, _t([3, -2, 1, 0]))


@given(st.integers(I32_MIN, I32_MAX), st.integers(I32_MIN, I32_MAX))
def test_srdhm_hypothesis(a: int, b: int) -> None:
    assert int(saturating_rounding_doubling_high_mul(_t([a]), b)) == ref_srdhm(a, b)


# ---------------------------------------------------------------- RoundingDivideByPOT


def test_rounding_divide_by_pot_all_exponents() -> None:
    x = _t(VALUES)[:, None]  # (V, 1)
    e = torch.arange(32)[None, :]  # (1, 32)
    expected = _t([ref_half_away(Fraction(v, 2**k)) for v in VALUES for k in range(32)]).reshape(len(VALUES), 32)
    assert torch.equal(rounding_divide_by_pot(x, e), expected)
    assert torch.equal(rounding_divide_by_pot(_t([-5, -3, 3, 5]), 1), _t([-3, -2, 2, 3]))  # half away


@given(st.integers(I32_MIN, I32_MAX), st.integers(0, 31))
def test_rounding_divide_by_pot_hypothesis(x: int, e: int) -> None:
    assert int(rounding_divide_by_pot(_t([x]), e)) == ref_half_away(Fraction(x, 2**e))


# ---------------------------------------------------------------- rounding_right_shift


def test_rounding_right_shift() -> None:
    wide = VALUES + [v * 2**31 for v in VALUES[:: 7]] + [2**62, -(2**62)]
    x = _t(wide)[:, None]  # (W, 1)
    s = torch.arange(63)[None, :]  # (1, 63)
    expected = _t([ref_half_up(Fraction(v, 2**k)) for v in wide for k in range(63)]).reshape(len(wide), 63)
    assert torch.equal(rounding_right_shift(x, s), expected)
    assert torch.equal(rounding_right_shift(_t([-5, -3, 3, 5]), 1), _t([-2, -1, 2, 3]))  # half up
    assert torch.equal(rounding_right_shift(_t(VALUES), 0), _t(VALUES))


# ---------------------------------------------------------------- quantize_multiplier


def ref_exponent(r: Fraction) -> int:
    """The e with 2**(e-1) <= r < 2**e."""
    e = r.numerator.bit_length() - r.denominator.bit_length()
    while r >= Fraction(2) ** e:
        e += 1
    while r < Fraction(2) ** (e - 1):
        e -= 1
    return e


def ref_quantize_multiplier(real: float) -> tuple[int, int]:
    r = Fraction(real)
    e = ref_exponent(r)
    q = ref_half_away(r * Fraction(2) ** (31 - e))
    if q == 2**31:
        q, e = 2**30, e + 1
    return q, e


def _check_multiplier(real: float) -> None:
    m, shift = quantize_multiplier(real)
    assert (m, shift) == ref_quantize_multiplier(real)
    assert 2**30 <= m < 2**31
    err = abs(Fraction(m) * Fraction(2) ** (shift - 31) - Fraction(real))
    assert err <= Fraction(2) ** (shift - 32)


def test_quantize_multiplier_random() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        _check_multiplier(10 ** rng.uniform(-6, 3))
    for _ in range(500):
        _check_multiplier(rng.uniform(1e-6, 1e3))


@given(st.floats(1e-6, 1e3))
def test_quantize_multiplier_hypothesis(real: float) -> None:
    _check_multiplier(real)


def test_quantize_multiplier_powers_of_two_and_carry() -> None:
    for k in range(-31, 40):
        assert quantize_multiplier(2.0**k) == (2**30, k + 1)
    assert quantize_multiplier(1 - 2**-40) == (2**30, 1)  # q rounds to 2**31: carry
    assert quantize_multiplier(0.5 - 2**-40) == (2**30, 0)
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(2.0**-40) == (0, 0)  # shift < -31 flushed, as TFLite
    assert quantize_multiplier(3.0) == (3 * 2**29, 2)
    # tie: fraction * 2**31 = 2**30 + 0.5 rounds away from zero
    assert quantize_multiplier((2**30 + 0.5) / 2**31) == (2**30 + 1, 0)
    assert right_shift_of(-5) == 5
    assert split_shift(-5) == (0, 5) and split_shift(3) == (3, 0)


@pytest.mark.parametrize("bad", [-1.0, -1e-30, float("nan"), float("inf"), float("-inf")])
def test_quantize_multiplier_rejects(bad: float) -> None:
    with pytest.raises(ValueError, match="real multiplier"):
        quantize_multiplier(bad)


# ---------------------------------------------------------------- requantization


def ref_double(acc: int, m: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    return ref_half_away(Fraction(ref_srdhm(acc * 2**left, m), 2**right))


def ref_single(acc: int, m: int, shift: int) -> int:
    return ref_half_up(Fraction(acc * m, 2 ** (31 - shift)))


def test_requantize_double_and_single_rounding() -> None:
    rng = random.Random(11)
    accs = VALUES
    for _ in range(40):
        m, shift = quantize_multiplier(10 ** rng.uniform(-9, -0.01))  # shift <= 0
        m_t = torch.tensor(m)
        got_d = requantize_double_rounding(_t(accs), m_t, shift)
        got_s = requantize_single_rounding(_t(accs), m, torch.tensor(shift))
        assert torch.equal(got_d, _t([ref_double(a, m, shift) for a in accs]))
        assert torch.equal(got_s, _t([ref_single(a, m, shift) for a in accs]))
    # edge multipliers and shifts, including left shifts on small accumulators
    small = [v for v in EDGES if abs(v) <= 2**20]
    for m in (0, 2**30, 2**30 + 1, I32_MAX):
        for shift in (-31, -30, -1, 0, 1, 10):
            got_d = requantize_double_rounding(_t(small), m, shift)
            got_s = requantize_single_rounding(_t(small), m, shift)
            assert torch.equal(got_d, _t([ref_double(a, m, shift) for a in small]))
            assert torch.equal(got_s, _t([ref_single(a, m, shift) for a in small]))


def test_double_and_single_rounding_differ_on_a_known_case() -> None:
    # 0.75 * 2**-1 = 0.375 -> 0 with one rounding; SRDHM first gives 1, then 1/2 -> 1 (away)
    m, shift = quantize_multiplier(0.75)  # (3 * 2**29, 0)
    assert int(requantize_single_rounding(_t([1]), m, shift - 1)) == 0
    assert int(requantize_double_rounding(_t([1]), m, shift - 1)) == 1


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="acc"):
        requantize_double_rounding(_t([2**31]), 2**30, -1)
    with pytest.raises(ValueError, match="overflows int32"):
        requantize_double_rounding(_t([2**30]), 2**30, 2)
    with pytest.raises(ValueError, match="overflows int32"):
        requantize_single_rounding(_t([I32_MAX]), I32_MAX, 30)
    with pytest.raises(ValueError, match="multiplier"):
        requantize_single_rounding(_t([1]), -1, 0)
    with pytest.raises(ValueError, match="shift"):
        requantize_single_rounding(_t([1]), 2**30, 31)
    with pytest.raises(ValueError, match="exponent"):
        rounding_divide_by_pot(_t([1]), 32)
    with pytest.raises(TypeError, match="a"):
        saturating_rounding_doubling_high_mul(torch.tensor([1.0]), 1)
    with pytest.raises(TypeError, match="real multiplier"):
        quantize_multiplier("0.5")  # type: ignore[arg-type]
