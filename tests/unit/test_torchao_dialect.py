"""``dialects.torchao``: torchao's int8 arithmetic (W8A8 per token, W8 weight-only) as stated float32 steps.

These tests need no torchao: they prove the code computes the *stated* steps (the module
docstring) and nothing else: every expected value comes from an independent evaluation of
those steps in exact rational arithmetic (``fractions.Fraction``, each step rounded to
float32 by :func:`f32_exact`, written here from the IEEE definition). The real torch runtime
cross-checks the one step it shares: ``torch.quantize_per_channel`` with zero point 0
performs the same ``rne(x * f32(1/scale))`` (docs/dialects.md). That the stated steps are
torchao 0.18's is proven against torchao itself in tests/equivalence/test_torchao.py.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import Tensor, nn

from glassquant import dialects
from glassquant.dialects import torchao
from glassquant.nn.linear import WEIGHT_PER_CHANNEL, WEIGHT_PER_TENSOR, DynamicQuantLinear, quantize_weight
from glassquant.scheme import QScheme

from gq_testing import needs_torch_ao

EPS = Fraction(1, 2**23)


def f32_exact(q: Fraction) -> Fraction:
    """The float32 nearest to the rational ``q`` (ties to even), as a Fraction; subnormals included."""
    if q == 0:
        return Fraction(0)
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()  # floor(log2 a) or one more
    if a < Fraction(2) ** e:
        e -= 1
    e = max(e, -126)  # below 2**-126 the quantum stays 2**-149
    quantum = Fraction(2) ** (e - 23)
    r = round(a / quantum) * quantum  # Fraction.__round__: half to even
    assert r < Fraction(2) ** 128, "float32 overflow"
    return r if q > 0 else -r


def fr(t: Tensor) -> list:
    """A float32 tensor as nested lists of exact Fractions."""
    return [Fraction(v) for v in t.reshape(-1).tolist()] if t.dim() <= 1 else [fr(r) for r in t]


def rne(q: Fraction) -> int:
    return round(q)  # half to even


def ref_scale(row: list[Fraction]) -> Fraction:
    """Stated steps: amax over the range widened to 0, f32(amax / 127.5), clamp at eps."""
    lo, hi = min(min(row), Fraction(0)), max(max(row), Fraction(0))
    return max(f32_exact(max(-lo, hi) / Fraction(255, 2)), EPS)


def ref_quantize(row: list[Fraction], scale: Fraction) -> list[int]:
    """Stated steps: inv = f32(1/scale); q = clamp(rne(f32(x * inv)), -128, 127)."""
    inv = f32_exact(1 / scale)
    return [min(max(rne(f32_exact(x * inv)), -128), 127) for x in row]


def ref_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row reference ``(q int8, scale float32 (M,))`` of a 2-D float32 tensor."""
    qs, scales = [], []
    for row in fr(x):
        s = ref_scale(row)
        scales.append(float(s))
        qs.append(ref_quantize(row, s))
    return torch.tensor(qs, dtype=torch.int8), torch.tensor(scales, dtype=torch.float32)


def awkward_rows(g: torch.Generator) -> Tensor:
    """(12, 64) float32: ordinary, one-signed, tiny, huge, all-zero rows, and rows on exact ties."""
    rows = [torch.randn(64, generator=g), torch.randn(64, generator=g) * 1e-3, torch.rand(64, generator=g) * 7,
            -torch.rand(64, generator=g) * 0.1, torch.randn(64, generator=g) * 1e-30,
            torch.randn(64, generator=g) * 1e30, torch.zeros(64), torch.full((64,), -2.5)]
    for k in (0, 3, 7, 12):  # amax = 127.5 * 2**-k: scale 2**-k exactly, x = (j + 0.5) 2**-k are ties
        j = torch.randint(-128, 128, (64,), generator=g).to(torch.float32)
        row = (j + 0.5) * 2.0**-k
        row[0], row[1] = -127.5 * 2.0**-k, 127.5 * 2.0**-k  # saturating ends: -127.5 -> -128, 127.5 -> 128 -> 127
        rows.append(row)
    return torch.stack(rows).to(torch.float32)


def sqnr_db(ref: Tensor, y: Tensor) -> float:
    ref64, y64 = ref.to(torch.float64), y.to(torch.float64)
    return 10 * math.log10(float((ref64**2).sum() / ((ref64 - y64) ** 2).sum()))


@pytest.fixture
def torchao_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the dialect as an engine for this test only (the project adds it to ENGINES)."""
    monkeypatch.setitem(dialects.ENGINES, "torchao", torchao)


# ----- qparams and quantize -----------------------------------------------------------------------


def test_worked_example() -> None:
    """Range (-1, 3): scale = f32(3 / 127.5), 1/scale = 42.5; 3.0 -> 127.5 -> 128 -> 127; -1.0 -> -42.5 -> -42."""
    scale, zp = torchao.choose_qparams(torch.tensor(-1.0), torch.tensor(3.0))
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32 and int(zp) == 0
    assert Fraction(float(scale)) == f32_exact(Fraction(3) / Fraction(255, 2))
    assert float(torch.tensor(1.0) / scale) == 42.5
    got = torchao.quantize(torch.tensor([3.0, -1.0, 1.0, 0.0]), scale)
    assert torch.equal(got, torch.tensor([127, -42, 42, 0], dtype=torch.int8))


def test_divisor_is_half_the_grid_width_and_eps_is_float32_epsilon() -> None:
    assert torchao.SCALE_EPS == 2.0**-23
    scale, _ = torchao.choose_qparams(torch.tensor([0.0, -127.5, 0.0]), torch.tensor([0.0, 0.0, 1e-12]))
    assert scale.tolist() == [2.0**-23, 1.0, 2.0**-23]  # zero range and tiny ranges clamp at eps
    narrow, _ = torchao.choose_qparams(torch.tensor(-127.0), torch.tensor(0.0), qmin=-127, qmax=127)
    assert float(narrow) == 1.0  # custom grid: divisor (127 - (-127)) / 2


def test_per_row_quantization_matches_exact_reference() -> None:
    x = awkward_rows(torch.Generator().manual_seed(0))
    q_ref, s_ref = ref_rows(x)
    w_q, scale, zp = torchao.quantize_weight(x, WEIGHT_PER_CHANNEL)
    assert w_q.dtype == torch.int8 and scale.shape == (x.shape[0],) and zp.shape == (x.shape[0],)
    assert torch.equal(scale, s_ref)
    assert torch.equal(w_q, q_ref)
    assert not bool(zp.any())
    ties = x[8:, 2:] / s_ref[8:, None]
    assert bool(((ties - ties.floor()) == 0.5).all())  # the tie rows really sit on .5
    assert int(w_q[8:, 0].max()) == -128 and int(w_q[8:, 1].min()) == 127  # both saturating ends
    assert not bool(w_q[6].any())  # all-zero row -> zeros


def test_per_tensor_weight_matches_exact_reference() -> None:
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(1))
    w_q, scale, _ = torchao.quantize_weight(x, WEIGHT_PER_TENSOR)
    flat = fr(x.reshape(-1))
    s = ref_scale(flat)
    assert scale.shape == (1,) and Fraction(float(scale)) == s
    assert torch.equal(w_q, torch.tensor(ref_quantize(flat, s), dtype=torch.int8).reshape(16, 40))


@needs_torch_ao
def test_quantize_step_equals_torch_quantize_per_channel_with_zero_point_0() -> None:
    """The real runtime computes ``rne(x * f32(1/scale))`` per channel; with zero point 0 that is torchao's step."""
    x = awkward_rows(torch.Generator().manual_seed(2))
    scale, _ = torchao.choose_qparams(x.amin(dim=1), x.amax(dim=1))
    ref = torch.quantize_per_channel(x, scale.to(torch.float64), torch.zeros(x.shape[0], dtype=torch.int64), 0,
                                     torch.qint8).int_repr()
    assert torch.equal(torchao.quantize(x, scale, 0, torch.int8, axis=0), ref)


def test_weight_rules_reject_other_schemes() -> None:
    w = torch.randn(4, 8)
    for bad in (QScheme(8, signed=True, symmetric=False, axis=0), QScheme(8, signed=False, symmetric=True, axis=0),
                QScheme(4, signed=True, symmetric=True, axis=0), QScheme(8, signed=True, symmetric=True, group_size=4),
                QScheme(8, signed=True, symmetric=True, axis=1)):
        with pytest.raises(ValueError, match=r"enc\.weight"):
            torchao.quantize_weight(w, bad, "enc.weight")
    w[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"enc\.weight.*NaN"):
        torchao.quantize_weight(w, WEIGHT_PER_CHANNEL, "enc.weight")


# ----- activations and outputs --------------------------------------------------------------------


def test_quantize_activation_is_per_token() -> None:
    x = awkward_rows(torch.Generator().manual_seed(3))[:, :48]
    x_q, x_scale, x_zp = torchao.quantize_activation(x)
    q_ref, s_ref = ref_rows(x)
    assert x_zp == 0 and x_q.dtype == torch.int8 and x_scale.shape == (x.shape[0], 1)
    assert torch.equal(x_scale.reshape(-1), s_ref)
    assert torch.equal(x_q, q_ref)
    same, _, _ = torchao.quantize_activation(x, reduce_range=True)  # the default config only: the flag is ignored
    assert torch.equal(same, x_q)
    x3 = x.reshape(3, 4, 48)  # leading dimensions kept
    q3, s3, _ = torchao.quantize_activation(x3)
    assert torch.equal(q3.reshape(12, 48), q_ref) and s3.shape == (3, 4, 1)


def ref_dynamic_output(acc: Tensor, sx: Tensor, sw: Tensor, bias: Tensor | None) -> Tensor:
    """Stated steps: y = f32(f32(f32(acc) * sx[m]) * sw[n]); y = f32(y + b[n])."""
    out = []
    for m, row in enumerate(acc.tolist()):
        s_m = Fraction(float(sx[m]))
        vals = []
        for n, a in enumerate(row):
            y = f32_exact(f32_exact(f32_exact(Fraction(a)) * s_m) * Fraction(float(sw[n])))
            if bias is not None:
                y = f32_exact(y + Fraction(float(bias[n])))
            vals.append(float(y))
        out.append(vals)
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_dynamic_output_matches_exact_reference(with_bias: bool) -> None:
    """Accumulators past 2**24 (f32(acc) rounds), random scales, a bias: every float32 rounding in place."""
    g = torch.Generator().manual_seed(4)
    m, n = 6, 24
    acc = torch.randint(-(2**31) + 1, 2**31 - 1, (m, n), generator=g, dtype=torch.int64)
    acc[0] = torch.randint(-300, 300, (n,), generator=g)
    sx = (torch.rand(m, 1, generator=g) * 0.05 + 1e-4).to(torch.float32)
    sw = (torch.rand(n, generator=g) * 0.02 + 1e-5).to(torch.float32)
    bias = torch.randn(n, generator=g) if with_bias else None
    got = torchao.dynamic_output(acc, sx, sw, bias)
    assert got.dtype == torch.float32
    assert torch.equal(got, ref_dynamic_output(acc, sx, sw, bias))
    assert torch.equal(torchao.dynamic_output(acc, sx, sw, bias, relu=True), got.clamp_min(0))
    # the order matters: forming sx * sw first rounds differently on some outputs
    other = acc.to(torch.float32) * (sx * sw) + (0 if bias is None else bias)  # (M, N) * (M, N)
    assert not torch.equal(other, got)


def test_linear_dynamic_accumulates_exact_integers() -> None:
    g = torch.Generator().manual_seed(5)
    w_q = torch.where(torch.rand(16, 4096, generator=g) < 0.5, -128, 127).to(torch.int8)
    x = torch.sign(w_q[:9].to(torch.float32)) * (torch.rand(9, 4096, generator=g) * 2 + 1)  # aligned: large sums
    x[0] = torch.randn(4096, generator=g)  # and one ordinary row
    w_scale = torch.rand(16, generator=g) * 0.01 + 1e-4
    bias = torch.randn(16, generator=g)
    x_q, x_scale, _ = torchao.quantize_activation(x)
    acc = x_q.to(torch.int64) @ w_q.to(torch.int64).T  # (M, K) @ (K, N) int64: the exact sums
    assert int(acc.abs().max()) > 2**24  # f32(acc) rounds for some outputs
    got = torchao.linear_dynamic(x, w_q, w_scale, 0, bias)
    assert torch.equal(got, ref_dynamic_output(acc, x_scale.reshape(-1), w_scale, bias))


def test_weight_only_scales_after_the_matmul() -> None:
    """``(x @ f32(w_q).T) * sw + b``: with inputs whose matmul is exact, the two later roundings are checked."""
    g = torch.Generator().manual_seed(6)
    x = torch.randint(-64, 64, (7, 32), generator=g).to(torch.float32) / 8  # products and sums exact in float32
    w_q = torch.randint(-128, 128, (10, 32), generator=g, dtype=torch.int8)
    sw = (torch.rand(10, generator=g) * 0.02 + 1e-4).to(torch.float32)
    bias = torch.randn(10, generator=g)
    mm = (x.to(torch.float64) @ w_q.to(torch.float64).T).tolist()  # exact
    ref = torch.tensor([[float(f32_exact(f32_exact(Fraction(v) * Fraction(float(sw[n]))) + Fraction(float(bias[n]))))
                         for n, v in enumerate(row)] for row in mm], dtype=torch.float32)
    got = torchao.linear_weight_only(x, w_q, sw, bias)
    assert torch.equal(got, ref)
    assert torch.equal(torchao.linear_weight_only(x.reshape(7, 1, 32), w_q, sw, bias), ref.reshape(7, 1, 10))
    dequant_first = x @ (w_q.to(torch.float32) * sw[:, None]).T + bias  # the other order differs somewhere
    assert not torch.equal(dequant_first, ref)


def test_bad_inputs_name_the_tensor() -> None:
    x = torch.randn(3, 8)
    x[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"torchao dynamic linear: input.*NaN"):
        torchao.quantize_activation(x)
    with pytest.raises(ValueError, match="empty"):
        torchao.quantize_activation(torch.zeros(0, 8))
    with pytest.raises(ValueError, match=r"dec\.out.*NaN"):
        torchao.linear_weight_only(x, torch.zeros(4, 8, dtype=torch.int8), torch.ones(4), None, "dec.out")
    with pytest.raises(ValueError, match=r"dec\.out.*9.*8"):
        torchao.linear_weight_only(torch.zeros(2, 9), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4), None,
                                   "dec.out")
    with pytest.raises(TypeError, match=r"w_q"):
        torchao.linear_weight_only(torch.zeros(2, 8), torch.zeros(4, 8), torch.ones(4), None)


# ----- the layer: DynamicQuantLinear(engine="torchao") --------------------------------------------


def float_linear(k: int, n: int, seed: int) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin


@pytest.mark.usefixtures("torchao_engine")
def test_quantize_weight_uses_the_dialects_own_rule() -> None:
    lin = float_linear(64, 32, seed=7)
    for scheme in (WEIGHT_PER_CHANNEL, WEIGHT_PER_TENSOR):
        got = quantize_weight(lin.weight.detach(), scheme, "torchao", "fc.weight")
        q_ref, s_ref = ref_rows(lin.weight.detach() if scheme.axis == 0 else lin.weight.detach().reshape(1, -1))
        assert torch.equal(got[0], q_ref.reshape(32, 64)) and torch.equal(got[1], s_ref)
    with pytest.raises(ValueError, match=r"fc\.weight"):
        quantize_weight(lin.weight.detach(), QScheme(8, symmetric=False, axis=0), "torchao", "fc.weight")


@pytest.mark.usefixtures("torchao_engine")
def test_dynamic_quant_linear_runs_the_dialect() -> None:
    from safetensors.torch import load, save

    lin = float_linear(96, 40, seed=8)
    layer = DynamicQuantLinear.from_float(lin, weight_scheme=WEIGHT_PER_CHANNEL, engine="torchao", reduce_range=False,
                                          name="blocks.0.mlp")
    x = torch.randn(2, 13, 96, generator=torch.Generator().manual_seed(9))
    y = layer(x)
    ref = torchao.linear_dynamic(x.reshape(-1, 96), layer.w_q, layer.w_scale, 0, layer.bias).reshape(2, 13, 40)
    assert y.shape == (2, 13, 40) and torch.equal(y, ref)
    assert torch.equal(layer(x, fast=False), y)  # _int_mm fast path == exact reference accumulators
    tensors, meta = layer.record()
    assert meta["engine"] == "torchao"
    again = DynamicQuantLinear.from_record(load(save(tensors)), meta)
    assert torch.equal(again(x), y)
    nan = x.clone()
    nan[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp"):
        layer(nan)


@pytest.mark.usefixtures("torchao_engine")
def test_per_token_beats_per_tensor_with_one_outlier_token() -> None:
    """One token 100x larger: fbgemm's single uint8 scale leaves the other tokens a few levels; per token does not.

    Measured (seeds 0-2, K=256, N=128, 32 tokens): ordinary tokens 40.05-40.14 dB per token vs
    0.41-0.48 dB per tensor; whole output 39.60-40.36 dB vs 24.41-25.61 dB.
    """
    for seed in range(3):
        lin = float_linear(256, 128, seed=seed)
        x = torch.randn(32, 256, generator=torch.Generator().manual_seed(100 + seed))
        x[5] *= 100
        ref = lin(x).detach()
        per_token = DynamicQuantLinear.from_float(lin, weight_scheme=WEIGHT_PER_CHANNEL, engine="torchao",
                                                  reduce_range=False)(x)
        per_tensor = DynamicQuantLinear.from_float(lin, weight_scheme=WEIGHT_PER_CHANNEL, engine="fbgemm",
                                                   reduce_range=True)(x)
        ordinary = torch.ones(32, dtype=torch.bool)
        ordinary[5] = False
        assert sqnr_db(ref[ordinary], per_token[ordinary]) >= 37
        assert sqnr_db(ref[ordinary], per_tensor[ordinary]) <= 5
        assert sqnr_db(ref, per_token) >= sqnr_db(ref, per_tensor) + 10


def test_int8_weights_equal_the_pytorch_engines_per_channel_weights() -> None:
    """With zero point 0 both rules are ``rne(w * f32(1/scale))`` with ``scale = amax / 127.5``: same integers."""
    w = torch.randn(48, 80, generator=torch.Generator().manual_seed(10))
    ao = torchao.quantize_weight(w, WEIGHT_PER_CHANNEL)
    pt = quantize_weight(w, WEIGHT_PER_CHANNEL, "fbgemm")
    assert torch.equal(ao[0], pt[0]) and torch.equal(ao[1], pt[1])
