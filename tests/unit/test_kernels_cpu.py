"""``kernels.cpu``: the ``torch._int_mm`` fast path equals the exact reference accumulator.

Reference: :func:`glassquant.dialects._base.accumulate` (eq. 4 summed directly, in float64 or
int64), itself checked here against a plain int64 matmul written out in the test. Integers
compare with ``torch.equal``; shapes cover M in {1, 7, 300}, K in {1, 5, 4096},
N in {1, 3, 512}, uint8 and int8 activations, zero and nonzero zero points, extreme values.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from glassquant.dialects._base import accumulate
from glassquant.errors import AccumulatorOverflowError
from glassquant.kernels.cpu import PackedWeight, accumulate_int_mm
from glassquant.nn.linear import DynamicQuantLinear, QuantLinear

SHAPES = list(itertools.product((1, 7, 300), (1, 5, 4096), (1, 3, 512)))


def int64_reference(x_q: Tensor, x_zero_point: int, w_q: Tensor, w_zero_point: Tensor | int) -> Tensor:
    """``sum_k (x - zx)(w - zw)`` with an int64 matmul, written independently of glassquant."""
    zw = torch.as_tensor(w_zero_point, dtype=torch.int64).reshape(-1, 1)  # (N, 1) or (1, 1)
    return (x_q.to(torch.int64) - x_zero_point) @ (w_q.to(torch.int64) - zw).T  # (M, K) @ (K, N) -> (M, N)


def _x(g: torch.Generator, m: int, k: int, dtype: torch.dtype) -> Tensor:
    lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
    return torch.randint(lo, hi, (m, k), generator=g).to(dtype)


def _w_zero_point(g: torch.Generator, n: int, kind: str) -> Tensor | int:
    if kind == "zero":
        return 0
    if kind == "per_tensor":
        return int(torch.randint(-128, 128, (1,), generator=g))
    return torch.randint(-128, 128, (n,), generator=g, dtype=torch.int32)  # per channel, nonzero


def check_against_reference(shapes: list[tuple[int, int, int]], x_dtype: torch.dtype, zw_kind: str,
                            seed: int) -> None:
    """Fast path == reference (== an int64 matmul where cheap) on random operands of each shape."""
    g = torch.Generator().manual_seed(seed)
    for m, k, n in shapes:
        x_q = _x(g, m, k, x_dtype)
        w_q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
        lo, hi = (0, 255) if x_dtype == torch.uint8 else (-128, 127)
        x_zp = int(torch.randint(lo, hi + 1, (1,), generator=g))
        w_zp = _w_zero_point(g, n, zw_kind)
        ref = accumulate(x_q, x_zp, w_q, w_zp)
        if k < 4096 or m * n <= 512:  # the independent int64 check, where it is cheap
            assert torch.equal(ref, int64_reference(x_q, x_zp, w_q, w_zp))
        got = accumulate_int_mm(x_q, x_zp, PackedWeight.pack(w_q, w_zp))
        assert got.dtype == ref.dtype == torch.int64
        assert got.shape == (m, n)
        assert torch.equal(got, ref), (m, k, n, x_zp)


ZW_KINDS = ["zero", "per_tensor", "per_channel"]
#: K == 1 with N > 1 once hit a torch._int_mm stride bug (a (1, N) view with strides (1, 1)); kept apart
REGULAR_SHAPES = [s for s in SHAPES if not (s[1] == 1 and s[2] > 1)]
K1_SHAPES = [s for s in SHAPES if s[1] == 1 and s[2] > 1]


@pytest.mark.parametrize("x_dtype", [torch.uint8, torch.int8], ids=["uint8", "int8"])
@pytest.mark.parametrize("zw_kind", ZW_KINDS)
def test_int_mm_equals_reference(x_dtype: torch.dtype, zw_kind: str) -> None:
    check_against_reference(REGULAR_SHAPES, x_dtype, zw_kind, ZW_KINDS.index(zw_kind) + 10 * (x_dtype == torch.int8))


@pytest.mark.parametrize("x_dtype", [torch.uint8, torch.int8], ids=["uint8", "int8"])
def test_int_mm_equals_reference_k1(x_dtype: torch.dtype) -> None:
    check_against_reference(K1_SHAPES, x_dtype, "per_channel", 20)


EXTREMES = [
    # (x fill, x zero point, w fill, w zero point): the largest |(x - zx)(w - zw)| products
    (255, 0, 127, 0), (0, 255, -128, 0), (255, 0, -128, 0), (0, 0, -128, 0), (255, 255, 127, 0),
    (0, 128, -128, 127), (255, 0, -128, 127), (255, 128, 127, -128),
]


@pytest.mark.parametrize(("x_fill", "x_zp", "w_fill", "w_zp"), EXTREMES)
@pytest.mark.parametrize(("m", "k", "n"), [(1, 4096, 512), (7, 4096, 3), (300, 5, 1)])
def test_int_mm_extreme_values(x_fill: int, x_zp: int, w_fill: int, w_zp: int, m: int, k: int, n: int) -> None:
    x_q = torch.full((m, k), x_fill, dtype=torch.uint8)
    w_q = torch.full((n, k), w_fill, dtype=torch.int8)
    expected = torch.full((m, n), k * (x_fill - x_zp) * (w_fill - w_zp), dtype=torch.int64)
    assert torch.equal(accumulate(x_q, x_zp, w_q, w_zp), expected)
    assert torch.equal(accumulate_int_mm(x_q, x_zp, PackedWeight.pack(w_q, w_zp)), expected)


@pytest.mark.parametrize("x_dtype", [torch.uint8, torch.int8], ids=["uint8", "int8"])
def test_int_mm_random_extremes(x_dtype: torch.dtype) -> None:
    """Only the type's min and max in both operands, per-channel zero points at the ends too."""
    g = torch.Generator().manual_seed(7)
    lo, hi = (0, 255) if x_dtype == torch.uint8 else (-128, 127)
    for m, k, n in [(7, 4096, 512), (300, 4096, 3), (1, 5, 1)]:
        x_q = torch.where(torch.randint(0, 2, (m, k), generator=g) == 1, hi, lo).to(x_dtype)
        w_q = torch.where(torch.randint(0, 2, (n, k), generator=g) == 1, 127, -128).to(torch.int8)
        w_zp = torch.where(torch.arange(n) % 2 == 0, -128, 127).to(torch.int32)
        for x_zp in (lo, hi, (lo + hi) // 2):
            ref = int64_reference(x_q, x_zp, w_q, w_zp)
            assert torch.equal(accumulate(x_q, x_zp, w_q, w_zp), ref)
            assert torch.equal(accumulate_int_mm(x_q, x_zp, PackedWeight.pack(w_q, w_zp)), ref)


def test_int_mm_overflow_raises_like_reference() -> None:
    k = 70_000  # 70000 * 255 * 127 > 2**31 - 1
    x_q = torch.full((1, k), 255, dtype=torch.uint8)
    w_q = torch.full((1, k), 127, dtype=torch.int8)
    with pytest.raises(AccumulatorOverflowError, match="kernel_test"):
        accumulate(x_q, 0, w_q, 0, name="kernel_test")
    with pytest.raises(AccumulatorOverflowError, match="kernel_test"):
        accumulate_int_mm(x_q, 0, PackedWeight.pack(w_q, 0), name="kernel_test")


def test_pack_rejects_long_k() -> None:
    w_q = torch.zeros(1, 2**17 + 1, dtype=torch.int8)
    with pytest.raises(ValueError, match=str(2**17 + 1)):
        PackedWeight.pack(w_q, 0)
    with pytest.raises(ValueError, match=str(2**17)):
        PackedWeight.pack(w_q[:, : 2**17], 0)  # 2**17 * 128 * 128 = 2**31 would wrap
    PackedWeight.pack(w_q[:, : 2**17 - 1], 0)  # the limit itself is accepted


def test_int_mm_at_the_k_limit() -> None:
    """At the largest accepted K, x_s8 = w = -128 gives _int_mm = (2**17 - 1) * 2**14, no wrap."""
    k = 2**17 - 1
    x_q = torch.zeros(1, k, dtype=torch.uint8)  # x_s8 = -128, x - zx = 0
    w_q = torch.full((1, k), -128, dtype=torch.int8)
    expected = torch.zeros(1, 1, dtype=torch.int64)
    assert torch.equal(accumulate(x_q, 0, w_q, 0), expected)
    assert torch.equal(accumulate_int_mm(x_q, 0, PackedWeight.pack(w_q, 0)), expected)


def test_pack_rejects_uint8_weights() -> None:
    with pytest.raises(TypeError, match="w_q"):
        PackedWeight.pack(torch.zeros(2, 3, dtype=torch.uint8), 0)


def _static_layer(g: torch.Generator, k: int, n: int, per_channel: bool, engine: str) -> QuantLinear:
    w_q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    c = n if per_channel else 1
    w_scale = torch.rand(c, generator=g) * 0.02 + 1e-3
    return QuantLinear(w_q, w_scale, torch.zeros(c, dtype=torch.int32), torch.randn(n, generator=g),
                       x_scale=0.05, x_zero_point=int(torch.randint(0, 256, (1,), generator=g)),
                       y_scale=0.075 * k**0.5, y_zero_point=int(torch.randint(0, 256, (1,), generator=g)),
                       engine=engine)


@pytest.mark.parametrize("engine", ["x86", "qnnpack", "onednn"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_quant_linear_fast_equals_reference(engine: str, per_channel: bool) -> None:
    g = torch.Generator().manual_seed(3)
    for m, k, n in [(1, 1, 1), (7, 5, 3), (300, 4096, 3), (7, 64, 512)]:
        layer = _static_layer(g, k, n, per_channel, engine)
        x_q = torch.randint(0, 256, (m, k), generator=g, dtype=torch.uint8)
        slow = layer.forward_int(x_q, fast=False)
        fast = layer.forward_int(x_q, fast=True)
        assert fast.dtype == slow.dtype == torch.uint8
        assert torch.equal(fast, slow)
        assert torch.equal(layer.accumulate(x_q, fast=True), int64_reference(x_q, layer.x_zero_point, layer.w_q, 0))


@pytest.mark.parametrize("engine", ["x86", "qnnpack", "onednn"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_dynamic_linear_fast_equals_reference(engine: str, per_channel: bool) -> None:
    g = torch.Generator().manual_seed(4)
    for m, k, n in [(1, 1, 1), (7, 5, 3), (300, 4096, 3), (7, 64, 512)]:
        w_q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
        c = n if per_channel else 1
        layer = DynamicQuantLinear(w_q, torch.rand(c, generator=g) * 0.02 + 1e-3, torch.zeros(c, dtype=torch.int32),
                                   torch.randn(n, generator=g), engine=engine)
        for x in (torch.randn(m, k, generator=g) * 3, torch.zeros(m, k), torch.rand(m, k, generator=g)):
            fast, slow = layer.forward(x, fast=True), layer.forward(x, fast=False)
            assert fast.dtype == slow.dtype == torch.float32
            assert torch.equal(fast, slow)


def test_layers_fast_path_in_features_1() -> None:
    w_q = torch.tensor([[1], [2], [3]], dtype=torch.int8)  # (N, K) = (3, 1)
    layer = QuantLinear(w_q, torch.tensor([0.01]), torch.tensor([0]), None, x_scale=0.1, x_zero_point=128,
                        y_scale=0.01, y_zero_point=0)
    x_q = torch.tensor([[129], [130]], dtype=torch.uint8)
    assert torch.equal(layer.accumulate(x_q, fast=True), torch.tensor([[1, 2, 3], [2, 4, 6]]))
    assert torch.equal(layer.forward_int(x_q, fast=True), layer.forward_int(x_q, fast=False))
