"""``kernels.fused``: the compiled per-token passes equal the torchao dialect bit for bit.

Reference: :func:`glassquant.dialects.torchao.quantize_activation` and
:func:`~glassquant.dialects.torchao.dynamic_output` (explicit torch float32 steps, checked
against their own rules in test_torchao_dialect.py). Inputs: random rows at many
magnitudes, rows forced onto exact .5 ties (a row holding ``127.5 * 2**-e`` has scale
``2**-e`` exactly, so ``(j + 0.5) * 2**-e`` lands on a tie), all-zero and tiny rows (the
eps clamp), subnormals, values near float32's max, strided inputs; NaN/Inf rows. Floats
compare with ``torch.equal`` (0 mismatches); integers likewise.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import Tensor, nn

from glassquant.config import WEIGHT_PER_CHANNEL, WEIGHT_PER_TENSOR
from glassquant.dialects import torchao
from glassquant.kernels import fused
from glassquant.nn.linear import DynamicQuantLinear

DIVISOR = (torchao.QMAX - torchao.QMIN) / 2


def test_library_is_built() -> None:
    """``pip install`` builds _fused.c here (gcc is present); a missing build must not pass silently."""
    assert fused.available(), "glassquant/kernels/_fused*.so was not built: run `pip install -e .` with a C compiler"


def _quantize_both(x: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor, int]]:
    got = fused.quantize_rows(x, torchao.QMIN, torchao.QMAX, torchao.SCALE_EPS, DIVISOR)
    assert got is not None
    return got, torchao.quantize_activation(x)


def tie_rows(g: torch.Generator, m: int, k: int) -> tuple[Tensor, int]:
    """Rows whose products ``x * (1/scale)`` are exact .5 ties; returns (x, number of ties)."""
    e = torch.randint(-20, 20, (m, 1), generator=g).to(torch.float64)
    unit = torch.pow(2.0, -e)  # (M, 1) exact powers of two: the row scale
    j = torch.randint(-128, 128, (m, k), generator=g).to(torch.float64)
    x = (j + 0.5) * unit  # exact in float32: |j + 0.5| < 2**8
    x[:, 0] = 127.5 * unit[:, 0]  # the row max: scale = 127.5 * 2**-e / 127.5 = 2**-e exactly
    x[:, 1] = -127.5 * unit[:, 0]  # -> -127.5 -> -128 (ties to even), and +127.5 -> 128 -> 127
    x = x.to(torch.float32)
    return x, m * k


@pytest.mark.parametrize("m,k", [(1, 1), (1, 16), (7, 5), (33, 384), (544, 384), (64, 1536), (3, 4099)])
def test_quantize_rows_random(m: int, k: int) -> None:
    g = torch.Generator().manual_seed(m * 1000 + k)
    mag = torch.pow(10.0, torch.randint(-30, 30, (m, 1), generator=g).to(torch.float32))  # 1e-30 .. 1e29
    x = torch.randn((m, k), generator=g) * mag
    (q, s), (q_ref, s_ref, zp) = _quantize_both(x)
    assert zp == 0 and q.dtype == q_ref.dtype == torch.int8
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)


def test_quantize_rows_ties() -> None:
    g = torch.Generator().manual_seed(7)
    x, n = tie_rows(g, 300, 256)
    inv = 1.0 / torchao.choose_qparams(-x.abs().amax(1, keepdim=True), x.abs().amax(1, keepdim=True))[0]
    frac = (x * inv).abs() - (x * inv).abs().floor()
    assert bool((frac == 0.5).all())  # every product really is a tie, so a half-away kernel would fail
    (q, s), (q_ref, s_ref, _) = _quantize_both(x)
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)
    assert int(q[:, 0].max()) == 127 and int(q[:, 1].min()) == -128  # +-127.5: clamp and tie to even
    half_away = torch.sign(x * inv) * torch.floor((x * inv).abs() + 0.5)
    assert int((half_away.clamp(-128, 127).to(torch.int8) != q).sum()) > n // 4  # the rules differ here


def test_quantize_rows_special_rows() -> None:
    tiny = torch.finfo(torch.float32).tiny
    big = torch.finfo(torch.float32).max
    x = torch.zeros((6, 9))
    x[1] = torch.linspace(-1e-38, 1e-38, 9)  # amax / 127.5 < eps: the clamp
    x[2, :3] = torch.tensor([tiny / 4, -tiny / 8, tiny])  # subnormals
    x[3] = torch.tensor([-big, -big / 2, -1e30, -1.0, 0.0, 1.0, 1e30, big / 3, big])  # huge: no overflow
    x[4] = torch.tensor([-0.0] * 9)
    x[5] = torch.arange(-4, 5, dtype=torch.float32) * 3.0e-7
    (q, s), (q_ref, s_ref, _) = _quantize_both(x)
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)
    assert float(s[0]) == torchao.SCALE_EPS and bool((q[0] == 0).all())  # all-zero row -> scale eps, zeros


def test_quantize_rows_strided() -> None:
    g = torch.Generator().manual_seed(3)
    big = torch.randn((40, 100), generator=g)
    x = big[::2, 10:74]  # row stride 200, unit column stride
    (q, s), (q_ref, s_ref, _) = _quantize_both(x)
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)
    with pytest.raises(ValueError, match="unit column stride"):
        fused.quantize_rows(big.t(), -128, 127, torchao.SCALE_EPS, DIVISOR)
    with pytest.raises(ValueError, match="float32"):
        fused.quantize_rows(big.double(), -128, 127, torchao.SCALE_EPS, DIVISOR)
    with pytest.raises(ValueError, match="not an int8 range"):
        fused.quantize_rows(big, -129, 127, torchao.SCALE_EPS, DIVISOR)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_quantize_rows_non_finite(bad: float) -> None:
    x = torch.ones((5, 8))
    x[3, 6] = bad
    assert fused.quantize_rows(x, -128, 127, torchao.SCALE_EPS, DIVISOR) is None


@settings(max_examples=200, deadline=None)
@given(arrays("float32", st.tuples(st.integers(1, 6), st.integers(1, 40)),
              elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_quantize_rows_property(a) -> None:
    (q, s), (q_ref, s_ref, _) = _quantize_both(torch.from_numpy(a.copy()))
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)


def _rescale_case(g: torch.Generator, m: int, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    acc = torch.randint(-2**31, 2**31 - 1, (m, n), generator=g, dtype=torch.int64).to(torch.int32)
    acc[:, : n // 2] //= 65536  # half small (exact in float32), half past 2**24 (rounded on conversion)
    sx = torch.rand((m, 1), generator=g) * 1e-2
    sw = torch.rand((n,), generator=g) * 1e-3
    b = torch.randn((n,), generator=g)
    return acc, sx, sw, b


@pytest.mark.parametrize("m,n", [(1, 1), (7, 3), (544, 384), (100, 1536)])
@pytest.mark.parametrize("relu", [False, True])
def test_rescale_rows(m: int, n: int, relu: bool) -> None:
    g = torch.Generator().manual_seed(m + n + relu)
    acc, sx, sw, b = _rescale_case(g, m, n)
    for bias in (b, None):
        ref = torchao.dynamic_output(acc.to(torch.int64), sx, sw, bias, relu)
        assert torch.equal(fused.rescale_rows(acc, sx, sw, bias, relu), ref)
        assert torch.equal(fused.rescale_rows(acc.clone(), sx, sw[:1].clone(), bias, relu),
                           torchao.dynamic_output(acc.to(torch.int64), sx, float(sw[0]), bias, relu))
        consumed = acc.clone()
        y = fused.rescale_rows(consumed, sx, sw, bias, relu, in_place=True)
        assert y.data_ptr() == consumed.data_ptr() and torch.equal(y, ref)


def test_rescale_rows_no_fma() -> None:
    """The order ((acc * sx) * sw) + b with three roundings is kept: an FMA would differ here."""
    g = torch.Generator().manual_seed(11)
    acc, sx, sw, b = _rescale_case(g, 256, 512)
    y = fused.rescale_rows(acc, sx, sw, b)
    p = (acc.to(torch.float32) * sx) * sw  # float32, rounded
    assert torch.equal(y, p + b)
    # fma(a, sw, b): a * sw exact in float64 (24 + 24 bits), plus b, one rounding to float32
    a = (acc.to(torch.float32) * sx).to(torch.float64)
    fma = (a * sw.to(torch.float64) + b.to(torch.float64)).to(torch.float32)
    assert int((fma != y).sum()) > 0  # a contracted multiply-add would be caught by these inputs


def test_rescale_rows_bad_arguments() -> None:
    acc = torch.zeros((4, 3), dtype=torch.int32)
    sx, sw = torch.ones((4, 1)), torch.ones(3)
    with pytest.raises(ValueError, match="int32"):
        fused.rescale_rows(acc.to(torch.int64), sx, sw, None)
    with pytest.raises(ValueError, match="x_scale"):
        fused.rescale_rows(acc, torch.ones(3), sw, None)
    with pytest.raises(ValueError, match="w_scale"):
        fused.rescale_rows(acc, sx, torch.ones(2), None)
    with pytest.raises(ValueError, match="bias"):
        fused.rescale_rows(acc, sx, sw, torch.ones(4))


def _layer(k: int, n: int, seed: int, per_channel: bool = True, bias: bool = True, relu: bool = False
           ) -> DynamicQuantLinear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    layer = DynamicQuantLinear.from_float(lin, weight_scheme=WEIGHT_PER_CHANNEL if per_channel else WEIGHT_PER_TENSOR,
                                          engine="torchao")
    layer.relu = relu
    return layer


@pytest.mark.parametrize("shape", [(1, 16), (4, 9, 384), (2, 3, 5, 64)])
@pytest.mark.parametrize("per_channel,bias,relu", [(True, True, False), (False, False, True), (True, False, True)])
def test_layer_fused_equals_reference(shape: tuple[int, ...], per_channel: bool, bias: bool, relu: bool) -> None:
    layer = _layer(shape[-1], 48, seed=len(shape), per_channel=per_channel, bias=bias, relu=relu)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g) * 4
    assert torch.equal(layer(x), layer(x, fast=False))
    xt = torch.randn(shape[-1], 6, generator=g).t()  # a transposed (non-contiguous) input
    assert torch.equal(layer(xt), layer(xt, fast=False))


def test_layer_takes_the_fused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from glassquant.kernels import vnni

    monkeypatch.setattr(vnni, "available", lambda: False)  # with AVX512-VNNI the layer runs kernels.vnni
    layer = _layer(32, 8, seed=1)
    calls = []
    real = fused.rescale_rows
    monkeypatch.setattr(fused, "rescale_rows", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    layer(torch.randn(3, 32))
    assert calls == [1]
    layer(torch.randn(3, 32, dtype=torch.float64))  # not float32: the dialect path
    assert calls == [1]


def test_layer_without_library(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _layer(40, 24, seed=2)
    x = torch.randn(10, 40) * 3
    fast = layer(x)
    monkeypatch.setattr(fused, "available", lambda: False)
    assert torch.equal(layer(x), fast)


def test_layer_non_finite_input_names_the_layer() -> None:
    layer = _layer(16, 4, seed=3)
    layer.name = "encoder.layer.0.attention.self.query"
    x = torch.randn(3, 16)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.attention\.self\.query.*NaN"):
        layer(x)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux only)")
def test_one_openmp_runtime() -> None:
    """The library shares torch's libgomp (same soname, loaded first): one OpenMP runtime, one pool.

    Checked in a fresh interpreter, since other packages (scikit-learn) bring their own
    renamed libgomp copies into the test process.
    """
    code = ("import pathlib, torch; from glassquant.kernels import fused; assert fused.available(); "
            "maps = pathlib.Path('/proc/self/maps').read_text().splitlines(); "
            "print(sorted({l.split()[-1] for l in maps if 'libgomp' in l or '_fused' in l}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    paths = ast.literal_eval(out.strip())
    gomp = [p for p in paths if "libgomp" in p]
    assert any("_fused" in p for p in paths)
    assert len(gomp) == 1 and Path(gomp[0]).parent == Path(torch.__file__).parent / "lib", gomp
