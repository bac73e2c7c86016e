"""Tests for glassquant.qparams: observe_range and choose_qparams (eq. 2), and agreement with torch.ao."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from glassquant.affine import dequantize, quantize
from glassquant.qparams import SCALE_EPS, choose_qparams, observe_range
from glassquant.scheme import QScheme

from gq_testing import needs_torch_ao

UINT8 = QScheme(bits=8, signed=False)
INT8 = QScheme(bits=8, signed=True)
F32_EPS = np.float32(np.finfo(np.float32).eps)  # 2**-23


def np_qparams(x_min: float, x_max: float, s: QScheme) -> tuple[np.float32, int]:
    """Eq. 2 written again in numpy float32 (each operation one IEEE float32 rounding)."""
    lo = min(np.float32(x_min), np.float32(0))
    hi = max(np.float32(x_max), np.float32(0))
    if s.symmetric:
        scale = max(max(-lo, hi) / np.float32((s.qmax - s.qmin) / 2), F32_EPS)
        return np.float32(scale), (0 if s.signed else (s.qmin + s.qmax + 1) // 2)
    scale = max(np.float32(hi - lo) / np.float32(s.qmax - s.qmin), F32_EPS)
    zp = s.qmin - int(np.round(np.float32(lo / scale)))  # np.round: half to even
    return np.float32(scale), min(max(zp, s.qmin), s.qmax)


def f32_bits(t: torch.Tensor | float) -> int:
    return int(np.asarray(t, dtype=np.float32).view(np.int32))


def test_scale_eps_is_float32_eps() -> None:
    assert SCALE_EPS == torch.finfo(torch.float32).eps == 2**-23


def test_worked_example_uint8() -> None:
    """uint8, range (-1, 3): scale = 4/255, zero_point = 0 - round(-63.75) = 64."""
    scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), UINT8)
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert scale.shape == () and zp.shape == ()
    assert f32_bits(scale) == f32_bits(np.float32(4) / np.float32(255))
    assert abs(float(scale) - 4 / 255) <= 2**-24 * 4 / 255  # within half an ulp of the real 4/255
    assert int(zp) == 64


def test_worked_example_int8_affine() -> None:
    """int8, range (-1, 3): same scale, zero_point = -128 - round(-63.75) = -64."""
    scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), INT8)
    assert f32_bits(scale) == f32_bits(np.float32(4) / np.float32(255))
    assert int(zp) == -64


def test_python_floats_accepted() -> None:
    scale, zp = choose_qparams(-1.0, 3.0, UINT8)  # type: ignore[arg-type]
    assert int(zp) == 64 and f32_bits(scale) == f32_bits(np.float32(4) / np.float32(255))


@pytest.mark.parametrize("bits, narrow, want_zp", [(8, False, 0), (4, False, 0), (8, True, 0)])
def test_symmetric_signed_zero_point_is_zero(bits: int, narrow: bool, want_zp: int) -> None:
    s = QScheme(bits=bits, signed=True, symmetric=True, narrow_range=narrow)
    scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), s)
    assert int(zp) == want_zp
    assert f32_bits(scale) == f32_bits(np.float32(3) / np.float32((s.qmax - s.qmin) / 2))


def test_symmetric_int8_worked_example() -> None:
    """amax 3, int8: scale = 3 / 127.5; with narrow range 3 / 127."""
    scale, _ = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), QScheme(8, signed=True, symmetric=True))
    assert f32_bits(scale) == f32_bits(np.float32(3) / np.float32(127.5))
    scale, _ = choose_qparams(torch.tensor(-3.0), torch.tensor(1.0),
                              QScheme(8, signed=True, symmetric=True, narrow_range=True))
    assert f32_bits(scale) == f32_bits(np.float32(3) / np.float32(127))


def test_unsigned_symmetric_zero_point_is_midpoint() -> None:
    scale, zp = choose_qparams(torch.tensor(-2.0), torch.tensor(0.5), QScheme(8, signed=False, symmetric=True))
    assert int(zp) == 128
    assert f32_bits(scale) == f32_bits(np.float32(2) / np.float32(127.5))
    _, zp4 = choose_qparams(torch.tensor(-2.0), torch.tensor(0.5), QScheme(4, signed=False, symmetric=True))
    assert int(zp4) == 8


@pytest.mark.parametrize("scheme", [UINT8, INT8, QScheme(4, signed=True), QScheme(16, signed=False)])
def test_range_not_containing_zero_is_widened(scheme: QScheme) -> None:
    """(0.59, 12.3) is treated as (0, 12.3): zero is exactly the zero point, at qmin."""
    scale, zp = choose_qparams(torch.tensor(0.59), torch.tensor(12.3), scheme)
    assert f32_bits(scale) == f32_bits(np.float32(12.3) / np.float32(scheme.qmax - scheme.qmin))
    assert int(zp) == scheme.qmin
    q0 = quantize(torch.zeros(3), scale, zp, scheme)
    assert torch.equal(q0.to(torch.int64), torch.full((3,), scheme.qmin, dtype=torch.int64))
    assert torch.equal(dequantize(q0, scale, zp, scheme), torch.zeros(3))
    # both ends of the observed range stay on the grid's range
    q = quantize(torch.tensor([0.59, 12.3]), scale, zp, scheme).to(torch.int64)
    assert int(q[1]) == scheme.qmax and int(q[0]) > scheme.qmin


@pytest.mark.parametrize("scheme", [UINT8, INT8])
def test_negative_range_is_widened_to_zero(scheme: QScheme) -> None:
    scale, zp = choose_qparams(torch.tensor(-12.3), torch.tensor(-0.59), scheme)
    assert int(zp) == scheme.qmax
    assert float(dequantize(quantize(torch.tensor(0.0), scale, zp, scheme), scale, zp, scheme)) == 0.0


@pytest.mark.parametrize("scheme", [UINT8, INT8, QScheme(8, signed=True, symmetric=True),
                                    QScheme(8, signed=False, symmetric=True)])
def test_zero_range_gets_eps_scale(scheme: QScheme) -> None:
    scale, zp = choose_qparams(torch.tensor(0.0), torch.tensor(0.0), scheme)
    assert float(scale) == torch.finfo(torch.float32).eps
    want_zp = np_qparams(0.0, 0.0, scheme)[1]
    assert int(zp) == want_zp == (scheme.qmin if not scheme.symmetric else (0 if scheme.signed else 128))
    q = quantize(torch.zeros(5), scale, zp, scheme).to(torch.int64)
    assert torch.equal(q, torch.full((5,), want_zp, dtype=torch.int64))


def test_tiny_range_scale_clamped_to_eps() -> None:
    """(hi - lo) / 255 below 2**-23 is raised to 2**-23; zero point still represents 0."""
    scale, zp = choose_qparams(torch.tensor(-1e-6), torch.tensor(1e-6), UINT8)
    assert float(scale) == 2**-23
    assert int(zp) == -round(-1e-6 / 2**-23)  # = 8, zero point of the eps grid
    assert float(dequantize(quantize(torch.tensor(0.0), scale, zp, UINT8), scale, zp, UINT8)) == 0.0


def test_per_channel_shape_and_values() -> None:
    x_min = torch.tensor([-1.0, 0.5, -3.0, 0.0])
    x_max = torch.tensor([3.0, 2.0, -1.0, 0.0])
    s = QScheme(8, signed=False, axis=0)
    scale, zp = choose_qparams(x_min, x_max, s)
    assert scale.shape == (4,) and zp.shape == (4,)
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    for c in range(4):
        ws, wz = np_qparams(float(x_min[c]), float(x_max[c]), s)
        assert f32_bits(scale[c]) == f32_bits(ws) and int(zp[c]) == wz


def test_per_group_shape() -> None:
    x_min = -torch.rand(3, 5)
    x_max = torch.rand(3, 5)
    scale, zp = choose_qparams(x_min, x_max, QScheme(4, signed=True, group_size=8))
    assert scale.shape == zp.shape == (3, 5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_x_min_raises_naming_it(bad: float) -> None:
    with pytest.raises(ValueError, match="x_min"):
        choose_qparams(torch.tensor(bad), torch.tensor(1.0), UINT8)
    with pytest.raises(ValueError, match="x_max"):
        choose_qparams(torch.tensor(-1.0), torch.tensor(bad), UINT8)
    with pytest.raises(ValueError, match="x_min"):
        choose_qparams(torch.tensor([0.0, bad]), torch.tensor([1.0, 1.0]), QScheme(8, axis=0))


def test_x_min_above_x_max_raises() -> None:
    with pytest.raises(ValueError, match="x_min > x_max"):
        choose_qparams(torch.tensor(2.0), torch.tensor(1.0), UINT8)
    with pytest.raises(ValueError):
        choose_qparams(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]), QScheme(8, axis=0))


def test_range_wider_than_float32_max_raises() -> None:
    """float32 ``hi - lo`` overflows for a finite range wider than FLT_MAX: a clear error, never scale=inf."""
    with pytest.raises(ValueError, match="wider than float32"):
        choose_qparams(torch.tensor(-3e38), torch.tensor(3e38), UINT8)


def test_random_ranges_match_numpy_float32_formula() -> None:
    g = torch.Generator().manual_seed(1)
    schemes = [QScheme(b, signed=sg, symmetric=sy, narrow_range=n)
               for b in (2, 4, 7, 8, 12, 16) for sg in (True, False) for sy in (True, False) for n in (False, True)]
    for s in schemes:
        mags = 10.0 ** torch.randint(-9, 9, (40, 2), generator=g).float()
        pairs = torch.randn(40, 2, generator=g) * mags
        x_min, x_max = pairs.min(dim=1).values, pairs.max(dim=1).values
        scale, zp = choose_qparams(x_min, x_max, QScheme(s.bits, s.signed, s.symmetric, axis=0,
                                                         narrow_range=s.narrow_range))
        for i in range(40):
            ws, wz = np_qparams(float(x_min[i]), float(x_max[i]), s)
            assert f32_bits(scale[i]) == f32_bits(ws), (s, float(x_min[i]), float(x_max[i]))
            assert int(zp[i]) == wz, (s, float(x_min[i]), float(x_max[i]))


# ---- observe_range ---------------------------------------------------------------------------------

def test_observe_per_tensor() -> None:
    x = torch.tensor([[0.5, -2.0, 3.0], [7.25, -0.125, 1.0]])
    lo, hi = observe_range(x, UINT8)
    assert lo.shape == hi.shape == ()
    assert (float(lo), float(hi)) == (-2.0, 7.25)


def test_observe_converts_to_float32() -> None:
    x = torch.tensor([0.1, 0.2], dtype=torch.float64)
    lo, hi = observe_range(x, UINT8)
    assert lo.dtype == hi.dtype == torch.float32
    assert float(lo) == float(np.float32(0.1)) and float(hi) == float(np.float32(0.2))


def loops_min_max(values: list, index) -> tuple[list[float], list[float]]:
    """Min and max of nested-list ``values`` grouped by ``index(position) -> group id``, with plain loops."""
    groups: dict = {}

    def walk(v, pos):
        if isinstance(v, list):
            for i, w in enumerate(v):
                walk(w, (*pos, i))
        else:
            groups.setdefault(index(pos), []).append(v)
    walk(values, ())
    keys = sorted(groups)
    return [min(groups[k]) for k in keys], [max(groups[k]) for k in keys]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_observe_per_channel(axis: int) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, generator=g)
    lo, hi = observe_range(x, QScheme(8, axis=axis))
    ax = axis % 3
    want_lo, want_hi = loops_min_max(x.tolist(), lambda pos: pos[ax])
    assert lo.shape == hi.shape == (x.shape[ax],)
    assert lo.tolist() == want_lo and hi.tolist() == want_hi


def test_observe_per_group() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 12, generator=g)
    lo, hi = observe_range(x, QScheme(4, group_size=4))
    assert lo.shape == hi.shape == (2, 3, 3)
    want_lo, want_hi = loops_min_max(x.tolist(), lambda pos: (pos[0], pos[1], pos[2] // 4))
    assert lo.flatten().tolist() == want_lo and hi.flatten().tolist() == want_hi


def test_observe_empty_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        observe_range(torch.zeros(0, 4), UINT8)


def test_observe_non_multiple_group_raises() -> None:
    with pytest.raises(ValueError, match="group_size"):
        observe_range(torch.zeros(2, 10), QScheme(4, group_size=4))


def test_observe_non_finite_raises_with_name() -> None:
    x = torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"layer3\.weight"):
        observe_range(x, UINT8, name="layer3.weight")


# ---- agreement with torch.ao's observers -------------------------------------------------------------

def ao_data(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(16, 33, generator=g) * 3 + 1,
        torch.rand(8, 20, generator=g) * 12.3 + 0.59,  # no zero inside
        -torch.rand(5, 7, generator=g) * 40,  # all negative
        torch.randn(4, 9, generator=g) * 1e-7,  # scale clamped to eps
        torch.randn(6, 50, generator=g) * 1e4,
        torch.zeros(3, 4),
        torch.tensor([[-1.0, 3.0]]),
        torch.randn(32, 64, generator=g) * 10.0 ** torch.randint(-3, 4, (32, 1), generator=g).float(),
    ]


def ao_qparams(obs, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs(x)
        s, z = obs.calculate_qparams()
    return s.reshape(-1).to(torch.float32), z.reshape(-1).to(torch.int64)


def assert_same_qparams(ours: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    s, z = ours
    rs, rz = ref
    assert torch.equal(s.reshape(-1).view(torch.int32), rs.view(torch.int32)), (s, rs)
    assert torch.equal(z.reshape(-1).to(torch.int64), rz), (z, rz)


@needs_torch_ao
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_matches_torch_ao_quint8_affine(seed: int, reduce_range: bool) -> None:
    from torch.ao.quantization import MinMaxObserver

    scheme = QScheme(bits=7 if reduce_range else 8, signed=False)
    for x in ao_data(seed):
        obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=reduce_range)
        assert_same_qparams(choose_qparams(*observe_range(x, scheme), scheme), ao_qparams(obs, x))


@needs_torch_ao
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torch_ao_qint8_symmetric(seed: int) -> None:
    from torch.ao.quantization import MinMaxObserver

    scheme = QScheme(8, signed=True, symmetric=True)
    for x in ao_data(seed):
        obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        assert_same_qparams(choose_qparams(*observe_range(x, scheme), scheme), ao_qparams(obs, x))


@needs_torch_ao
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torch_ao_qint8_per_channel_symmetric(seed: int) -> None:
    from torch.ao.quantization import PerChannelMinMaxObserver

    scheme = QScheme(8, signed=True, symmetric=True, axis=0)
    for x in ao_data(seed):
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        assert_same_qparams(choose_qparams(*observe_range(x, scheme), scheme), ao_qparams(obs, x))


@needs_torch_ao
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torch_ao_quint8_per_channel_affine(seed: int) -> None:
    from torch.ao.quantization import PerChannelMinMaxObserver

    scheme = QScheme(8, signed=False, axis=0)
    for x in ao_data(seed):
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine)
        assert_same_qparams(choose_qparams(*observe_range(x, scheme), scheme), ao_qparams(obs, x))
