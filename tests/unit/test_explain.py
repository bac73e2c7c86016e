"""``analysis.explain``: each cause is triggered by a constructed input, and only it.

For every cause a pair of recipes that differ in exactly that stage runs on an input built
to reach it; the test checks independently (integer arithmetic written here) which
elements must differ, and that explain names exactly those with that cause. The recipes
of the real dialects must reproduce them (no ``unexplained`` elements on random layers).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from glassquant.analysis.explain import (
    CAUSES,
    RECIPES,
    explain_activation_qparams,
    explain_linear,
    int16_pair_accumulate,
    pytorch_activation_rule,
    recipe_output,
)
from glassquant.dialects import fbgemm, onednn, qnnpack
from glassquant.dialects._base import accumulate
from glassquant.nn.linear import QuantLinear


def _layer(w_q: torch.Tensor, *, sx: float = 0.5, sw: float | torch.Tensor = 0.5, sy: float = 1.0, zx: int = 0,
           zy: int = 128, bias: torch.Tensor | None = None, relu: bool = False) -> QuantLinear:
    n = w_q.shape[0]
    w_scale = torch.as_tensor(sw, dtype=torch.float32).reshape(-1)
    return QuantLinear(w_q, w_scale, torch.zeros(n, dtype=torch.int32), bias, sx, zx, sy, zy, relu=relu,
                       engine="x86", check_overflow=False)


def _random(seed: int, m: int = 64, k: int = 48, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (m, k), generator=g, dtype=torch.uint8),
            torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8))


def _small(seed: int, m: int = 64, k: int = 16, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Small integers: |acc| <= 256, so outputs at multiplier 0.25 stay inside the grid."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 5, (m, k), generator=g, dtype=torch.uint8),
            torch.randint(-4, 5, (n, k), generator=g, dtype=torch.int8))


@pytest.mark.parametrize("name,dialect", [("fbgemm", fbgemm), ("qnnpack", qnnpack), ("onednn", onednn)])
def test_recipes_reproduce_their_dialects(name: str, dialect) -> None:
    g = torch.Generator().manual_seed(1)
    for per_channel in (False, True):
        x_q, w_q = _random(2)
        sw = torch.rand(w_q.shape[0], generator=g) * 1e-3 + 1e-4 if per_channel else 7.3e-4
        layer = _layer(w_q, sx=0.037, sw=sw, sy=0.91, zx=113, zy=71, bias=torch.randn(w_q.shape[0], generator=g))
        acc = accumulate(x_q, layer.x_zero_point, w_q, layer.w_zero_point)
        want = dialect.linear(x_q, layer.x_scale, layer.x_zero_point, w_q, sw if per_channel else float(sw),
                              layer.w_zero_point, layer.bias, layer.y_scale, layer.y_zero_point).to(torch.int64)
        assert torch.equal(recipe_output(RECIPES[name], acc, None, layer) + layer.y_zero_point, want)


def test_tie() -> None:
    x_q, w_q = _small(3)
    layer = _layer(w_q)  # multiplier 0.5 * 0.5 / 1 = 0.25: acc = 2 (mod 4) lands on a .5 tie
    b = replace(RECIPES["fbgemm"], name="away", tie="away", reference=None)
    e = explain_linear(layer, x_q, "fbgemm", b)
    acc = accumulate(x_q, 0, w_q, 0)
    rne = torch.round(acc.to(torch.float64) / 4)
    away = torch.sign(acc.to(torch.float64)) * torch.floor(acc.abs().to(torch.float64) / 4 + 0.5)
    expected = (rne.clamp(-128, 127) != away.clamp(-128, 127)).nonzero().tolist()
    assert len(expected) > 100
    assert sorted(list(d.index) for d in e.differences) == sorted(expected)
    assert set(e.counts) == {"tie"}


def test_zero_point_before_after() -> None:
    x_q, w_q = _small(4)
    layer = _layer(w_q, zy=127)  # odd zero point: rne(v + 127) != rne(v) + 127 exactly at ties
    b = replace(RECIPES["fbgemm"], name="zp-before", zero_point="before", reference=None)
    e = explain_linear(layer, x_q, "fbgemm", b)
    acc = accumulate(x_q, 0, w_q, 0)
    v = acc.to(torch.float64) / 4
    after = (torch.round(v) + 127).clamp(0, 255)
    before = torch.round(v + 127).clamp(0, 255)
    assert sorted(list(d.index) for d in e.differences) == sorted((after != before).nonzero().tolist())
    assert len(e.differences) > 100 and set(e.counts) == {"zero_point"}


def test_bias_quantized_vs_float() -> None:
    x_q, w_q = _small(5)
    bias = torch.full((w_q.shape[0],), 0.3 * 0.25)  # b / (sx sw) = 0.3: the int32 bias drops it
    layer = _layer(w_q, bias=bias)
    b = replace(RECIPES["fbgemm"], name="int-bias", bias="int32", reference=None,
                quantize_bias=RECIPES["fixed-single"].quantize_bias)
    e = explain_linear(layer, x_q, "fbgemm", b)
    acc = accumulate(x_q, 0, w_q, 0).to(torch.float64)
    with_float = torch.round((acc + 0.3) / 4).clamp(-128, 127)  # v = (acc + 0.3) * 0.25, exact enough here
    with_int = torch.round(acc / 4).clamp(-128, 127)
    assert len(e.differences) == int((with_float != with_int).sum()) > 50
    assert set(e.counts) == {"bias"}


def test_int16_pair_saturation() -> None:
    g = torch.Generator().manual_seed(6)
    x_q = torch.randint(200, 256, (32, 16), generator=g, dtype=torch.uint8)  # above 127: pairs can saturate
    w_q = torch.randint(100, 128, (8, 16), generator=g, dtype=torch.int8)
    w_q[:4] = -w_q[:4]
    layer = _layer(w_q, sx=1.0, sw=1.0, sy=4096.0)
    e = explain_linear(layer, x_q, "fbgemm", "fbgemm-avx2")
    exact = accumulate(x_q, 0, w_q, 0)
    pairs = int16_pair_accumulate(x_q, 0, w_q, 0)
    # the independent check: every pair here sums beyond int16 (2 * 200 * 100 > 32767)
    prod = x_q.to(torch.int64).reshape(32, 1, 8, 2) * w_q.to(torch.int64).reshape(1, 8, 8, 2)
    assert bool((prod.sum(-1).abs() > 32767).all())
    assert bool((pairs != exact).all())
    assert len(e.differences) > 0 and set(e.counts) == {"int16_pairs"}


def test_single_vs_double_rounding() -> None:
    x_q, w_q = _random(7, m=200, k=64, n=200)
    layer = _layer(w_q, sx=0.0213, sw=0.00377, sy=0.0571, bias=None)
    e = explain_linear(layer, x_q, "fixed-single", "fixed-double")
    assert len(e.differences) > 0 and set(e.counts) == {"double_rounding"}


def test_float_vs_fixed_and_precision_loss() -> None:
    """acc = (k + 0.5) * 2**20 + 1 is odd past 2**24: float32 rounds it to the tie (k + 0.5) * 2**20,
    so the float path rounds k + 0.5 to even (k) while the exact fixed-point value is just above."""
    ks = [20, 22, 24, 26]  # even k: rne of the tie goes down, the exact value goes up
    w_rows, bulks = [], []
    for k in ks:
        b0 = (2 * k + 1) * 2**19  # (k + 0.5) * 2**20
        s = round((b0 - 128) / 255)  # bulk = 255 * s, within 128 of b0 - 128
        row = [127] * (s // 127) + ([s % 127] if s % 127 else [])
        w_rows.append(row)
        bulks.append(255 * s)
    width = max(len(r) for r in w_rows) + 1
    w_q = torch.zeros((len(ks), width), dtype=torch.int8)
    for n, row in enumerate(w_rows):
        w_q[n, : len(row)] = torch.tensor(row, dtype=torch.int8)
        w_q[n, -1] = 1  # the last input adds x_last in [0, 255]
    x_q = torch.full((256, width), 255, dtype=torch.uint8)
    x_q[:, -1] = torch.arange(256, dtype=torch.uint8)
    layer = _layer(w_q, sx=1.0, sw=1.0, sy=2.0**20, zy=0)
    acc = accumulate(x_q, 0, w_q, 0)
    assert bool((acc > 2**24).all())
    e = explain_linear(layer, x_q, "fbgemm", "fixed-single")
    b0 = [(2 * k + 1) * 2**19 for k in ks]
    ties = {(b0[n] - bulks[n], n) for n in range(len(ks))}  # acc = b0 exactly: a true tie (even vs up)
    lost = {(b0[n] + 1 - bulks[n], n) for n in range(len(ks))}  # acc = b0 + 1: a tie only in float32
    assert {d.index for d in e.differences if d.cause == "tie"} == ties
    assert {d.index for d in e.differences if d.cause == "precision"} == lost
    assert set(e.counts) == {"tie", "precision"}
    assert all(d.a == ks[d.index[1]] and d.b == ks[d.index[1]] + 1 for d in e.differences)


def test_float_vs_fixed() -> None:
    """Multiplier 0.1: float32 holds 0.10000000149, Q31 holds 1717986918 * 2**-34 < 0.1, so exact
    .5 values (acc = 5 mod 10) land on opposite sides of the tie."""
    x_q, w_q = _small(9, m=200, n=100)
    layer = _layer(w_q, sx=1.0, sw=1.0, sy=10.0, zy=128)
    e = explain_linear(layer, x_q, "fbgemm", "fixed-single")
    acc = accumulate(x_q, 0, w_q, 0)
    fixed = [((a * 1717986918 + 2**33) >> 34) for a in acc.reshape(-1).tolist()]  # TFLite single rounding
    fixed_t = torch.tensor(fixed).reshape(acc.shape).clamp(-128, 127)
    fbgemm_t = fbgemm.linear(x_q, 1.0, 0, w_q, 1.0, layer.w_zero_point, None, 10.0, 128).to(torch.int64) - 128
    assert len(e.differences) == int((fixed_t != fbgemm_t).sum())
    assert e.counts["float_vs_fixed"] > 0 and set(e.counts) <= {"float_vs_fixed", "tie"}


def test_real_dialects_are_fully_explained() -> None:
    g = torch.Generator().manual_seed(10)
    for a, b in [("fbgemm", "onednn"), ("fbgemm", "qnnpack"), ("qnnpack", "onednn"), ("onednn", "fbgemm"),
                 ("x86", "glassquant"), ("glassquant", "qnnpack"), ("x86", "onnx"), ("onnx", "glassquant"),
                 ("x86", "tflite"), ("tflite", "onnx"), ("glassquant", "tflite")]:
        x_q, w_q = _random(11, m=128, n=64)
        layer = _layer(w_q, sx=0.05, sw=torch.rand(64, generator=g) * 1e-3 + 1e-4, sy=0.37, zx=119, zy=64,
                       bias=torch.randn(64, generator=g))
        e = explain_linear(layer, x_q, a, b)
        assert "unexplained" not in e.counts, (a, b, e.counts)
        ya = RECIPES[a].reference(x_q, layer.x_scale, layer.x_zero_point, w_q, layer.w_scale, layer.w_zero_point,
                                  layer.bias, layer.y_scale, layer.y_zero_point)
        yb = RECIPES[b].reference(x_q, layer.x_scale, layer.x_zero_point, w_q, layer.w_scale, layer.w_zero_point,
                                  layer.bias, layer.y_scale, layer.y_zero_point)
        assert len(e.differences) == int((ya != yb).sum())  # every differing element listed, once
        for d in e.differences:
            assert (d.a, d.b) == (int(ya[d.index]), int(yb[d.index]))
        assert "| cause | count |" in e.to_markdown()


def test_wrong_recipe_is_reported_unexplained() -> None:
    x_q, w_q = _random(12)
    layer = _layer(w_q, zy=127)
    liar = replace(RECIPES["fbgemm"], name="liar", reference=onednn.linear)  # claims onednn, computes fbgemm
    e = explain_linear(layer, x_q, "fbgemm", liar)
    onednn_y = onednn.linear(x_q, layer.x_scale, 0, w_q, 0.5, layer.w_zero_point, None, 1.0, 127)
    fbgemm_y = fbgemm.linear(x_q, layer.x_scale, 0, w_q, 0.5, layer.w_zero_point, None, 1.0, 127)
    assert e.counts["unexplained"] == int((onednn_y != fbgemm_y).sum()) > 0


def test_input_stage_causes() -> None:
    w_q = torch.randint(-128, 128, (4, 8), generator=torch.Generator().manual_seed(13), dtype=torch.int8)
    layer = _layer(w_q, sx=0.25, zx=3)  # odd zero point, power-of-two scale: x / s exact
    x = (torch.arange(0, 32, dtype=torch.float32) + 0.5).reshape(4, 8) * 0.25  # every x / s is a tie

    def ort_like(x: torch.Tensor, s: float, z: int) -> torch.Tensor:  # true division, rne, then + zp
        return (torch.round(x.to(torch.float64) / s) + z).clamp(0, 255).to(torch.uint8)

    def away(x: torch.Tensor, s: float, z: int) -> torch.Tensor:  # zp before rounding, ties away
        v = x.to(torch.float64) / s + z
        return (torch.sign(v) * torch.floor(v.abs() + 0.5)).clamp(0, 255).to(torch.uint8)

    b = replace(RECIPES["fbgemm"], name="ort-like", quantize=ort_like, input_zero_point="after", reference=None)
    e = explain_linear(layer, x, "fbgemm", b)
    inputs = [d for d in e.differences if d.stage == "input"]
    assert len(inputs) == 32 and {d.cause for d in inputs} == {"zero_point"}  # odd zp flips every tie
    c = replace(RECIPES["fbgemm"], name="away", quantize=away, reference=None)
    e = explain_linear(layer, x, "fbgemm", c)
    inputs = [d for d in e.differences if d.stage == "input"]
    assert len(inputs) > 0 and {d.cause for d in inputs} == {"tie"}
    x2 = torch.full((1, 8), 0.1)  # not a tie: 0.1 / 0.25 = 0.4; a formula off by one would show here

    def off(x: torch.Tensor, s: float, z: int) -> torch.Tensor:
        return (torch.round(x.to(torch.float64) / s) + z + 1).clamp(0, 255).to(torch.uint8)

    e = explain_linear(layer, x2, "fbgemm", replace(RECIPES["fbgemm"], name="off", quantize=off, reference=None))
    assert {d.cause for d in e.differences if d.stage == "input"} == {"input_formula"}


def test_activation_qparams_causes() -> None:
    x = torch.linspace(-1.0, 3.0, 50).reshape(5, 10)
    d = explain_activation_qparams(x, pytorch_activation_rule("fbgemm", True), pytorch_activation_rule("qnnpack", True))
    assert d.cause == "reduce_range" and d.a[2] == (0, 127) and d.b[2] == (0, 255) and d.differing_inputs > 0
    same = explain_activation_qparams(x, pytorch_activation_rule("fbgemm", True),
                                      pytorch_activation_rule("x86", True))
    assert same.cause is None and same.differing_inputs == 0

    def clamped(x: torch.Tensor):  # a rule whose zero point is clamped into [0, 100]
        x_q, s, z, r = pytorch_activation_rule("qnnpack", False)(x)  # all positive: zp is 0
        return x_q, s, min(max(z, 0), 100) + 1, r

    d = explain_activation_qparams(x + 10, pytorch_activation_rule("qnnpack", False), clamped)
    assert d.cause == "zero_point_clamp"
    assert set(CAUSES) >= {"reduce_range", "zero_point_clamp"}
