"""The onnx dialect against ONNX Runtime 1.32 (CPU execution provider), bit for bit.

Every expected value is computed by ORT: single-operator graphs built here with
``onnx.helper`` (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger),
glassquant layers exported by ``interop.onnxruntime`` (QGemm, QLinearMatMul, QLinearConv, their
QDQ forms, quantize_dynamic's graph), and models quantized by ``onnxruntime.quantization``
itself. Integers compare with ``torch.equal`` / mismatch counts of 0, >= 100,000 per entry
point: random values, float32 neighbours of exact .5 ties, power-of-two scales (exact ties),
zero points at the ends of the grid, full-range integers (accumulators past 2**24), and output
multipliers forced onto few-bit dyadic values (one in ten outputs an exact tie). Mutants (a
rule changed to a plausible alternative) must fail on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

ort = pytest.importorskip("onnxruntime", reason="reference unavailable: onnxruntime not installed")
onnx = pytest.importorskip("onnx", reason="reference unavailable: onnx not installed")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from glassquant.dialects import onnx as dialect  # noqa: E402
from glassquant.dialects._base import accumulate  # noqa: E402
from glassquant.floatops import f32, fma_f32  # noqa: E402
from glassquant.interop import onnxruntime as gox  # noqa: E402
from glassquant.nn.conv import QuantConv2d  # noqa: E402
from glassquant.nn.linear import DynamicQuantLinear, QuantLinear  # noqa: E402
from glassquant.rounding import round_half_away  # noqa: E402
from glassquant.scheme import QScheme  # noqa: E402

from gq_testing import StaticCase, random_static_case  # noqa: E402

ONNX_TYPES = {torch.uint8: TensorProto.UINT8, torch.int8: TensorProto.INT8, torch.int32: TensorProto.INT32,
              torch.float32: TensorProto.FLOAT}


def run_op(op: str, feeds: dict[str, Tensor], consts: dict[str, Tensor], outputs: list[torch.dtype],
           **attrs) -> list[Tensor]:
    """One ORT node: ``feeds`` are graph inputs, ``consts`` initializers, in the order given."""
    names = list(feeds) + list(consts)
    ins = [helper.make_tensor_value_info(k, ONNX_TYPES[v.dtype], list(v.shape)) for k, v in feeds.items()]
    outs = [helper.make_tensor_value_info(f"y{i}", ONNX_TYPES[d], None) for i, d in enumerate(outputs)]
    inits = [numpy_helper.from_array(v.numpy(), k) for k, v in consts.items()]
    graph = helper.make_graph([helper.make_node(op, names, [o.name for o in outs], **attrs)], "op", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    res = gox.session(model).run(None, {k: v.numpy() for k, v in feeds.items()})
    return [torch.from_numpy(np.asarray(r)) for r in res]


def near_ties(g: torch.Generator, scale: Tensor, shape: tuple[int, ...], j_max: int = 300) -> Tensor:
    """float32 values within 3 ulps of ``(j + 0.5) * scale`` (``scale`` broadcast to ``shape``)."""
    j = torch.randint(-j_max, j_max, shape, generator=g).to(torch.float64)
    base = f32((j + 0.5) * scale.to(torch.float64))
    return (base.view(torch.int32) + torch.randint(-3, 4, shape, generator=g, dtype=torch.int32)).view(torch.float32)


# ---------------------------------------------------------------- QuantizeLinear / DequantizeLinear

def quantize_cases(g: torch.Generator):
    """``(x, scale, zero_point, dtype, axis)``: random, near ties, exact ties, saturation, per axis."""
    for dtype, zps in ((torch.uint8, (0, 255, 11, 128)), (torch.int8, (-128, 127, 11, -3))):
        for zp in zps:
            s = f32(torch.rand((), generator=g) * 0.5 + 1e-3)
            yield torch.randn(4000, generator=g) * 40, s, zp, dtype, None
            yield near_ties(g, s, (6000,)), s, zp, dtype, None
            pow2 = torch.tensor(2.0 ** -int(torch.randint(0, 6, (1,), generator=g)))
            ties = (torch.randint(-300, 300, (3000,), generator=g) + 0.5) * pow2
            yield ties.float(), pow2.float(), zp, dtype, None  # exact .5 ties
            yield torch.tensor([3e38, -3e38, 1e9, -1e9, 0.0, -0.0, 1e-30]), s, zp, dtype, None
    for axis, shape in ((0, (48, 300)), (1, (300, 48)), (1, (6, 48, 40))):
        s = f32(torch.rand(48, generator=g) * 0.3 + 1e-3)
        zp = torch.randint(-128, 128, (48,), generator=g).to(torch.int8)
        sb = s.reshape([-1 if i == axis else 1 for i in range(len(shape))]).expand(shape)
        yield near_ties(g, sb, shape), s, zp, torch.int8, axis
        yield torch.randn(shape, generator=g) * 30, s, zp, torch.int8, axis


def _bcast(p: Tensor | int, x: Tensor, axis: int | None) -> Tensor:
    p = torch.as_tensor(p)
    return p if axis is None else p.reshape([-1 if i == axis else 1 for i in range(x.dim())])


def ort_quantize(x: Tensor, s: Tensor, zp: Tensor | int, dtype: torch.dtype, axis: int | None) -> Tensor:
    attrs = {} if axis is None else {"axis": axis}
    z = torch.as_tensor(zp).to(dtype)
    return run_op("QuantizeLinear", {"x": x.float()}, {"s": s.float(), "z": z}, [dtype], **attrs)[0]


QUANTIZE_MUTANTS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "multiply by f32(1/scale)": lambda x, s, z: torch.round(x * (f32(1.0) / s)).double() + z,
    "zero point before rounding (PyTorch)": lambda x, s, z: torch.round(x / s + z.float()).double(),
    "float64 division": lambda x, s, z: torch.round(x.double() / s.double()) + z,
    "ties away from zero": lambda x, s, z: round_half_away(x / s).double() + z,
}


def test_quantize_linear_bit_exact() -> None:
    g = torch.Generator().manual_seed(0)
    compared, mismatches, mutant_misses = 0, 0, dict.fromkeys(QUANTIZE_MUTANTS, 0)
    for x, s, zp, dtype, axis in quantize_cases(g):
        ref = ort_quantize(x, s, zp, dtype, axis)
        got = dialect.quantize(x, s, zp, dtype, axis=axis)
        assert got.dtype == ref.dtype == dtype
        compared += ref.numel()
        mismatches += int((got != ref).sum())
        qmin, qmax = (0, 255) if dtype == torch.uint8 else (-128, 127)
        for name, rule in QUANTIZE_MUTANTS.items():
            v = rule(x, _bcast(s, x, axis), _bcast(zp, x, axis).double()).clamp(qmin, qmax)
            mutant_misses[name] += int((v.to(torch.int64) != ref.to(torch.int64)).sum())
    assert compared >= 100_000
    assert mismatches == 0
    assert all(n > 50 for n in mutant_misses.values()), mutant_misses


def test_quantize_linear_examples() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    ref = ort_quantize(x, torch.tensor(1.0), 11, torch.uint8, None)
    assert ref.tolist() == [11, 13, 13, 11, 9, 9]  # rne, then + zp (PyTorch gives 12, 12, 14, 10, 10, 8)
    assert torch.equal(dialect.quantize(x, 1.0, 11, torch.uint8), ref)


def test_dequantize_linear_bit_exact() -> None:
    g = torch.Generator().manual_seed(1)
    compared = mismatches = mutant = 0
    for dtype, lo, hi in ((torch.uint8, 0, 256), (torch.int8, -128, 128)):
        for axis in (None, 0, 1):
            q = torch.randint(lo, hi, (200, 300), generator=g).to(dtype)
            n = 1 if axis is None else q.shape[axis]
            s = f32(torch.rand(n, generator=g) * 0.5 + 1e-4)
            zp = torch.randint(lo, hi, (n,), generator=g).to(dtype)
            zp[0] = lo
            s_arg, z_arg = (s[0], zp[0]) if axis is None else (s, zp)
            ref = run_op("DequantizeLinear", {"q": q}, {"s": s_arg, "z": z_arg}, [torch.float32],
                         **({} if axis is None else {"axis": axis}))[0]
            got = dialect.dequantize(q, s_arg, z_arg, axis=axis)
            compared += ref.numel()
            mismatches += int((got != ref).sum())
            sb, zb = _bcast(s_arg, q, axis), _bcast(z_arg, q, axis).float()
            mutant += int(((q.float() * sb - zb * sb) != ref).sum())  # scale first, then subtract
    assert compared >= 100_000 and mismatches == 0
    assert mutant > 1_000


# ---------------------------------------------------------------- DynamicQuantizeLinear

def dynamic_inputs(g: torch.Generator) -> list[Tensor]:
    """Ordinary, one-signed, constant, zero, tiny, huge tensors, and zero-point ties: with
    ``scale = 2**-4`` and ``lo = -(j + 0.5) * scale`` the zero point is exactly ``j + 0.5``."""
    xs = [torch.randn(60, 50, generator=g) * k + o for k in (1.0, 1e-3, 1e4, 30.0) for o in (0.0, 3.0, -3.0)]
    xs += [torch.zeros(10, 10), torch.full((10, 10), 2.5), torch.full((10, 10), -2.5), torch.rand(50, 60, generator=g),
           -torch.rand(50, 60, generator=g), torch.randn(40, 40, generator=g) * 1e-30]
    for j in range(0, 255, 5):
        s = 2.0**-4
        lo = -(j + 0.5) * s
        x = lo + torch.rand(30, 60, generator=g) * 255 * s
        x[0, 0], x[0, 1] = lo, lo + 255 * s
        xs.append(x)
    return xs


def dql_qparams(x: Tensor, mutant: str = "") -> tuple[float, int]:
    """DynamicQuantizeLinear's qparams written out here (float32 steps), with one rule optionally changed."""
    lo, hi = f32(min(float(x.min()), 0.0)), f32(max(float(x.max()), 0.0))
    if hi == lo:
        scale = f32(torch.finfo(torch.float32).eps) if mutant == "zero range -> eps (torch.ao)" else f32(1.0)
    elif mutant == "scale times f32(1/255)":
        scale = (hi - lo) * f32(1 / 255)
    else:
        scale = (hi - lo) / f32(255.0)
    initial = (f32(0.0) - lo / scale).clamp(0, 255)
    zp = round_half_away(initial) if mutant == "zero point ties away from zero" else torch.round(initial)
    return float(scale), int(zp)


DQL_MUTANTS = ["zero point ties away from zero", "scale times f32(1/255)", "zero range -> eps (torch.ao)"]


def test_dynamic_quantize_linear_bit_exact() -> None:
    g = torch.Generator().manual_seed(2)
    compared = mismatches = 0
    mutant_misses: dict[str, int] = {}
    for x in dynamic_inputs(g):
        y, s, z = run_op("DynamicQuantizeLinear", {"x": x}, {}, [torch.uint8, torch.float32, torch.uint8])
        got, scale, zp = dialect.quantize_activation(x)
        assert torch.equal(got, y) and scale == float(s) and zp == int(z), (x.min(), x.max())
        compared += y.numel()
        mismatches += int((got != y).sum())
        assert dql_qparams(x) == (float(s), int(z))
        for name in DQL_MUTANTS:
            mutant_misses[name] = mutant_misses.get(name, 0) + int(dql_qparams(x, name) != (float(s), int(z)))
    assert compared >= 100_000 and mismatches == 0
    assert all(n >= 1 for n in mutant_misses.values()), mutant_misses


# ---------------------------------------------------------------- MatMulInteger

def test_matmul_integer_exact() -> None:
    g = torch.Generator().manual_seed(3)
    compared = mismatches = float_misses = 0
    for m, k, n, full in ((300, 64, 256, False), (4, 4096, 512, True), (64, 1000, 256, True), (200, 7, 33, False)):
        if full:
            x = (torch.randint(0, 2, (m, k), generator=g) * 255).to(torch.uint8)
            w = torch.where(torch.randint(0, 2, (k, n), generator=g) == 1, 127, -128).to(torch.int8)
        else:
            x = torch.randint(0, 256, (m, k), generator=g, dtype=torch.uint8)
            w = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
        zx = torch.tensor(0 if full else int(torch.randint(0, 256, (1,), generator=g)), dtype=torch.uint8)
        zw = torch.randint(-128, 128, (n,), generator=g, dtype=torch.int8)
        (ref,) = run_op("MatMulInteger", {"x": x}, {"w": w, "zx": zx, "zw": zw}, [torch.int32])
        acc = dialect.accumulate(x, int(zx), w.T.contiguous(), zw.to(torch.int32))  # (M, K) @ (K, N) -> (M, N)
        compared += ref.numel()
        mismatches += int((acc != ref.to(torch.int64)).sum())
        acc_f32 = (x.float() - float(zx)) @ (w.float() - zw.float())  # a float32 accumulator rounds past 2**24
        float_misses += int((acc_f32.to(torch.int64) != ref.to(torch.int64)).sum())
    assert compared >= 100_000 and mismatches == 0
    assert float_misses > 1_000


# ---------------------------------------------------------------- QGemm / QLinearMatMul (static Linear)

def _multiplier_f64(sx: float, sw: Tensor, sy: float) -> Tensor:
    return f32(float(f32(sx)) * sw.double() / float(f32(sy)))


def _multiplier_rcp(sx: float, sw: Tensor, sy: float) -> Tensor:
    return (f32(sx) * sw.float()) * (f32(1.0) / f32(sy))


def dyadic_scales(g: torch.Generator, nsc: int, per_channel: bool) -> tuple[float, float, Tensor]:
    """``(sx, sy, w_scale (nsc,))`` with ORT's multiplier ``f32(f32(sx*sw)/sy)`` a few-bit dyadic
    ``odd * 2**-e`` per channel (then ``f32(acc + bias_q) * M`` is exact and about one output in ten
    with small integers an exact .5 tie): weight scales searched among float32 neighbours, preferring
    those where the float64 and the reciprocal formulas give another multiplier (per tensor, ``sy`` is
    redrawn until both do)."""
    sx = float(f32(torch.rand((), generator=g) * 0.1 + 1e-3))
    d = (2 * torch.randint(0, 4, (nsc,), generator=g) + 1).double() * 2.0 ** -torch.randint(3, 7, (nsc,), generator=g)
    for _ in range(100):
        sy = float(f32(torch.rand((), generator=g) * 0.01 + 1e-3))
        est = f32(d * sy / sx)  # (nsc,)
        cands = (est.view(torch.int32).reshape(1, -1) + torch.arange(-64, 65, dtype=torch.int32).reshape(-1, 1)
                 ).view(torch.float32)  # (129, nsc)
        exact = (f32(sx) * cands) / f32(sy) == f32(d)
        differs = ((_multiplier_f64(sx, cands, sy) != f32(d)).int()
                   + (_multiplier_rcp(sx, cands, sy) != f32(d)).int())
        score = torch.where(exact, 1 + differs, torch.zeros_like(differs))  # (129, nsc)
        if per_channel or int(score.max()) == 3:
            break
    return sx, sy, cands[score.argmax(dim=0), torch.arange(nsc)]


def tie_bias(g: torch.Generator, x_scale: float, w_scale: Tensor, n: int) -> Tensor:
    """float32 biases within an ulp of ``(j + 0.5) * f32(sx*sw)``: float32 and float64 bias divisions disagree."""
    bias_scale = f32(x_scale) * w_scale.expand(n)
    b = f32((torch.randint(-40, 40, (n,), generator=g).double() + 0.5) * bias_scale.double())
    return (b.view(torch.int32) + torch.randint(-1, 2, (n,), generator=g, dtype=torch.int32)).view(torch.float32)


def dyadic_case(g: torch.Generator, m: int, k: int, n: int, per_channel: bool, bias: bool = True) -> StaticCase:
    """Small integers (``|x - zx|, |w| <= 3``), ``dyadic_scales`` and ``tie_bias``."""
    zx = int(torch.randint(3, 253, (1,), generator=g))
    x_q = (zx + torch.randint(-3, 4, (m, k), generator=g)).to(torch.uint8)
    w_q = torch.randint(-3, 4, (n, k), generator=g, dtype=torch.int8)
    nsc = n if per_channel else 1
    sx, sy, w_scale = dyadic_scales(g, nsc, per_channel)
    zy = int(torch.randint(0, 256, (1,), generator=g))
    b = tie_bias(g, sx, w_scale, n) if bias else None
    return StaticCase(x_q, sx, zx, w_q, w_scale, torch.zeros(nsc, dtype=torch.int32), b, sy, zy)


#: (M, K, N, kind): random, full (extreme integers), pow2 and small (power-of-two scales, exact
#: ties), dyadic (searched scales, see dyadic_case), nobias (QLinearMatMul).
STATIC_SHAPES = [(300, 64, 256, "random"), (2, 4096, 512, "full"), (64, 2048, 64, "full"), (200, 256, 128, "pow2"),
                 (256, 64, 256, "dyadic"), (128, 64, 128, "dyadic"), (1, 1, 1, "random"), (17, 3, 5, "random"),
                 (33, 100, 200, "nobias"), (256, 16, 64, "small"), (100, 64, 100, "dyadic-nobias")]


def static_cases(per_channel: bool, seed: int) -> list[StaticCase]:
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i, (m, k, n, kind) in enumerate(STATIC_SHAPES):
        if kind.startswith("dyadic"):
            c = dyadic_case(g, m, k, n, per_channel, bias=kind == "dyadic")
        else:
            c = random_static_case(g, m, k, n, per_channel=per_channel, reduce_range=i % 2 == 1,
                                   full_range=kind == "full", pow2_scales=kind in ("pow2", "small"),
                                   small=kind == "small")
            if kind == "nobias":
                c.bias = None
            if kind in ("random", "pow2", "nobias") and i % 3:  # zero points at the ends of the grid
                c.x_zero_point, c.y_zero_point = (0, 255) if i % 3 == 1 else (255, 0)
                c.x_q = torch.randint(0, 256, c.x_q.shape, generator=g, dtype=torch.uint8)
        c.relu = i % 4 == 3
        cases.append(c)
    return cases


def as_layer(c: StaticCase) -> QuantLinear:
    return QuantLinear(c.w_q, c.w_scale, c.w_zero_point, c.bias, c.x_scale, c.x_zero_point, c.y_scale,
                       c.y_zero_point, relu=c.relu, check_overflow=False)


def dialect_linear(c: StaticCase) -> Tensor:
    return dialect.linear(c.x_q, c.x_scale, c.x_zero_point, c.w_q, c.w_scale_arg(), c.w_zero_point, c.bias,
                          c.y_scale, c.y_zero_point, relu=c.relu)


def mutant_linear(c: StaticCase, rule: str) -> Tensor:
    """The onnx dialect's static Linear with one rule replaced (see STATIC_MUTANTS)."""
    acc = accumulate(c.x_q, c.x_zero_point, c.w_q, c.w_zero_point)
    n = acc.shape[1]
    sw = c.w_scale.expand(n)
    mult = {"multiplier in float64": _multiplier_f64(c.x_scale, sw, c.y_scale),
            "multiplier with f32(1/sy)": _multiplier_rcp(c.x_scale, sw, c.y_scale)
            }.get(rule, dialect.multiplier(c.x_scale, sw, c.y_scale, n))
    bias_scale = f32(c.x_scale) * sw
    v = f32(acc)
    if c.bias is not None:
        if rule == "float bias folded (fbgemm)":
            v = v + f32(c.bias) / bias_scale
        elif rule == "bias_q by float32 division":
            v = f32(acc + torch.round(f32(c.bias) / bias_scale).long())
        else:
            v = f32(acc + dialect.quantize_bias(c.bias, c.x_scale, sw))
    pre = v * mult
    r = round_half_away(pre) if rule == "ties away from zero" else torch.round(pre)
    return (r.double() + c.y_zero_point).clamp(c.y_zero_point if c.relu else 0, 255).to(torch.uint8)


STATIC_MUTANTS = ["ties away from zero", "multiplier in float64", "multiplier with f32(1/sy)",
                  "float bias folded (fbgemm)", "bias_q by float32 division"]


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_column"])
def test_static_linear_bit_exact(per_channel: bool) -> None:
    stats = {"outputs": 0, "ties": 0} | {f: 0 for f in gox.FORMS} | dict.fromkeys(STATIC_MUTANTS, 0)
    for c in static_cases(per_channel, seed=10 + per_channel):
        layer = as_layer(c)
        got = dialect_linear(c)
        acc = accumulate(c.x_q, c.x_zero_point, c.w_q, c.w_zero_point)
        pre = dialect.prerounding(acc, c.x_scale, c.w_scale_arg(), c.bias, c.y_scale)
        stats["ties"] += int((pre - torch.floor(pre) == 0.5).sum())
        for form in gox.FORMS:
            ref = gox.run_layer(layer, c.x_q, form)
            assert ref.dtype == got.dtype == torch.uint8
            stats[form] += int((ref != got).sum())
        stats["outputs"] += got.numel()
        for rule in STATIC_MUTANTS:
            stats[rule] += int((mutant_linear(c, rule) != ref).sum())
    assert stats["outputs"] >= 100_000, stats
    assert stats["ties"] >= 3_000, stats
    assert stats["qoperator"] == 0 and stats["qdq"] == 0, stats
    assert all(stats[rule] > 0 for rule in STATIC_MUTANTS), str(stats)


def test_qdq_runs_in_float_below_extended() -> None:
    """ORT fuses DQ -> Gemm -> Q into QGemm from ORT_ENABLE_EXTENDED on (the default is ALL); at
    BASIC or DISABLE the QDQ graph runs a float32 Gemm and misses the dialect on tie-heavy inputs."""
    cases = [c for pc in (False, True) for c in static_cases(pc, seed=20 + pc) if c.w_q.abs().max() <= 3]
    misses = {}
    for level in gox.LEVELS:
        misses[level] = sum(int((gox.run_layer(as_layer(c), c.x_q, "qdq", level) != dialect_linear(c)).sum())
                            for c in cases)
        ops = gox.optimized_op_types(gox.layer_to_onnx(as_layer(cases[0]), "qdq"), level)
        assert ("QGemm" in ops) == (level in ("extended", "all")), (level, ops)
    assert misses["extended"] == misses["all"] == 0, misses
    assert misses["basic"] > 100 and misses["disable"] > 100, misses


# ---------------------------------------------------------------- quantize_dynamic's graph

def dynamic_linear_cases(g: torch.Generator):
    """``(x, layer)``: dynamic_inputs (ties in the activation grid included), per-tensor and per-channel
    int8 weights, with and without bias, ReLU on some."""
    for i, x in enumerate(dynamic_inputs(g)[::2]):
        k = x.shape[1]
        n = int(torch.randint(16, 200, (1,), generator=g))
        per_channel = i % 2 == 1
        w_q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
        nsc = n if per_channel else 1
        w_scale = f32(torch.rand(nsc, generator=g) * 0.02 + 1e-4)
        bias = None if i % 5 == 4 else torch.randn(n, generator=g)
        yield x, DynamicQuantLinear(w_q, w_scale, torch.zeros(nsc, dtype=torch.int32), bias, relu=i % 3 == 2,
                                    name=f"dynamic{i}")


def test_dynamic_linear_bit_exact() -> None:
    g = torch.Generator().manual_seed(4)
    outputs = mismatches = fma_misses = reduce_misses = 0
    for x, layer in dynamic_linear_cases(g):
        ref = gox.run_layer(layer, x)
        w_scale = layer.w_scale if layer.w_scale.numel() > 1 else float(layer.w_scale)
        got = dialect.linear_dynamic(x, layer.w_q, w_scale, layer.w_zero_point, layer.bias, relu=layer.relu)
        assert ref.dtype == got.dtype == torch.float32
        outputs += ref.numel()
        mismatches += int((ref != got).sum())
        x_q, sx, zx = dialect.quantize_activation(x)
        acc = accumulate(x_q, zx, layer.w_q, layer.w_zero_point)
        if layer.bias is not None and not layer.relu:  # fbgemm's fused multiply-add instead of Mul, Add
            fma = fma_f32(f32(acc), f32(sx) * layer.w_scale, layer.bias)
            fma_misses += int((fma != ref).sum())
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)  # 7-bit activations instead of 8
        s7 = float(f32(hi - lo) / 127) if hi > lo else 1.0
        z7 = int(torch.round(torch.tensor(-lo / s7).clamp(0, 127)))
        x7 = dialect.quantize(x, s7, z7, torch.uint8).clamp_max(127)
        y7 = dialect.dynamic_output(accumulate(x7, z7, layer.w_q, layer.w_zero_point), s7, w_scale, layer.bias,
                                    layer.relu)
        reduce_misses += int((y7 != ref).sum())
    assert outputs >= 100_000 and mismatches == 0
    assert fma_misses > 1_000 and reduce_misses > 10_000


# ---------------------------------------------------------------- QLinearConv

#: (N, C_in, C_out, H, W, k, stride, padding, dilation, groups, kind)
CONV_SHAPES = [(4, 16, 32, 12, 12, 3, 1, 1, 1, 1, "random"), (2, 16, 32, 12, 11, 3, 2, 1, 1, 1, "full"),
               (2, 8, 64, 11, 11, 5, 1, 2, 1, 1, "dyadic"), (4, 32, 32, 10, 10, 3, 1, 1, 1, 32, "full"),
               (4, 32, 64, 10, 10, 3, 2, 1, 1, 32, "dyadic"), (2, 16, 16, 14, 14, 3, 1, 2, 2, 4, "random"),
               (2, 24, 48, 9, 9, 1, 1, 0, 1, 1, "dyadic"), (1, 3, 16, 16, 16, 7, 2, 3, 1, 1, "random"),
               (3, 16, 32, 8, 8, 3, 1, 1, 1, 1, "nobias")]


def conv_case(g: torch.Generator, shape: tuple, per_channel: bool, relu: bool) -> tuple[Tensor, QuantConv2d]:
    """An input and a QuantConv2d: random, full-range (0/255 inputs, -128/127 weights) or dyadic (small
    integers, ``dyadic_scales``, ``tie_bias``; ``nobias`` is dyadic without a bias)."""
    n, c_in, c_out, h, w, k, stride, pad, dil, groups, kind = shape
    nsc = c_out if per_channel else 1
    geometry = {"stride": stride, "padding": pad, "dilation": dil, "groups": groups, "relu": relu,
                "check_overflow": False}
    if kind in ("dyadic", "nobias"):
        zx = int(torch.randint(3, 253, (1,), generator=g))
        x_q = (zx + torch.randint(-3, 4, (n, c_in, h, w), generator=g)).to(torch.uint8)
        w_q = torch.randint(-3, 4, (c_out, c_in // groups, k, k), generator=g, dtype=torch.int8)
        sx, sy, w_scale = dyadic_scales(g, nsc, per_channel)
        bias = tie_bias(g, sx, w_scale, c_out) if kind == "dyadic" else None
        zy = int(torch.randint(0, 256, (1,), generator=g))
        return x_q, QuantConv2d(w_q, w_scale, torch.zeros(nsc), bias, sx, zx, sy, zy, **geometry)
    if kind == "full":
        x_q = (torch.randint(0, 2, (n, c_in, h, w), generator=g) * 255).to(torch.uint8)
        w_q = torch.where(torch.randint(0, 2, (c_out, c_in // groups, k, k), generator=g) == 1, 127, -128)
        w_q = w_q.to(torch.int8)
    else:
        x_q = torch.randint(0, 256, (n, c_in, h, w), generator=g, dtype=torch.uint8)
        w_q = torch.randint(-128, 128, (c_out, c_in // groups, k, k), generator=g, dtype=torch.int8)
    zx = int(torch.randint(0, 256, (1,), generator=g))
    sx, w_scale = float(torch.rand(1, generator=g) * 0.1 + 1e-3), f32(torch.rand(nsc, generator=g) * 0.02 + 1e-4)
    probe = QuantConv2d(w_q, w_scale, torch.zeros(nsc), None, sx, zx, 1.0, 0, **geometry)
    span = float(probe.accumulate(x_q, fast=False).abs().max()) * sx * float(w_scale.max())
    bias = torch.randn(c_out, generator=g) * span / 4
    sy = span / float(torch.randint(30, 250, (1,), generator=g))
    zy = 0 if relu else int(torch.randint(0, 256, (1,), generator=g))
    return x_q, QuantConv2d(w_q, w_scale, torch.zeros(nsc), bias, sx, zx, sy, zy, **geometry)


def conv_zero_padded(x_q: Tensor, layer: QuantConv2d) -> Tensor:
    """Mutant: pad with integer 0 instead of the zero point (real -zx * sx instead of real 0)."""
    (ph, pw) = layer.padding
    x = F.pad(x_q.double(), (pw, pw, ph, ph), value=0.0) - layer.x_zero_point
    acc = F.conv2d(x, layer.w_q.double(), stride=layer.stride, dilation=layer.dilation, groups=layer.groups)
    w_scale = layer.w_scale if layer.w_scale.numel() > 1 else float(layer.w_scale)
    y = dialect.requantize(acc.permute(0, 2, 3, 1).reshape(-1, layer.out_channels).round().long(), layer.x_scale,
                           w_scale, layer.bias, layer.y_scale, layer.y_zero_point, layer.relu)
    return y.reshape(acc.shape[0], *acc.shape[2:], -1).permute(0, 3, 1, 2)


def test_qlinearconv_bit_exact() -> None:
    g = torch.Generator().manual_seed(5)
    stats = dict.fromkeys((*gox.FORMS, "outputs", "ties away from zero", "padded with integer 0"), 0)
    for per_channel in (False, True):
        for i, shape in enumerate(CONV_SHAPES):
            x_q, layer = conv_case(g, shape, per_channel, relu=i % 3 == 2)
            got = gox.onnx_integers(layer, x_q)  # exact accumulator + dialect.requantize
            for form in gox.FORMS:
                ref = gox.run_layer(layer, x_q, form)
                assert ref.shape == got.shape and ref.dtype == torch.uint8
                stats[form] += int((ref != got).sum())
            stats["outputs"] += ref.numel()
            acc = layer.accumulate(x_q, fast=False)  # (N * OH * OW, C_out)
            w_scale = layer.w_scale if layer.w_scale.numel() > 1 else float(layer.w_scale)
            pre = dialect.prerounding(acc, layer.x_scale, w_scale, layer.bias, layer.y_scale)
            away = (round_half_away(pre).double() + layer.y_zero_point).clamp(
                layer.y_zero_point if layer.relu else 0, 255).to(torch.uint8)
            away = away.reshape(ref.shape[0], *ref.shape[2:], -1).permute(0, 3, 1, 2)
            stats["ties away from zero"] += int((away != ref).sum())
            stats["padded with integer 0"] += int((conv_zero_padded(x_q, layer) != ref).sum())
    assert stats["outputs"] >= 100_000, stats
    assert stats["qoperator"] == 0 and stats["qdq"] == 0, str(stats)
    assert stats["ties away from zero"] > 100 and stats["padded with integer 0"] > 1_000, str(stats)


# ---------------------------------------------------------------- onnxruntime.quantization's own models

K_TOOL, N_TOOL = 64, 32


def tie_weights(g: torch.Generator, per_channel: bool) -> Tensor:
    """float32 weights (N, K) within 2 ulps of ``(j + 0.5) * scale``, ``scale = f32(2 * amax / 254)``,
    with ``amax`` set by one entry per row (per channel, the last row all zeros) or per tensor."""
    amax = torch.rand(N_TOOL if per_channel else 1, generator=g).double() * 0.5 + 0.1
    amax = f32(amax).double()
    scale = f32(2 * amax / 254).double().reshape(-1, 1)
    j = torch.randint(-127, 127, (N_TOOL, K_TOOL), generator=g).double()
    w = f32((j + 0.5) * scale).clamp(-amax.reshape(-1, 1).float(), amax.reshape(-1, 1).float())
    w = (w.view(torch.int32) + torch.randint(-2, 3, w.shape, generator=g, dtype=torch.int32)).view(torch.float32)
    w[:, 0] = amax.float().reshape(-1).expand(N_TOOL) * torch.where(torch.arange(N_TOOL) % 2 == 0, 1.0, -1.0)
    if per_channel:
        w[-1] = 0.0  # a zero channel: scale 1.0, zero point 0 (the zero-range rule)
    return w


def weight_scheme(per_channel: bool) -> QScheme:
    """The tool's default weights: int8 symmetric, per output channel or per tensor."""
    return QScheme(bits=8, signed=True, symmetric=True, axis=0 if per_channel else None)


def float_model(op: str, w: Tensor, b: Tensor) -> onnx.ModelProto:
    """``y = x @ w.T + b`` as Gemm(transB=1), or ``y = x @ w.T`` as MatMul (no bias)."""
    if op == "Gemm":
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
        inits = [numpy_helper.from_array(w.numpy(), "w"), numpy_helper.from_array(b.numpy(), "b")]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [numpy_helper.from_array(w.T.contiguous().numpy(), "w")]
    graph = helper.make_graph(nodes, "float", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K_TOOL])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N_TOOL])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _inits(model: onnx.ModelProto) -> dict[str, Tensor]:
    return {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}


def _weight_of(inits: dict[str, Tensor], op: str) -> tuple[Tensor, Tensor, Tensor]:
    """The tool's ``(w_q (N, K), scale, zero_point)`` whatever its naming and layout."""
    w_q = next(v for k, v in inits.items() if k.startswith("w") and k.endswith("_quantized"))
    scale = next(v for k, v in inits.items() if k.startswith("w") and k.endswith("_scale"))
    zp = next(v for k, v in inits.items() if k.startswith("w") and k.endswith("_zero_point"))
    return (w_q if w_q.shape == (N_TOOL, K_TOOL) else w_q.T), scale.reshape(-1), zp.reshape(-1)


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_quantize_static_model_reproduced(tmp_path, op: str, per_channel: bool, fmt: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    g = torch.Generator().manual_seed(6 + per_channel)
    calib = [torch.randn(50, K_TOOL, generator=g) * 2 for _ in range(4)]
    w = tie_weights(g, per_channel)
    # the bias on ties of its grid, with x_scale and w_scale from the rules under test
    x_scale, _ = dialect.choose_qparams_static(min(float(c.min()) for c in calib),
                                               max(float(c.max()) for c in calib), 0, 255)
    w_scale_ours = dialect.quantize_weight(w, weight_scheme(per_channel))[1]
    b = tie_bias(g, float(x_scale), w_scale_ours, N_TOOL)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calib)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"x": x.numpy()}

    onnx.save(float_model(op, w, b), tmp_path / "float.onnx")
    quantize_static(tmp_path / "float.onnx", tmp_path / "q.onnx", Reader(), quant_format=getattr(QuantFormat, fmt),
                    per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    model = onnx.load(tmp_path / "q.onnx")
    inits = _inits(model)
    # 1. the tool's initializers from our rules
    w_q, w_scale, w_zp = dialect.quantize_weight(w, weight_scheme(per_channel))
    ref_w_q, ref_w_scale, ref_w_zp = _weight_of(inits, op)
    assert torch.equal(w_q, ref_w_q) and torch.equal(w_scale, ref_w_scale) and torch.equal(w_zp, ref_w_zp.int())
    assert torch.equal(inits["x_scale"], f32(x_scale).reshape(())) and int(inits["x_zero_point"]) == int(
        dialect.choose_qparams_static(min(float(c.min()) for c in calib), max(float(c.max()) for c in calib),
                                      0, 255)[1])
    y_float = torch.cat([torch.from_numpy(gox.session(float_model(op, w, b)).run(None, {"x": c.numpy()})[0])
                         for c in calib])
    y_scale, y_zp = dialect.choose_qparams_static(float(y_float.min()), float(y_float.max()), 0, 255)
    assert float(inits["y_scale"]) == float(y_scale) and int(inits["y_zero_point"]) == int(y_zp)
    if op == "Gemm":
        bias_q = dialect.quantize_bias(b, float(x_scale), w_scale)
        assert torch.equal(bias_q, inits["b_quantized"].to(torch.int64))
        bias_scale = f32(x_scale) * w_scale.expand(N_TOOL)
        for wrong in (torch.round(b * (1 / bias_scale)), torch.round(b / bias_scale)):  # reciprocal, float32
            assert not torch.equal(wrong.long(), bias_q)
    assert not torch.equal(torch.round(w * (1 / w_scale.reshape(-1, 1))).to(torch.int8), w_q)  # nor for weights
    # 2. ORT's integers and floats on held-out and out-of-range inputs
    y_q_name = next(n for n in model.graph.node if n.output[0] == "y").input[0]
    model.graph.output.append(helper.make_tensor_value_info(y_q_name, TensorProto.UINT8, None))
    x = torch.cat([torch.randn(400, K_TOOL, generator=g) * 2, torch.randn(100, K_TOOL, generator=g) * 8])
    ref_y, ref_y_q = (torch.from_numpy(v) for v in gox.session(model).run(None, {"x": x.numpy()}))
    x_q = dialect.quantize(x, float(x_scale), int(inits["x_zero_point"]), torch.uint8)
    y_q = dialect.linear(x_q, float(x_scale), int(inits["x_zero_point"]), w_q,
                         w_scale if per_channel else float(w_scale), w_zp, None if op == "MatMul" else b,
                         float(y_scale), int(y_zp))
    assert torch.equal(y_q, ref_y_q) and torch.equal(dialect.dequantize(y_q, float(y_scale), int(y_zp)), ref_y)
    assert y_q.numel() >= 16_000


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_quantize_dynamic_model_reproduced(tmp_path, op: str, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    g = torch.Generator().manual_seed(8 + per_channel)
    w, b = tie_weights(g, per_channel), torch.randn(N_TOOL, generator=g)
    onnx.save(float_model(op, w, b), tmp_path / "float.onnx")
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8,
                     per_channel=per_channel)
    model = onnx.load(tmp_path / "q.onnx")
    w_q, w_scale, w_zp = dialect.quantize_weight(w, weight_scheme(per_channel))
    ref_w_q, ref_w_scale, ref_w_zp = _weight_of(_inits(model), op)
    assert torch.equal(w_q, ref_w_q) and torch.equal(w_scale, ref_w_scale) and torch.equal(w_zp, ref_w_zp.int())
    sess = gox.session(model)
    outputs = mismatches = 0
    for x in dynamic_inputs(g)[:20]:
        x = x[:, :K_TOOL] if x.shape[1] >= K_TOOL else x.repeat(1, K_TOOL // x.shape[1] + 1)[:, :K_TOOL]
        ref = torch.from_numpy(sess.run(None, {"x": x.contiguous().numpy()})[0])
        got = dialect.linear_dynamic(x, w_q, w_scale if per_channel else float(w_scale), w_zp,
                                     b if op == "Gemm" else None)
        outputs += ref.numel()
        mismatches += int((ref != got).sum())
    assert outputs >= 25_000 and mismatches == 0
