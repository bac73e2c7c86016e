"""Hypothesis properties of the primitives: choose_qparams, quantize, dequantize on random schemes and data.

Float slack used below, with u = 2**-24 (float32 unit roundoff) and L = qmax - qmin < 2**16:
  - scale is f32(f32(hi - lo) / L): so L * scale = (hi - lo)(1 + 2u) at worst; the grid's ends
    drift from lo / hi by at most scale/2 (zero point rounding) + 3 L u scale.
  - quantize rounds x / scale once: |x / scale| <= L (1 + 3u), so an error of L u steps.
  - dequantize rounds (q - zp) * scale once: an error of (L + 1) u scale.
  Total beyond the ideal scale/2: about 4 (L + 1) u scale; we allow twice that, levels * scale * 2**-21.
Data magnitudes stay below 2**123 (about 1e37) so that hi - lo cannot overflow float32 (see test_qparams's xfail).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from glassquant.affine import dequantize, quantize
from glassquant.qparams import choose_qparams, observe_range
from glassquant.rounding import Rounding
from glassquant.scheme import QScheme

U = 2.0**-24
BIG = 2.0**123  # about 1.1e37

schemes = st.builds(QScheme, bits=st.integers(2, 16), signed=st.booleans(), symmetric=st.booleans(),
                    narrow_range=st.booleans())
roundings = st.sampled_from(list(Rounding))
nearest = st.sampled_from([Rounding.HALF_EVEN, Rounding.HALF_AWAY])
f32_in_range = st.floats(-BIG, BIG, width=32, allow_nan=False, allow_infinity=False)
f32_any = st.floats(width=32, allow_nan=False, allow_infinity=False)


def arrays(elements: st.SearchStrategy[float] = f32_in_range, min_dims: int = 1, max_dims: int = 2):
    return hnp.arrays(np.float32, hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=9),
                      elements=elements)


def per_tensor_qparams(x: torch.Tensor, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    return choose_qparams(*observe_range(x, scheme), scheme)


def slack(scale: float, scheme: QScheme) -> float:
    """Float32 rounding allowance on top of scale/2 (module docstring)."""
    return scheme.levels * scale * 2.0**-21


@given(schemes, arrays(f32_any), st.floats(2.0**-23, 2.0**100, width=32), st.data(), roundings)
def test_quantize_stays_in_grid(scheme: QScheme, arr: np.ndarray, scale: float, data: st.DataObject,
                                rule: Rounding) -> None:
    zp = data.draw(st.integers(scheme.qmin, scheme.qmax))
    x = torch.from_numpy(arr.copy())
    q = quantize(x, torch.tensor(scale), torch.tensor(zp), scheme, rule)
    assert q.dtype == scheme.dtype and q.shape == x.shape
    qi = q.to(torch.int64)
    assert bool((qi >= scheme.qmin).all()) and bool((qi <= scheme.qmax).all())
    # the saturated values sit on the side of their sign (no wraparound)
    big = (x.double() / scale).abs() > 2 * scheme.levels
    assert bool((qi[big & (x > 0)] == scheme.qmax).all()) and bool((qi[big & (x < 0)] == scheme.qmin).all())


@given(schemes, arrays(), roundings)
def test_quantize_with_own_qparams_stays_in_grid(scheme: QScheme, arr: np.ndarray, rule: Rounding) -> None:
    x = torch.from_numpy(arr.copy())
    scale, zp = per_tensor_qparams(x, scheme)
    assert float(scale) > 0 and np.isfinite(float(scale))
    assert scheme.qmin <= int(zp) <= scheme.qmax
    qi = quantize(x, scale, zp, scheme, rule).to(torch.int64)
    assert bool((qi >= scheme.qmin).all()) and bool((qi <= scheme.qmax).all())


@given(schemes, f32_in_range, f32_in_range, roundings)
def test_zero_is_exact(scheme: QScheme, a: float, b: float, rule: Rounding) -> None:
    scale, zp = choose_qparams(torch.tensor(min(a, b)), torch.tensor(max(a, b)), scheme)
    zero = torch.zeros(3)
    q = quantize(zero, scale, zp, scheme, rule)
    assert torch.equal(q.to(torch.int64), torch.full((3,), int(zp), dtype=torch.int64))
    back = dequantize(q, scale, zp, scheme)
    assert torch.equal(back, zero)


@given(schemes, arrays(), nearest)
def test_round_trip_error_at_most_half_a_step(scheme: QScheme, arr: np.ndarray, rule: Rounding) -> None:
    """Every observed value lies in [lo, hi], which the grid covers up to scale/2 (module docstring)."""
    x = torch.from_numpy(arr.copy())
    scale, zp = per_tensor_qparams(x, scheme)
    back = dequantize(quantize(x, scale, zp, scheme, rule), scale, zp, scheme)
    s = float(scale)
    err = (back.double() - x.double()).abs()
    bound = s / 2 + slack(s, scheme)
    assert float(err.max()) <= bound, (float(err.max()), s, int(zp))


@given(schemes, st.data(), nearest)
def test_quantize_dequantize_is_identity_on_integers(scheme: QScheme, data: st.DataObject, rule: Rounding) -> None:
    """f32(f32(n * s) / s) is within |n| * 2u * (1 + u) < 2**-7 of n (|n| < 2**16), so it rounds back to n."""
    use_range = data.draw(st.booleans())
    if use_range:
        a, b = data.draw(f32_in_range), data.draw(f32_in_range)
        scale, zp = choose_qparams(torch.tensor(min(a, b)), torch.tensor(max(a, b)), scheme)
    else:
        scale = torch.tensor(data.draw(st.floats(2.0**-23, 2.0**100, width=32)))
        zp = torch.tensor(data.draw(st.integers(scheme.qmin, scheme.qmax)))
    q = torch.tensor(data.draw(st.lists(st.integers(scheme.qmin, scheme.qmax), min_size=1, max_size=40)),
                     dtype=torch.int64).to(scheme.dtype)
    again = quantize(dequantize(q, scale, zp, scheme), scale, zp, scheme, rule)
    assert torch.equal(again, q)


@given(schemes, arrays(min_dims=2, max_dims=3), st.data(), roundings)
def test_per_channel_equals_per_tensor_on_each_channel(scheme: QScheme, arr: np.ndarray, data: st.DataObject,
                                                      rule: Rounding) -> None:
    x = torch.from_numpy(arr.copy())
    axis = data.draw(st.integers(-x.dim(), x.dim() - 1))
    pc = QScheme(scheme.bits, scheme.signed, scheme.symmetric, axis=axis, narrow_range=scheme.narrow_range)
    scale, zp = per_tensor_qparams(x, pc)
    assert scale.shape == zp.shape == (x.shape[axis],)
    q = quantize(x, scale, zp, pc, rule)
    back = dequantize(q, scale, zp, pc)
    for c in range(x.shape[axis]):
        xc = x.select(axis, c)
        qc = quantize(xc, scale[c], zp[c], scheme, rule)
        assert torch.equal(q.select(axis, c), qc)
        assert torch.equal(back.select(axis, c), dequantize(qc, scale[c], zp[c], scheme))
        # and the channel's qparams are the per-tensor qparams of that channel alone
        s1, z1 = per_tensor_qparams(xc, scheme)
        assert torch.equal(scale[c].view(torch.int32), s1.view(torch.int32)) and int(zp[c]) == int(z1)


@given(schemes, st.integers(1, 4), st.integers(1, 3), st.integers(1, 4), st.data(), roundings)
def test_per_group_equals_per_tensor_on_each_group(scheme: QScheme, g: int, rows: int, n_groups: int,
                                                    data: st.DataObject, rule: Rounding) -> None:
    arr = data.draw(hnp.arrays(np.float32, (rows, n_groups * g), elements=f32_in_range))
    x = torch.from_numpy(arr.copy())
    pg = QScheme(scheme.bits, scheme.signed, scheme.symmetric, group_size=g, narrow_range=scheme.narrow_range)
    scale, zp = per_tensor_qparams(x, pg)
    assert scale.shape == (rows, n_groups)
    q = quantize(x, scale, zp, pg, rule)
    for r in range(rows):
        for j in range(n_groups):
            xg = x[r, j * g:(j + 1) * g]
            assert torch.equal(q[r, j * g:(j + 1) * g], quantize(xg, scale[r, j], zp[r, j], scheme, rule))


@given(schemes, arrays(), st.data())
def test_floor_never_above_the_value(scheme: QScheme, arr: np.ndarray, data: st.DataObject) -> None:
    """Price-tag rule: with floor, dequantize(quantize(x)) <= x inside [(qmin - zp) s, (qmax - zp) s].

    Slack: f32(x / s) may round up onto the next integer (|x| u), and f32(n * s) may round up
    (|x| u + s u); we allow 2**-22 (|x| + s), twice that.
    """
    x = torch.from_numpy(arr.copy())
    if data.draw(st.booleans()):
        scale, zp = per_tensor_qparams(x, scheme)
    else:
        scale = torch.tensor(data.draw(st.floats(2.0**-23, 2.0**100, width=32)))
        zp = torch.tensor(data.draw(st.integers(scheme.qmin, scheme.qmax)))
    s = float(scale)
    back = dequantize(quantize(x, scale, zp, scheme, Rounding.FLOOR), scale, zp, scheme).double()
    xd = x.double()
    inside = (xd >= (scheme.qmin - int(zp)) * s) & (xd <= (scheme.qmax - int(zp)) * s)
    allowed = xd + 2.0**-22 * (xd.abs() + s)
    assert bool((back[inside] <= allowed[inside]).all())
    # and floor loses less than one step (plus the same slack)
    assert bool((back[inside] > xd[inside] - s - 2.0**-22 * (xd[inside].abs() + s)).all())
