"""Tests for glassquant.rounding against decimal's exact rounding of the same binary values."""

from __future__ import annotations

from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from glassquant.rounding import Rounding, floor, round_, round_half_away, round_half_even

# decimal's ROUND_HALF_UP rounds ties away from zero (it works on magnitudes).
DECIMAL_RULE = {Rounding.HALF_EVEN: ROUND_HALF_EVEN, Rounding.HALF_AWAY: ROUND_HALF_UP, Rounding.FLOOR: ROUND_FLOOR}
FUNC = {Rounding.HALF_EVEN: round_half_even, Rounding.HALF_AWAY: round_half_away, Rounding.FLOOR: floor}

F32_BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0)))  # 0.49999997f = 0.5 - 2**-25
F32_ABOVE_HALF = float(np.nextafter(np.float32(0.5), np.float32(1)))  # 0.50000006f = 0.5 + 2**-24
F64_BELOW_HALF = float(np.nextafter(0.5, 0.0))  # 0.5 - 2**-54


def reference(values: list[float], rule: Rounding) -> list[float]:
    """Exact rounding: Decimal(float) is the binary value exactly, quantized to an integer.

    The context needs enough digits for the largest float64 integer part (309) so quantize is exact.
    """
    ctx = Context(prec=400, rounding=DECIMAL_RULE[rule])
    out = []
    for v in values:
        r = float(Decimal(v).quantize(Decimal(1), context=ctx))
        out.append(r if r != 0 else np.copysign(0.0, v))  # Decimal's -0 survives float(); keep the IEEE sign
    return out


def as_list(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.tolist()]


TIES = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]
TABLE = {
    Rounding.HALF_EVEN: [-2.0, -2.0, -0.0, 0.0, 2.0, 2.0],
    Rounding.HALF_AWAY: [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0],
    Rounding.FLOOR: [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", list(Rounding))
def test_ties_table(rule: Rounding, dtype: torch.dtype) -> None:
    x = torch.tensor(TIES, dtype=dtype)
    out = FUNC[rule](x)
    assert out.dtype == dtype
    assert as_list(out) == TABLE[rule] == reference(TIES, rule)


@pytest.mark.parametrize("rule", list(Rounding))
def test_just_below_half_float32(rule: Rounding) -> None:
    """0.49999997f: trunc(x + 0.5) gives 1 (the sum rounds up to 1.0f); the right answer is 0."""
    assert F32_BELOW_HALF == 0.5 - 2**-25 and F32_ABOVE_HALF == 0.5 + 2**-24
    x = torch.tensor([F32_BELOW_HALF, -F32_BELOW_HALF, F32_ABOVE_HALF], dtype=torch.float32)
    want = {Rounding.HALF_EVEN: [0.0, 0.0, 1.0], Rounding.HALF_AWAY: [0.0, 0.0, 1.0],
            Rounding.FLOOR: [0.0, -1.0, 0.0]}[rule]
    assert as_list(FUNC[rule](x)) == want == reference(x.tolist(), rule)


def test_naive_half_away_would_fail_below_half() -> None:
    """The test above can fail: the naive formula really gets 0.49999997f wrong in float32."""
    x = torch.tensor([F32_BELOW_HALF], dtype=torch.float32)
    naive = torch.trunc(x + torch.copysign(torch.tensor(0.5), x))
    assert naive.item() == 1.0


@pytest.mark.parametrize("rule", [Rounding.HALF_EVEN, Rounding.HALF_AWAY])
def test_just_below_half_float64(rule: Rounding) -> None:
    x = torch.tensor([F64_BELOW_HALF, -F64_BELOW_HALF], dtype=torch.float64)
    assert as_list(FUNC[rule](x)) == [0.0, 0.0]


# float32 has ulp 0.5 on [2**22, 2**23) and ulp 1 on [2**23, 2**24): the last ties and the
# first values that are already integers (where x + 0.5 would round up in float32).
LARGE_F32 = [2**22 + 0.5, 2**22 + 1.5, 2**23 - 1.5, 2**23 - 0.5, 2**23, 2**23 + 1, 2**23 + 3, 2**24 - 1,
             2**24, 2**24 + 2, 2**31, 2**100, float(np.finfo(np.float32).max)]


@pytest.mark.parametrize("rule", list(Rounding))
def test_large_float32(rule: Rounding) -> None:
    values = LARGE_F32 + [-v for v in LARGE_F32]
    x = torch.tensor(values, dtype=torch.float32)
    assert x.tolist() == values  # every value is exactly a float32
    assert as_list(FUNC[rule](x)) == reference(values, rule)


def test_large_float32_spot_values() -> None:
    x = torch.tensor([2**22 + 0.5, 2**23 - 0.5, 2**23 + 1, -(2**22 + 0.5)], dtype=torch.float32)
    assert as_list(round_half_even(x)) == [2**22, 2**23, 2**23 + 1, -(2**22)]
    assert as_list(round_half_away(x)) == [2**22 + 1, 2**23, 2**23 + 1, -(2**22 + 1)]
    assert as_list(floor(x)) == [2**22, 2**23 - 1, 2**23 + 1, -(2**22 + 1)]
    # 2**23 + 0.5 is not a float32: the literal itself rounds (ties to even) to 2**23
    assert torch.tensor(2**23 + 0.5, dtype=torch.float32).item() == 2**23


@pytest.mark.parametrize("rule", list(Rounding))
def test_negative_zero_keeps_its_sign(rule: Rounding) -> None:
    """IEEE roundToIntegral (and C round/floor) keep the operand's sign: -0 -> -0, -0.4 -> -0."""
    x = torch.tensor([-0.0, 0.0, -0.4, 0.4], dtype=torch.float32)
    out = FUNC[rule](x)
    assert out.tolist() == [0.0, 0.0, (-1.0 if rule is Rounding.FLOOR else 0.0), 0.0]
    assert torch.signbit(out).tolist() == [True, False, True, False]


@pytest.mark.parametrize("rule", list(Rounding))
def test_round_by_name_and_enum(rule: Rounding) -> None:
    x = torch.tensor([*TIES, 0.3, -0.7, 7.49, -7.51], dtype=torch.float32)
    want = FUNC[rule](x)
    assert torch.equal(round_(x, rule), want)
    assert torch.equal(round_(x, rule.value), want)
    assert torch.equal(round_(x, str(rule.value)), want)  # a plain str, not the enum member


def test_round_default_is_half_even() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -2.5])
    assert round_(x).tolist() == [0.0, 2.0, 2.0, -2.0]


@pytest.mark.parametrize("name", ["nearest", "", "half_up", "ceil", "HALF_EVEN_"])
def test_invalid_rounding_name_raises(name: str) -> None:
    with pytest.raises(ValueError):
        round_(torch.tensor([0.5]), name)


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
finite64 = st.floats(allow_nan=False, allow_infinity=False)


@given(st.lists(finite32, min_size=1, max_size=32), st.sampled_from(list(Rounding)))
def test_random_float32_matches_decimal(values: list[float], rule: Rounding) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    assert as_list(FUNC[rule](x)) == reference(values, rule)


@given(st.lists(finite64, min_size=1, max_size=32), st.sampled_from(list(Rounding)))
def test_random_float64_matches_decimal(values: list[float], rule: Rounding) -> None:
    x = torch.tensor(values, dtype=torch.float64)
    assert as_list(FUNC[rule](x)) == reference(values, rule)


@given(st.integers(-(2**23), 2**23 - 1), st.sampled_from(list(Rounding)))
def test_random_float32_ties(k: int, rule: Rounding) -> None:
    """k + 0.5 is exactly representable in float32 for |k| < 2**23."""
    v = k + 0.5
    x = torch.tensor([v], dtype=torch.float32)
    assert x.item() == v
    assert as_list(FUNC[rule](x)) == reference([v], rule)
