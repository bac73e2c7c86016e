"""Tests for glassquant.floatops: single roundings to float32, checked against exact rational arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from glassquant.floatops import add_f32, div_f32, f32, fma_f32, mul_f32, recip_f32_of_f64

F32_MAX = Fraction(float(np.finfo(np.float32).max))
OVERFLOW_AT = F32_MAX + Fraction(2) ** 103  # FLT_MAX + ulp/2 = 2**128 - 2**103: from here on, round to inf


def round_to_f32(r: Fraction) -> float:
    """The float32 nearest to the exact rational ``r``, ties to even mantissa (IEEE round-to-nearest).

    ``float(r)`` is r rounded to float64; that (or its float32 conversion) is within one float32 ulp of
    the answer, so the answer is the nearest of that float32 and its two neighbours, compared exactly.
    """
    if abs(r) >= OVERFLOW_AT:
        return float("inf") if r > 0 else float("-inf")
    with np.errstate(over="ignore"):  # just below OVERFLOW_AT the guess may be inf; its neighbour is FLT_MAX
        guess = np.float32(float(r))
        cands = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    cands = [c for c in cands if np.isfinite(c)]
    best = min(abs(Fraction(float(c)) - r) for c in cands)
    nearest = [c for c in cands if abs(Fraction(float(c)) - r) == best]
    if len(nearest) == 2:  # a tie: the one whose last mantissa bit is 0
        nearest = [c for c in nearest if int(np.array(c, dtype=np.float32).view(np.uint32)) & 1 == 0]
    return float(nearest[0])


def fma_reference(a: float, b: float, c: float) -> float:
    """a*b + c on float32 operands, computed exactly, rounded once."""
    fa, fb, fc = (Fraction(float(np.float32(v))) for v in (a, b, c))
    return round_to_f32(fa * fb + fc)


def naive_fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The tempting version: sum in float64, then to float32 (two roundings)."""
    return (a.double() * b.double() + c.double()).float()


def check_fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> None:
    got = fma_f32(a, b, c)
    assert got.dtype == torch.float32 and got.shape == a.shape
    want = [fma_reference(x, y, z) for x, y, z in zip(a.tolist(), b.tolist(), c.tolist(), strict=True)]
    bad = [(x, y, z, g, w) for x, y, z, g, w in zip(a.tolist(), b.tolist(), c.tolist(), got.tolist(), want,
                                                     strict=True) if g != w]
    assert not bad, bad[:5]


def test_reference_rounding_itself() -> None:
    """Sanity of the test's own reference on hand-made cases."""
    one_ulp = 2.0**-23
    assert round_to_f32(Fraction(1) + Fraction(1, 2**24)) == 1.0  # tie, 1.0 is even
    assert round_to_f32(Fraction(1) + Fraction(3, 2**24)) == 1.0 + 2 * one_ulp  # tie, goes up to even
    assert round_to_f32(Fraction(1) + Fraction(1, 2**24) + Fraction(1, 2**80)) == 1.0 + one_ulp
    assert round_to_f32(Fraction(1, 3)) == float(np.float32(1) / np.float32(3))
    assert round_to_f32(OVERFLOW_AT) == float("inf")
    assert round_to_f32(OVERFLOW_AT - Fraction(1, 2**10)) == float(F32_MAX)
    assert round_to_f32(Fraction(3, 2**150)) == 2.0**-148  # subnormal tie 1.5 * 2**-149 -> 2 * 2**-149


def test_random_values() -> None:
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(3000, generator=g) for _ in range(3))
    check_fma(a, b, c)


def test_values_spanning_exponents() -> None:
    g = torch.Generator().manual_seed(1)
    n = 3000

    def spread(lo: int, hi: int) -> torch.Tensor:
        e = torch.randint(lo, hi, (n,), generator=g).float()
        return (torch.rand(n, generator=g) + 1) * torch.sign(torch.randn(n, generator=g)) * 2.0**e

    check_fma(spread(-70, 60), spread(-70, 60), spread(-126, 127))
    check_fma(spread(-75, -60), spread(-75, -60), spread(-149, -120))  # results in the subnormal range


def test_products_cancelling_c() -> None:
    """c = -(a*b rounded to float32), and its neighbours: the result is the product's rounding error."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(1000, generator=g) * 10
    b = torch.randn(1000, generator=g) * 10
    p32 = (a.double() * b.double()).float()
    for c in (-p32, torch.nextafter(-p32, torch.tensor(float("inf"))), torch.nextafter(-p32, torch.tensor(-1e30))):
        check_fma(a, b, c)
    got = fma_f32(a, b, -p32)
    # the error term a*b - f32(a*b) is itself exactly a float32, so nothing is lost
    exact = [float(Fraction(x) * Fraction(y) - Fraction(z)) for x, y, z in zip(a.tolist(), b.tolist(), p32.tolist(),
                                                                            strict=True)]
    assert got.tolist() == exact
    assert int((got != 0).sum()) > 900


def test_exact_cancellation_is_zero() -> None:
    a = torch.tensor([3.0, 0.1, -7.5])
    b = torch.tensor([0.5, 10.0, 4.0])
    c = -(a.double() * b.double()).float()  # exact for the first and last
    got = fma_f32(a, b, c)
    assert got[0].item() == 0.0 and got[2].item() == 0.0


def double_rounding_cases() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Operands whose exact a*b + c lies within 2**-53 (relative) of a float32 midpoint.

    Float64 rounds that sum onto the midpoint itself, and float64 -> float32 then breaks the tie
    to even, which is the wrong side. Two families:
      up:   641 * 6700417 = 2**32 + 1 (Euler), so a*b = 2**-24 + 2**-56 exactly; with c in [1, 2) of
            even mantissa the exact sum is just above c + 2**-24, a midpoint whose even side is c.
            Correct: c + 2**-23. Naive: c.
      down: (1 + 2**-18)(1 - 2**-18) 2**-24 = 2**-24 - 2**-60; with c of odd mantissa the exact sum is
            just below c + 2**-24, a midpoint whose even side is c + 2**-23. Correct: c. Naive: c + 2**-23.
    Each case is also scaled by 2**k and negated (a, c negative together) to move it around.
    Returns a, b, c and the expected result derived by hand.
    """
    rows = []
    g = torch.Generator().manual_seed(3)
    mant = torch.randint(0, 2**22, (60,), generator=g).tolist()
    for i, m in enumerate(mant):
        k = (i % 21) - 10
        sign = -1.0 if i % 2 else 1.0
        up_c = 1.0 + (2 * m) * 2.0**-23  # even mantissa
        rows.append((sign * 641.0 * 2.0**(-31 + k), 6700417.0 * 2.0**-25, sign * up_c * 2.0**k,
                     sign * (up_c + 2.0**-23) * 2.0**k))
        down_c = 1.0 + (2 * m + 1) * 2.0**-23  # odd mantissa
        rows.append((sign * (1 + 2.0**-18) * 2.0**(-12 + k), (1 - 2.0**-18) * 2.0**-12, sign * down_c * 2.0**k,
                     sign * down_c * 2.0**k))
    cols = list(zip(*rows, strict=True))
    return tuple(torch.tensor(col, dtype=torch.float32) for col in cols)  # type: ignore[return-value]


def test_double_rounding_cases_are_real() -> None:
    """The constructed inputs are exact float32 values, and the naive float64-then-float32 sum is wrong on all."""
    a, b, c, want = double_rounding_cases()
    for t in (a, b, c, want):
        assert torch.equal(t.double().float(), t)
    ref = torch.tensor([fma_reference(x, y, z) for x, y, z in zip(a.tolist(), b.tolist(), c.tolist(), strict=True)])
    assert torch.equal(ref, want)  # the hand derivation and the Fraction reference agree
    naive = naive_fma(a, b, c)
    assert bool((naive != want).all())


def test_fma_beats_double_rounding() -> None:
    a, b, c, want = double_rounding_cases()
    assert torch.equal(fma_f32(a, b, c), want)


def test_python_scalars_are_rounded_to_float32_first() -> None:
    """0.1 is not a float32: the operands are float32(0.1) etc., as in the runtime."""
    got = fma_f32(0.1, 0.2, 0.3)
    assert got.dtype == torch.float32
    assert got.item() == fma_reference(0.1, 0.2, 0.3)
    assert got.item() == round_to_f32(Fraction(float(np.float32(0.1))) * Fraction(float(np.float32(0.2)))
                                      + Fraction(float(np.float32(0.3))))


def test_fma_broadcasts() -> None:
    a = torch.tensor([[1.5], [2.5]])
    got = fma_f32(a, torch.tensor([2.0, 4.0]), 1.0)
    assert torch.equal(got, torch.tensor([[4.0, 7.0], [6.0, 11.0]]))


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(finite32, finite32, finite32)
def test_fma_any_float32(a: float, b: float, c: float) -> None:
    got = fma_f32(torch.tensor([a]), torch.tensor([b]), torch.tensor([c]))
    want = fma_reference(a, b, c)
    assert got.item() == want or (np.isnan(got.item()) and np.isnan(want))


# ---- f32 and the one-operation helpers ------------------------------------------------------------

def test_f32_single_rounding_on_midpoints() -> None:
    """Float64 values exactly halfway between float32 neighbours go to the even one."""
    x = torch.tensor([1 + 2.0**-24, 1 + 3 * 2.0**-24, -(1 + 2.0**-24), 2.0**-149 * 1.5, 2.0**-149 * 0.5,
                      (2 - 2.0**-23) * 2.0**127 + 2.0**103], dtype=torch.float64)
    got = f32(x)
    assert got.dtype == torch.float32
    assert got.tolist() == [1.0, 1 + 2 * 2.0**-23, -1.0, 2.0**-148, 0.0, float("inf")]


def test_f32_random_float64_matches_fraction() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3000, generator=g, dtype=torch.float64) * 2.0 ** torch.randint(-140, 120, (3000,), generator=g)
    got = f32(x).tolist()
    assert got == [round_to_f32(Fraction(v)) for v in x.tolist()]


def test_f32_of_python_float() -> None:
    assert f32(0.1).dtype == torch.float32
    assert f32(0.1).item() == round_to_f32(Fraction(0.1))
    assert f32(1 + 2.0**-24 + 2.0**-50).item() == 1 + 2.0**-23  # one rounding from the float64 value


@given(finite32, finite32)
def test_one_operation_helpers(a: float, b: float) -> None:
    fa, fb = Fraction(a), Fraction(b)
    assert add_f32(a, b).item() == round_to_f32(fa + fb)
    assert mul_f32(a, b).item() == round_to_f32(fa * fb)
    if b != 0:
        assert div_f32(a, b).item() == round_to_f32(fa / fb)


@pytest.mark.parametrize("v", [3.0, 0.1, 1e-5, 255.0 / 4.0, 7.3e-9])
def test_recip_f32_of_f64(v: float) -> None:
    """f32(float64(1 / v)): the float64 quotient rounded once more to float32."""
    got = recip_f32_of_f64(v)
    assert got.dtype == torch.float32
    assert got.item() == round_to_f32(Fraction(1.0 / v))
