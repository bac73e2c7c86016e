"""glassquant's integer-only dialect against exact references written here with Python ints / Fraction.

The references never use the dialect's code: ``ref_requantize`` rounds the exact rational
``acc * multiplier / 2**(31 + right_shift)`` with ``floor(v + 1/2)``; ``ref_linear`` sums Python
ints. Tolerance 0 (``torch.equal``). Each rule has a mutant (another rounding, another order)
that the adversarial inputs tell apart.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch

from glassquant import fixedpoint
from glassquant.dialects import integer
from glassquant.errors import AccumulatorOverflowError

from gq_testing import int32_edges

I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def ref_round(v: Fraction, rule: str = "half_up") -> int:
    """Round an exact rational: half_up (toward +inf), half_even, half_away."""
    fl = math.floor(v)
    frac = v - fl
    if frac != Fraction(1, 2):
        return fl + (1 if frac > Fraction(1, 2) else 0)
    if rule == "half_up":
        return fl + 1
    if rule == "half_even":
        return fl + (fl % 2)
    return fl + 1 if v > 0 else fl  # half_away


def ref_requantize(acc: int, m: int, rs: int, zy: int, qmin: int, qmax: int, rule: str = "half_up") -> int:
    v = Fraction(acc * m, 2 ** (31 + rs))
    return min(max(ref_round(v, rule) + zy, qmin), qmax)


def ref_linear(x: list[list[int]], zx: int, w: list[list[int]], bias: list[int], m: list[int], rs: list[int],
               zy: int, qmin: int, qmax: int) -> list[list[int]]:
    out = []
    for row in x:
        out.append([ref_requantize(bias[n] + sum((xk - zx) * wk for xk, wk in zip(row, w[n], strict=True)),
                                   m[n], rs[n], zy, qmin, qmax) for n in range(len(w))])
    return out


def _dialect_rq(accs: list[int], m: int, rs: int, zy: int = 0, qmin: int = -128, qmax: int = 127) -> torch.Tensor:
    return integer.requantize(torch.tensor(accs, dtype=torch.int64), m, rs, zy, qmin, qmax)



# ----------------------------------------------------------------------------- requantize


@pytest.mark.parametrize("rs", [0, 1, 2, 7, 15, 24, 30, 31])
def test_requantize_equals_exact_rational_on_edge_accumulators(rs: int) -> None:
    accs = int32_edges()
    rng = random.Random(rs)
    multipliers = [2**30, 2**30 + 1, 2**31 - 1, 2**31 - 2, 3 * 2**29, *[rng.randrange(2**30, 2**31) for _ in range(4)]]
    compared = 0
    for m in multipliers:
        for zy, qmin, qmax in [(0, -128, 127), (-128, -128, 127), (127, -128, 127), (5, 5, 100)]:
            got = _dialect_rq(accs, m, rs, zy, qmin, qmax)
            want = torch.tensor([ref_requantize(a, m, rs, zy, qmin, qmax) for a in accs], dtype=torch.int8)
            assert torch.equal(got, want), (m, rs, zy)
            compared += len(accs)
    assert compared > 10_000


def test_requantize_ties_round_toward_plus_infinity_and_mutants_differ() -> None:
    # multiplier 2**30, right_shift 1: M = 1/4 exactly, so every acc = 4k + 2 is an exact .5 tie.
    accs = list(range(-496, 497))  # acc / 4 + 3 stays inside [-128, 127]: no clamping hides a tie
    got = _dialect_rq(accs, 2**30, 1, 3, -128, 127).tolist()
    assert got == [ref_requantize(a, 2**30, 1, 3, -128, 127) for a in accs]
    assert _dialect_rq([-6, -2, 2, 6], 2**30, 1).tolist() == [-1, 0, 1, 2]  # -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 1.5 -> 2
    ties = [a for a in accs if a % 4 == 2]
    assert len(ties) == 248
    for rule in ("half_even", "half_away"):  # mutant roundings disagree on half of the ties
        mutant = [ref_requantize(a, 2**30, 1, 3, -128, 127, rule) for a in accs]
        assert sum(g != w for g, w in zip(got, mutant, strict=True)) == 124, rule
    # gemmlowp's double rounding (TFLite's default build) disagrees too: -2 -> -0.5 -> -1 there
    double = (fixedpoint.requantize_double_rounding(torch.tensor(accs), 2**30, -1) + 3).clamp(-128, 127)
    assert int((double != torch.tensor(got)).sum()) >= 124  # the negative ties, and more (its first rounding)
    truncate = [math.floor(Fraction(a, 4)) + 3 for a in accs]  # a plain shift, no rounding offset
    assert sum(g != t for g, t in zip(got, truncate, strict=True)) == 496


def test_zero_point_is_added_after_rounding_and_the_clamp_comes_last() -> None:
    # M = 1/2 (multiplier 2**30, right_shift 0), zy = -3: acc 520 -> 260 -> 257 -> clamp 127;
    # acc 253 -> 126.5 -> 127 (half up) -> 124. Clamping before adding zy would give 124 for both.
    got = _dialect_rq([520, 253], 2**30, 0, -3).tolist()
    assert got == [127, 124]
    clamp_first = [min(max(ref_round(Fraction(a, 2)), -128), 127) - 3 for a in (520, 253)]
    assert clamp_first == [124, 124] != got


def test_multiplier_near_one_becomes_an_exact_left_shift() -> None:
    # 1 - 2**-40 rounds (half away) to a Q31 mantissa of 2**31: renormalized to (2**30, shift 1) = exactly 1.0
    m, rs = integer.requantize_params(1.0, 1.0 - 2**-40, 1.0, 1)
    assert (int(m), int(rs)) == (2**30, -1)
    accs = [a for a in int32_edges() if a != I32_MIN]
    assert torch.equal(_dialect_rq(accs, 2**30, -1, 0, -128, 127),
                       torch.tensor(accs).clamp(-128, 127).to(torch.int8))
    # the largest multiplier below 1: 2**31 - 1 with right_shift 0, exact at the int32 limits
    m1, rs1 = integer.requantize_params(1.0, 1.0 - 2**-31, 1.0, 1)
    assert (int(m1), int(rs1)) == (2**31 - 1, 0)
    for zy in (-128, 0, 127):
        got = _dialect_rq(int32_edges(), 2**31 - 1, 0, zy)
        assert got.tolist() == [ref_requantize(a, 2**31 - 1, 0, zy, -128, 127) for a in int32_edges()]
    big = torch.tensor([I32_MAX, I32_MIN, 2**30 + 1, -(2**30) - 1])
    scaled = fixedpoint.requantize_single_rounding(big, 2**31 - 1, 0)  # the value before zy and the clamp
    assert scaled.tolist() == [ref_round(Fraction(int(a) * (2**31 - 1), 2**31)) for a in big]


def test_multiplier_above_one_overflowing_int32_is_an_error() -> None:
    m, rs = integer.requantize_params(1.0, 1.0 + 2**-20, 1.0, 1)
    assert int(rs) == -1 and int(m) == 2**30 + 2**10
    assert _dialect_rq([1000, -1000, 100], int(m), int(rs)).tolist() == [127, -128, 100]
    with pytest.raises(ValueError, match="overflows int32"):
        _dialect_rq([I32_MAX], int(m), int(rs))
    with pytest.raises(ValueError, match="cannot be requantized"):
        integer.requantize_params(1.0, 2.0**31, 1.0, 1)


def test_tiny_multipliers_right_shift_31_and_flush_to_zero() -> None:
    m, rs = integer.requantize_params(1.0, 1.5 * 2**-32, 1.0, 1)  # 1.5 * 2**-32 = 0.75 * 2**-31
    assert (int(m), int(rs)) == (3 * 2**29, 31)
    accs = int32_edges()
    got = _dialect_rq(accs, int(m), 31, 0)
    assert got.tolist() == [ref_requantize(a, int(m), 31, 0, -128, 127) for a in accs]
    assert _dialect_rq([I32_MIN, I32_MAX], int(m), 31).tolist() == [-1, 1]  # -1.5 -> -1 (tie up), 1.4999.. -> 1
    m0, rs0 = integer.requantize_params(1.0, 2.0**-33, 1.0, 1)  # below 2**-32: every product shifts out
    assert (int(m0), int(rs0)) == (0, 0)
    assert torch.equal(_dialect_rq(accs, 0, 0, -7), torch.full((len(accs),), -7, dtype=torch.int8))


def test_requantize_params_error_within_half_an_lsb() -> None:
    rng = random.Random(0)
    for _ in range(300):
        sx = float(torch.tensor(rng.uniform(1e-4, 1.0), dtype=torch.float32))
        sw = float(torch.tensor(rng.uniform(1e-5, 0.1), dtype=torch.float32))
        sy = float(torch.tensor(rng.uniform(1e-3, 10.0), dtype=torch.float32))
        m, rs = integer.requantize_params(sx, sw, sy, 1)
        real = Fraction(sx * sw / sy)  # float64 arithmetic, as specified
        approx = Fraction(int(m), 2 ** (31 + int(rs)))
        assert 2**30 <= int(m) < 2**31
        assert abs(approx - real) <= Fraction(1, 2 ** (32 + int(rs)))


# ----------------------------------------------------------------------------- bias and accumulator


def test_bias_rounds_half_to_even_in_float64() -> None:
    sx, sw = 2.0**-7, torch.tensor([2.0**-8] * 4)
    b = torch.tensor([2.5, 3.5, -2.5, 0.3], dtype=torch.float32) * 2.0**-15
    got = integer.bias_to_int32(b, sx, sw, 4)
    assert got.dtype == torch.int32 and got.tolist() == [2, 4, -2, 0]
    assert [ref_round(Fraction(float(v)) * 2**15, "half_away") for v in b[:3]] == [3, 4, -3]  # the mutant differs
    rng = random.Random(1)
    bias = torch.tensor([rng.uniform(-3, 3) for _ in range(500)], dtype=torch.float32)
    scales = torch.tensor([rng.uniform(1e-4, 1e-2) for _ in range(500)], dtype=torch.float32)
    want = [round(float(b_) / (0.0123 * float(s))) for b_, s in zip(bias, scales, strict=True)]  # Python: half even
    assert integer.bias_to_int32(bias, 0.0123, scales, 500).tolist() == want
    assert integer.bias_to_int32(None, 0.1, 0.2, 3).tolist() == [0, 0, 0]


def test_bias_outside_int32_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="outside int32"):
        integer.bias_to_int32(torch.tensor([0.0, 1.0]), 2.0**-16, 2.0**-16, 2)  # 2**32
    edge = torch.tensor([(2**31 - 128) * 2.0**-32, -(2**31 - 128) * 2.0**-32])  # exact in float32
    assert integer.bias_to_int32(edge, 2.0**-16, 2.0**-16, 2).tolist() == [2**31 - 128, -(2**31) + 128]


def test_accumulator_at_int32_limits_and_overflow_check() -> None:
    w = torch.full((2, 3), 127, dtype=torch.int8)
    w[1] = -128
    wc = 3 * 255 * 127, 3 * 255 * 128  # zx = -128: |x - zx| <= 255
    bias = torch.tensor([I32_MAX - wc[0], -(I32_MAX - wc[1])], dtype=torch.int32)
    assert integer.accumulator_bound(w, bias, -128).tolist() == [I32_MAX, I32_MAX]
    assert integer.check_accumulator(w, bias, -128) == I32_MAX
    x = torch.full((1, 3), 127, dtype=torch.int8)
    acc = integer.accumulate(x, -128, w, bias)
    assert acc.tolist() == [[I32_MAX, -I32_MAX]]
    y = integer.requantize(acc, torch.tensor([2**31 - 1, 2**31 - 1]), torch.tensor([24, 24]), 0)
    assert y.tolist() == [[min(ref_round(Fraction(int(a) * (2**31 - 1), 2**55)), 127) if a > 0
                           else max(ref_round(Fraction(int(a) * (2**31 - 1), 2**55)), -128) for a in acc[0]]]
    with pytest.raises(AccumulatorOverflowError, match="output 0"):
        integer.check_accumulator(w, bias + torch.tensor([1, 0], dtype=torch.int32), -128)
    with pytest.raises(AccumulatorOverflowError):
        integer.accumulate(x, -128, w, bias + torch.tensor([1, 0], dtype=torch.int32))


# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize("zx,zy,relu", [(-128, -128, False), (127, 127, False), (127, -128, True), (-128, 127, True),
                                        (3, -20, True), (-77, 40, False)])
def test_linear_equals_python_int_reference(zx: int, zy: int, relu: bool) -> None:
    g = torch.Generator().manual_seed(zx * 1000 + zy)
    m_rows, k, n = 24, 40, 20
    x = torch.randint(-128, 128, (m_rows, k), generator=g, dtype=torch.int8)
    x[0], x[1] = 127, -128  # the input grid's ends
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    bias = torch.randint(-200_000, 200_000, (n,), generator=g, dtype=torch.int32)
    mult = torch.randint(2**30, 2**31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    mult[0] = 2**30  # a power of two: ties
    rs = torch.randint(8, 16, (n,), generator=g, dtype=torch.int32)
    qmin = zy if relu else -128
    got = integer.linear(x, zx, w, bias, mult, rs, zy, qmin, 127)
    want = ref_linear(x.tolist(), zx, w.tolist(), bias.tolist(), mult.tolist(), rs.tolist(), zy, qmin, 127)
    assert got.dtype == torch.int8 and torch.equal(got, torch.tensor(want, dtype=torch.int8))
    assert int(got.min()) >= qmin


def test_runtime_functions_take_only_integers() -> None:
    x = torch.zeros(2, 3, dtype=torch.int8)
    w = torch.zeros(4, 3, dtype=torch.int8)
    b = torch.zeros(4, dtype=torch.int32)
    m, rs = torch.full((4,), 2**30, dtype=torch.int32), torch.zeros(4, dtype=torch.int32)
    assert integer.linear(x, 0, w, b, m, rs, 5).tolist() == [[5] * 4] * 2
    with pytest.raises(TypeError, match="x_q"):
        integer.linear(x.float(), 0, w, b, m, rs, 5)
    with pytest.raises(TypeError, match="x_zero_point"):
        integer.linear(x, 0.0, w, b, m, rs, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="y_zero_point"):
        integer.linear(x, 0, w, b, m, rs, True)
    with pytest.raises(TypeError, match="multiplier"):
        integer.linear(x, 0, w, b, m.float(), rs, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="acc"):
        integer.requantize(torch.zeros(3), 2**30, 0, 0)
    with pytest.raises(ValueError, match="x_zero_point"):
        integer.linear(x, 128, w, b, m, rs, 5)
    with pytest.raises(ValueError, match="qmin"):
        integer.linear(x, 0, w, b, m, rs, 5, 10, 9)
    with pytest.raises(ValueError, match="right_shift"):
        integer.linear(x, 0, w, b, m, rs - 31, 5)


# ----------------------------------------------------------------------------- the float edges


def test_quantize_rounds_half_even_then_adds_the_zero_point() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0])
    assert integer.quantize(x, 1.0, 0).tolist() == [0, 2, 2, 0, -2, 127, -128]
    assert integer.quantize(x, 1.0, 1).tolist() == [1, 3, 3, 1, -1, 127, -128]  # rne(x) + 1, not rne(x + 1)
    y = integer.dequantize(torch.tensor([-128, 0, 127], dtype=torch.int8), 0.5, -128)
    assert y.dtype == torch.float32 and y.tolist() == [0.0, 64.0, 127.5]
    with pytest.raises(ValueError, match="NaN"):
        integer.quantize(torch.tensor([float("nan")]), 1.0, 0)
