"""Tests for glassquant.affine: quantize / dequantize (eqs. 1, 3) and fake_quantize's gradient."""

from __future__ import annotations

from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal

import numpy as np
import pytest
import torch

from glassquant.affine import dequantize, fake_quantize, quantize
from glassquant.rounding import Rounding
from glassquant.scheme import QScheme

UINT8 = QScheme(bits=8, signed=False)
INT8 = QScheme(bits=8, signed=True)
DECIMAL_RULE = {Rounding.HALF_EVEN: ROUND_HALF_EVEN, Rounding.HALF_AWAY: ROUND_HALF_UP, Rounding.FLOOR: ROUND_FLOOR}


def ref_quantize_one(x: float, scale: float, zp: int, s: QScheme, rule: Rounding) -> int:
    """Eq. 3 for one value: one IEEE float32 division (numpy), exact decimal rounding, add, clamp."""
    with np.errstate(over="ignore"):
        r = np.float32(x) / np.float32(scale)
    if not np.isfinite(r):
        return s.qmax if r > 0 else s.qmin
    n = int(Decimal(float(r)).quantize(Decimal(1), context=Context(prec=60, rounding=DECIMAL_RULE[rule])))
    return min(max(n + zp, s.qmin), s.qmax)


def ref_dequantize_one(q: int, scale: float, zp: int) -> float:
    """Eq. 1: (q - zp) has <= 18 bits and scale 24, so the float64 product is exact; one rounding to float32."""
    return float(np.float32(np.float64(q - zp) * np.float64(np.float32(scale))))


def as_ints(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64)


# ---- worked examples -----------------------------------------------------------------------------

@pytest.mark.parametrize("x, rule, want", [
    (1.25, "half_even", 12), (1.25, "half_away", 13), (1.4, "floor", 12), (1.75, "half_even", 14),
    (-1.25, "half_even", 8), (-1.25, "half_away", 7), (-1.4, "floor", 7), (0.0, "floor", 10),
])
def test_worked_examples(x: float, rule: str, want: int) -> None:
    """scale 0.5, zp 10: 1.25 -> 2.5 -> 2 (even) -> 12; floor 1.4 -> 2.8 -> 2 -> 12."""
    q = quantize(torch.tensor([x]), torch.tensor(0.5), torch.tensor(10), UINT8, rounding=rule)
    assert q.dtype == torch.uint8
    assert torch.equal(as_ints(q), torch.tensor([want]))
    assert ref_quantize_one(x, 0.5, 10, UINT8, Rounding(rule)) == want


def test_default_rounding_is_half_even() -> None:
    q = quantize(torch.tensor([1.25, 1.75, -0.25]), 0.5, 10, UINT8)  # type: ignore[arg-type]
    assert torch.equal(as_ints(q), torch.tensor([12, 14, 10]))


def test_dequantize_worked_example() -> None:
    x = dequantize(torch.tensor([12, 10, 0, 255], dtype=torch.uint8), torch.tensor(0.5), torch.tensor(10), UINT8)
    assert x.dtype == torch.float32
    assert x.tolist() == [1.0, 0.0, -5.0, 122.5]


@pytest.mark.parametrize("scheme", [UINT8, INT8, QScheme(4, signed=True), QScheme(16, signed=True),
                                    QScheme(16, signed=False), QScheme(8, signed=True, narrow_range=True)])
@pytest.mark.parametrize("rule", list(Rounding))
def test_random_matches_reference(scheme: QScheme, rule: Rounding) -> None:
    g = torch.Generator().manual_seed(scheme.bits * 7 + len(rule.value))
    x = torch.randn(200, generator=g) * 10.0 ** torch.randint(-3, 4, (200,), generator=g).float()
    for scale, zp in [(0.0371, scheme.qmin + 3), (2.0**-5, (scheme.qmin + scheme.qmax) // 2), (13.7, scheme.qmax)]:
        q = quantize(x, torch.tensor(scale), torch.tensor(zp), scheme, rounding=rule)
        assert q.dtype == scheme.dtype
        want = torch.tensor([ref_quantize_one(v, scale, zp, scheme, rule) for v in x.tolist()])
        assert torch.equal(as_ints(q), want)
        xd = dequantize(q, torch.tensor(scale), torch.tensor(zp), scheme)
        want_d = torch.tensor([ref_dequantize_one(v, scale, zp) for v in as_ints(q).tolist()], dtype=torch.float32)
        assert torch.equal(xd, want_d)


def test_exact_ties_at_power_of_two_scale() -> None:
    """With scale 2**-3 the division is exact, so (k + 0.5)/8 is exactly a tie."""
    k = torch.arange(-20, 20)
    x = (k.float() + 0.5) / 8
    even = quantize(x, 0.125, 0, INT8, "half_even")  # type: ignore[arg-type]
    away = quantize(x, 0.125, 0, INT8, "half_away")  # type: ignore[arg-type]
    flo = quantize(x, 0.125, 0, INT8, "floor")  # type: ignore[arg-type]
    assert torch.equal(as_ints(flo), k)
    assert torch.equal(as_ints(away), torch.where(k >= 0, k + 1, k))
    assert torch.equal(as_ints(even), torch.where(k % 2 == 0, k, k + 1))


def test_ties_are_rounded_before_the_zero_point_is_added() -> None:
    """glassquant's order: round(x / s) + zp. With an odd zp, round(x / s + zp) would break ties differently."""
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5])
    q = quantize(x, 1.0, 7, INT8, "half_even")  # type: ignore[arg-type]
    assert torch.equal(as_ints(q), torch.tensor([0, 2, 2, 0, -2]) + 7)


# ---- saturation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", [UINT8, INT8, QScheme(2, signed=True), QScheme(7, signed=False),
                                    QScheme(16, signed=True), QScheme(16, signed=False)])
@pytest.mark.parametrize("rule", list(Rounding))
def test_saturation_without_wraparound(scheme: QScheme, rule: Rounding) -> None:
    x = torch.tensor([1e30, -1e30, 3.4e38, -3.4e38, 2.0**31, -(2.0**31), 2.0**32 + 2**9, 2.0**63, -(2.0**64)])
    want = torch.tensor([scheme.qmax if v > 0 else scheme.qmin for v in x.tolist()])
    for scale, zp in [(1.0, scheme.qmin), (1.0, scheme.qmax), (1e-30, 0), (2.0**-23, scheme.qmax)]:
        q = quantize(x, torch.tensor(scale), torch.tensor(zp), scheme, rounding=rule)
        assert torch.equal(as_ints(q), want), (scale, zp, q)


def test_clamp_happens_after_zero_point() -> None:
    """x / scale = -3 is inside int8 by itself, but -3 + zp(127) = 124; +3 + 127 saturates at 127."""
    q = quantize(torch.tensor([-3.0, 3.0]), 1.0, 127, INT8)  # type: ignore[arg-type]
    assert torch.equal(as_ints(q), torch.tensor([124, 127]))


# ---- broadcasting and shape errors ----------------------------------------------------------------

def test_per_channel_broadcasting() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, generator=g) * 4
    sc0, zp0 = [0.25, 0.5, 0.125], [0, 5, -7]
    sc1, zp1 = [0.25, 0.5, 0.125, 1.0], [1, -2, 3, -4]
    for axis, sc, zp, idx in [(0, sc0, zp0, 0), (1, sc1, zp1, 1), (-1, sc1, zp1, 1)]:
        s = QScheme(8, signed=True, axis=axis)
        q = quantize(x, torch.tensor(sc), torch.tensor(zp), s)
        want = torch.tensor([[ref_quantize_one(float(x[i, j]), sc[(i, j)[idx]], zp[(i, j)[idx]], s,
                                               Rounding.HALF_EVEN) for j in range(4)] for i in range(3)])
        assert torch.equal(as_ints(q), want)
        xd = dequantize(q, torch.tensor(sc), torch.tensor(zp), s)
        want_d = torch.tensor([[ref_dequantize_one(int(want[i, j]), sc[(i, j)[idx]], zp[(i, j)[idx]])
                                for j in range(4)] for i in range(3)])
        assert torch.equal(xd, want_d)


def test_per_group_broadcasting() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 8, generator=g) * 3
    sc = [[0.25, 0.0625], [0.5, 1.0]]
    zp = [[0, 1], [-1, 2]]
    s = QScheme(4, signed=True, group_size=4)
    q = quantize(x, torch.tensor(sc), torch.tensor(zp), s)
    want = torch.tensor([[ref_quantize_one(float(x[i, j]), sc[i][j // 4], zp[i][j // 4], s, Rounding.HALF_EVEN)
                          for j in range(8)] for i in range(2)])
    assert torch.equal(as_ints(q), want)


@pytest.mark.parametrize("scheme, scale, zp", [
    (QScheme(8, axis=0), torch.ones(4), torch.zeros(3)),  # scale has x.shape[1] entries, axis is 0
    (QScheme(8, axis=0), torch.ones(3), torch.zeros(4)),  # zero point wrong
    (QScheme(8, axis=0), torch.tensor(1.0), torch.tensor(0)),  # scalar where a vector is needed
    (QScheme(8, axis=1), torch.ones(3), torch.zeros(3)),
    (QScheme(8), torch.ones(2), torch.zeros(2)),  # per tensor with two scales
    (QScheme(8, group_size=2), torch.ones(3, 4), torch.zeros(3, 4)),  # needs (3, 2)
    (QScheme(8, group_size=2), torch.ones(6), torch.zeros(6)),
])
def test_shape_mismatch_raises(scheme: QScheme, scale: torch.Tensor, zp: torch.Tensor) -> None:
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"shape|element"):
        quantize(x, scale, zp, scheme)
    with pytest.raises(ValueError, match=r"shape|element"):
        dequantize(torch.zeros(3, 4, dtype=torch.int8), scale, zp, scheme)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_raises_naming_x(bad: float) -> None:
    x = torch.tensor([0.0, bad, 1.0])
    with pytest.raises(ValueError, match=r"\bx\b"):
        quantize(x, 0.1, 0, INT8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\bx\b"):
        fake_quantize(x, 0.1, 0, INT8)  # type: ignore[arg-type]


# ---- fake_quantize --------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", list(Rounding))
@pytest.mark.parametrize("scheme, scale, zp", [
    (UINT8, torch.tensor(0.0371), torch.tensor(17)),
    (QScheme(4, signed=True, symmetric=True), torch.tensor(0.3), torch.tensor(0)),
    (QScheme(8, signed=True, axis=1), torch.tensor([0.01, 0.1, 1.0, 0.05]), torch.tensor([-3, 0, 5, 127])),
])
def test_fake_quantize_forward_equals_dequantize_quantize(rule: Rounding, scheme: QScheme, scale: torch.Tensor,
                                                          zp: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(50, 4, generator=g) * 5
    fq = fake_quantize(x, scale, zp, scheme, rounding=rule)
    assert fq.dtype == torch.float32
    assert torch.equal(fq, dequantize(quantize(x, scale, zp, scheme, rule), scale, zp, scheme))


def test_fake_quantize_gradient_is_clipped_straight_through() -> None:
    """scale 1/4, zp 10, uint8: representable range [(0-10)/4, (255-10)/4] = [-2.5, 61.25] (exact)."""
    x = torch.tensor([-100.0, -2.75, -2.5, -2.25, 0.0, 30.1, 61.25, 61.5, 1e6], requires_grad=True)
    inside = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    upstream = torch.tensor([3.0, -1.0, 0.5, 2.0, -7.0, 1.5, 4.0, 9.0, -2.0])
    y = fake_quantize(x, torch.tensor(0.25), torch.tensor(10), UINT8)
    (grad,) = torch.autograd.grad(y, x, grad_outputs=upstream)
    assert torch.equal(grad, upstream * inside)


def test_fake_quantize_gradient_per_channel() -> None:
    """Row 0: scale 1, zp 0, int8 -> [-128, 127]; row 1: scale 0.5, zp 100 -> [-114, 13.5]."""
    s = QScheme(8, signed=True, axis=0)
    x = torch.tensor([[-129.0, -128.0, 0.0, 127.0, 128.0], [-114.5, -114.0, 0.0, 13.5, 14.0]], requires_grad=True)
    y = fake_quantize(x, torch.tensor([1.0, 0.5]), torch.tensor([0, 100]), s)
    y.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0]]))


def test_fake_quantize_gradient_random_inside_is_one() -> None:
    g = torch.Generator().manual_seed(8)
    scale, zp = 0.0371, 17
    lo, hi = (0 - zp) * scale, (255 - zp) * scale  # float64 bounds, about [-0.63, 8.83]
    x = (torch.rand(500, generator=g) * 20 - 5).requires_grad_()
    y = fake_quantize(x, torch.tensor(scale), torch.tensor(zp), UINT8)
    y.backward(torch.ones_like(y))
    xv = x.detach().double()
    clear = ((xv - lo).abs() > 1e-5) & ((xv - hi).abs() > 1e-5)  # away from float32 rounding of the bounds
    assert x.grad is not None
    want = ((xv >= lo) & (xv <= hi)).float()
    assert torch.equal(x.grad[clear], want[clear])
    assert 0 < int(want.sum()) < 500
