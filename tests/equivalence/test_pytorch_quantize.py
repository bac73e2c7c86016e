"""``dialects.pytorch.quantize`` and ``choose_qparams`` against PyTorch's own ATen kernels, bit for bit.

Reference: ``torch.quantize_per_tensor`` / ``torch.quantize_per_channel`` (``.int_repr()``) and
``torch._choose_qparams_per_tensor`` (the qparams fbgemm's dynamic Linear picks). Inputs are
random values plus adversarial ones: exact ``.5`` ties (scales 1, 0.5, 0.25, odd and even zero
points, where "add the zero point before or after rounding" decides the result) and values a
few float32 ulps either side of a tie. Every length 1..70 is run so that the scalar tail after
the vector loop sees the adversarial values too. >= 100,000 values per dtype and scheme.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from glassquant.dialects import pytorch

from gq_testing import needs_torch_ao

pytestmark = needs_torch_ao

#: torch quantized dtype -> (storage dtype, qmin, qmax)
QDTYPES = {
    torch.quint8: (torch.uint8, 0, 255),
    torch.qint8: (torch.int8, -128, 127),
    torch.qint32: (torch.int32, -(2**31), 2**31 - 1),
}
LENGTHS = range(1, 71)
#: relative perturbations of a tie, in units of 2**-24 (about one float32 ulp)
NUDGES = (-8, -3, -2, -1, 1, 2, 3, 8)


def _ids(qdtype: torch.dtype) -> str:
    return str(qdtype).removeprefix("torch.")


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float64).to(torch.float32))


def _zero_point(g: torch.Generator, qdtype: torch.dtype, parity: int | None = None) -> int:
    """A zero point valid for ``qdtype`` (int32: a moderate one), optionally of given parity."""
    lo, hi = (-1000, 1000) if qdtype == torch.qint32 else QDTYPES[qdtype][1:]
    zp = int(torch.randint(lo, hi + 1, (1,), generator=g))
    if parity is not None and zp % 2 != parity:
        zp = zp + 1 if zp < hi else zp - 1
    return zp


def _grid_j(g: torch.Generator, qdtype: torch.dtype, n: int, zp: int) -> Tensor:
    """Integers ``j`` whose ties ``j + 0.5`` lie inside the grid (int32: within 2**20 of zp)."""
    if qdtype == torch.qint32:
        return torch.randint(zp - 2**20, zp + 2**20, (n,), generator=g, dtype=torch.int64)
    _, qmin, qmax = QDTYPES[qdtype]
    return torch.randint(qmin - 1, qmax + 1, (n,), generator=g, dtype=torch.int64)  # ties at the clamp edges too


def _random_scale(g: torch.Generator) -> float:
    """Log-uniform in [1e-4, 10]; a float64 that is usually not a float32 (torch rounds it)."""
    return 10.0 ** float(torch.empty(1, dtype=torch.float64).uniform_(-4, 1, generator=g))


def per_tensor_cases(qdtype: torch.dtype, seed: int):
    """Yield ``(kind, x float32, scale, zero_point)``; every kind at every length 1..70, plus bulk."""
    g = torch.Generator().manual_seed(seed)
    _, qmin, qmax = QDTYPES[qdtype]
    for length in (*LENGTHS, 4099, 40_000):
        # random values over (and a little beyond) the grid, so clamping is exercised
        scale, zp = _random_scale(g), _zero_point(g, qdtype)
        span = 2**12 if qdtype == torch.qint32 else qmax - qmin
        x = (torch.randn(length, generator=g, dtype=torch.float64) * span * 0.4 + (qmin + qmax) / 2 - zp) * scale
        yield "random", x.to(torch.float32), scale, zp
        # exact ties: j + 0.5 - zp is exact, scale a power of two, so x/scale + zp == j + 0.5
        for scale in (1.0, 0.5, 0.25):
            for parity in (0, 1):
                zp = _zero_point(g, qdtype, parity)
                j = _grid_j(g, qdtype, length, zp)
                x = ((j.to(torch.float64) + 0.5 - zp) * scale).to(torch.float32)
                yield f"tie s={scale} zp%2={parity}", x, scale, zp
        # near ties: a few ulps either side of a tie, with a float32 scale that is not a power of two
        scale, zp = _f32(_random_scale(g)), _zero_point(g, qdtype)
        j = _grid_j(g, qdtype, length, zp).to(torch.float64)
        nudge = torch.tensor(NUDGES, dtype=torch.float64)[torch.randint(0, len(NUDGES), (length,), generator=g)]
        x = ((j + 0.5 - zp) * scale * (1 + nudge * 2.0**-24)).to(torch.float32)
        yield "near tie", x, scale, zp


def _first_mismatch(got: Tensor, ref: Tensor, x: Tensor) -> str:
    i = tuple((got != ref).nonzero()[0].tolist())
    return f"first at {i}: x={float(x[i])!r} got {int(got[i])} torch {int(ref[i])}; {int((got != ref).sum())} in all"


@pytest.mark.parametrize("qdtype", list(QDTYPES), ids=_ids)
def test_quantize_per_tensor_matches_torch(qdtype: torch.dtype) -> None:
    dtype = QDTYPES[qdtype][0]
    values = ties = 0
    for kind, x, scale, zp in per_tensor_cases(qdtype, seed=11):
        ref = torch.quantize_per_tensor(x, scale, zp, qdtype).int_repr()
        got = pytorch.quantize(x, scale, zp, dtype)
        assert got.dtype == ref.dtype == dtype
        assert torch.equal(got, ref), f"{kind}, len {x.numel()}, scale {scale!r}, zp {zp}: " + _first_mismatch(
            got, ref, x)
        values += x.numel()
        ties += x.numel() if kind.startswith("tie") else 0
    assert values >= 100_000
    assert ties >= 30_000


def per_channel_cases(qdtype: torch.dtype, axis: int, seed: int):
    """Yield ``(kind, w float32 (N, K), scales (C,), zero_points (C,))`` with C along ``axis``."""
    g = torch.Generator().manual_seed(seed)
    _, qmin, qmax = QDTYPES[qdtype]
    shapes = [(n, k) for k in LENGTHS for n in (1, 3)] + [(64, 300), (257, 129)]
    for n, k in shapes:
        c = (n, k)[axis]
        bshape = (c, 1) if axis == 0 else (1, c)
        zps = torch.randint(qmin, qmax + 1, (c,), generator=g, dtype=torch.int64)
        # random
        scales = torch.tensor([_random_scale(g) for _ in range(c)], dtype=torch.float64)
        w = torch.randn(n, k, generator=g, dtype=torch.float64) * (qmax - qmin) * 0.4
        w = (w + (qmin + qmax) / 2 - zps.reshape(bshape)) * scales.reshape(bshape)
        yield "random", w.to(torch.float32), scales, zps
        # exact ties, one power-of-two scale per channel, zero points of both parities
        scales = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)[torch.randint(0, 3, (c,), generator=g)]
        j = torch.randint(qmin - 1, qmax + 1, (n, k), generator=g).to(torch.float64)
        w = (j + 0.5 - zps.reshape(bshape)) * scales.reshape(bshape)
        yield "tie", w.to(torch.float32), scales, zps
        # near ties around float32 scales
        scales = torch.tensor([_random_scale(g) for _ in range(c)], dtype=torch.float32).to(torch.float64)
        nudge = torch.tensor(NUDGES, dtype=torch.float64)[torch.randint(0, len(NUDGES), (n, k), generator=g)]
        w = (j + 0.5 - zps.reshape(bshape)) * scales.reshape(bshape) * (1 + nudge * 2.0**-24)
        yield "near tie", w.to(torch.float32), scales, zps


@pytest.mark.parametrize("qdtype", [torch.qint8, torch.quint8], ids=_ids)
@pytest.mark.parametrize("axis", [0, 1])
def test_quantize_per_channel_matches_torch(qdtype: torch.dtype, axis: int) -> None:
    dtype = QDTYPES[qdtype][0]
    values = 0
    for kind, w, scales, zps in per_channel_cases(qdtype, axis, seed=20 + axis):
        ref = torch.quantize_per_channel(w, scales, zps, axis, qdtype).int_repr()
        got = pytorch.quantize(w, scales, zps, dtype, axis=axis)
        assert got.dtype == ref.dtype == dtype
        assert torch.equal(got, ref), f"{kind}, shape {tuple(w.shape)}: " + _first_mismatch(got, ref, w)
        values += w.numel()
    assert values >= 100_000


@pytest.mark.parametrize("qdtype", [torch.quint8, torch.qint8], ids=_ids)
def test_round_then_add_zero_point_is_caught(qdtype: torch.dtype) -> None:
    """The plausible wrong rule ``rne(x / scale) + zp`` differs from torch on ties with an odd zp;
    the per-tensor suite's tie cases are what would expose it."""
    dtype, qmin, qmax = QDTYPES[qdtype]
    wrong = mismatches = ties = 0
    for kind, x, scale, zp in per_tensor_cases(qdtype, seed=11):
        if not kind.startswith("tie"):
            continue
        ref = torch.quantize_per_tensor(x, scale, zp, qdtype).int_repr()
        inv_scale = torch.tensor(1.0 / scale, dtype=torch.float32)
        alt = (torch.round(x * inv_scale).to(torch.int64) + zp).clamp(qmin, qmax).to(dtype)
        ties += x.numel()
        mismatches += int((alt != ref).sum())
        wrong += int(kind.endswith("zp%2=1") and not torch.equal(alt, ref))
    assert ties >= 30_000
    assert mismatches > ties // 10, (mismatches, ties)
    assert wrong > 100


def test_zero_point_added_before_rounding_worked_example() -> None:
    """The docstring's example, scale 1 and zp 10: 0.5 -> 10, 1.5 -> 12, 2.5 -> 12 (torch agrees)."""
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5])
    ref = torch.quantize_per_tensor(x, 1.0, 10, torch.quint8).int_repr()
    assert torch.equal(ref, torch.tensor([10, 12, 12, 10, 8], dtype=torch.uint8))
    assert torch.equal(pytorch.quantize(x, 1.0, 10, torch.uint8), ref)


# ----- choose_qparams ---------------------------------------------------------------------------


def qparams_inputs(seed: int) -> list[Tensor]:
    """Float32 tensors whose ranges hit every branch of ChooseQuantizationParams."""
    g = torch.Generator().manual_seed(seed)
    threshold_range = 6.1e-5 * 255
    xs = [
        torch.zeros(7),  # all zero: scale 0.1, zp 0
        torch.zeros(1),
        torch.tensor([0.0, 1e-45]),  # scale underflows to 0 in float32: the 0.1 rule
        torch.tensor([-1e-40, 0.0]),
        torch.tensor([-1e-38, 3e-39]),  # 1/scale is inf in float32: the 0.1 rule
        torch.full((5,), 3.25),  # constant positive: range widened to include 0
        torch.full((5,), -7.0),
        torch.tensor([3e38, -3e38]),  # huge
        torch.tensor([3.4e38]),
        torch.tensor([-3.4e38, 1.0]),
        torch.randn(100, generator=g) * 1e30,
        torch.randn(100, generator=g) * 1e-30,  # tiny: SMALL_SCALE_THRESHOLD, amplified both ends
        torch.rand(100, generator=g) * 1e-6,  # tiny all positive: x_min == 0 branch
        -torch.rand(100, generator=g) * 1e-6,  # tiny all negative: x_max == 0 branch
        torch.tensor([threshold_range * 0.999, 0.0]),
        torch.tensor([threshold_range * 1.001, 0.0]),
        torch.tensor([-threshold_range * 0.5, threshold_range * 0.4999]),
        torch.tensor([-threshold_range * 0.5, threshold_range * 0.5001]),
        torch.tensor([-1.0, 1.0]),
        torch.tensor([-127.0, 128.0]),
        torch.tensor([-255.0, 0.0]),
    ]
    # random ranges over 40 decades: mixed sign, all positive, all negative
    for i in range(3000):
        mag = 10.0 ** torch.empty(2, dtype=torch.float64).uniform_(-20, 20, generator=g)
        if i % 3 == 0:
            lo, hi = -float(mag[0]), float(mag[1])
        elif i % 3 == 1:
            lo, hi = sorted(mag.tolist())
        else:
            lo, hi = sorted((-mag).tolist())
        xs.append(torch.tensor([lo, hi], dtype=torch.float32))
    # ordinary activations, and ranges on exact grids where the zero point lands on .5
    for _ in range(200):
        xs.append(torch.randn(64, generator=g) * float(torch.rand(1, generator=g)) * 10 + float(torch.randn(1)))
    for j in range(1, 255):
        xs.append(torch.tensor([-(j + 0.5), 255 - (j + 0.5)]))  # scale 1, zp from min = j + 0.5
        xs.append(torch.tensor([-(j + 0.5) / 2, (127 - (j + 0.5)) / 2]))  # with reduce_range: scale 1/2
    return xs


@pytest.mark.parametrize("reduce_range", [False, True])
def test_choose_qparams_matches_torch(reduce_range: bool) -> None:
    checked = small = zero = 0
    for x in qparams_inputs(seed=5):
        ref_scale, ref_zp = torch._choose_qparams_per_tensor(x, reduce_range)
        scale, zp = pytorch.choose_qparams(float(x.min()), float(x.max()), 0, 255, reduce_range)
        # torch returns its float64 scale; fbgemm then uses it as float32
        ref_scale32 = _f32(ref_scale)
        assert (scale, zp) == (ref_scale32, ref_zp), (x.min().item(), x.max().item(), scale, zp, ref_scale, ref_zp)
        assert 0 <= zp <= (127 if reduce_range else 255)
        checked += 1
        small += ref_scale32 == _f32(6.1e-5)
        zero += ref_scale == 0.1
    assert checked > 3000
    assert small >= 5 and zero >= 4  # the special branches were really reached


def test_choose_qparams_special_values() -> None:
    """Independent of the code under test: the 0.1 rule and the 6.1e-5 floor, by hand."""
    assert pytorch.choose_qparams(0.0, 0.0) == (_f32(0.1), 0)
    scale, zp = pytorch.choose_qparams(0.0, 1e-6)
    assert scale == _f32(6.1e-5) and zp == 0
    scale, zp = pytorch.choose_qparams(-1e-6, 0.0)
    assert scale == _f32(6.1e-5) and zp == 255
    # scale 1/16 exactly; zero point 127.5 -> 128 and 126.5 -> 126 (nearbyint: half to even)
    assert pytorch.choose_qparams(-127.5 / 16, 127.5 / 16) == (1 / 16, 128)
    assert pytorch.choose_qparams(-126.5 / 16, 128.5 / 16) == (1 / 16, 126)
    scale, zp = pytorch.choose_qparams(-1.0, 1.0)
    assert math.isclose(scale, 2 / 255, rel_tol=2**-23) and zp in (127, 128)
