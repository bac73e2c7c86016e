"""The tflite dialect against LiteRT 2.3's real interpreter, per op resolver, bit for bit.

FULLY_CONNECTED and CONV_2D models are written with the ``tflite`` flatbuffer package and run with
each resolver (``xnnpack`` = AUTO, ``reference`` = BUILTIN_REF, ``optimized`` =
BUILTIN_WITHOUT_DEFAULT_DELEGATES). Inputs: random; power-of-two scales with small integers (many
exact .5 ties); and adversarial ones, where the int32 bias of each column is re-chosen so that one
output sits exactly on, or within an ulp of, a rounding tie — with accumulators past 2**24 in half the
cases — *at a point where two candidate requantization rules disagree*. Every candidate rule
(written here independently of the dialect) other than the proven one must then miss outputs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import Tensor

pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert) is not installed")
pytest.importorskip("tflite", reason="the tflite flatbuffer package is not installed")

from glassquant.dialects import tflite as dialect
from glassquant.fixedpoint import (
    quantize_multiplier,
    requantize_double_rounding,
    requantize_single_rounding,
    rounding_right_shift,
    saturating_rounding_doubling_high_mul,
)
from glassquant.interop import litert

pytestmark = pytest.mark.usefixtures("one_thread")

KERNELS = ("xnnpack", "reference", "optimized")
F32 = np.float32
#: the five requantization families; the adversarial search favours telling these apart
FAMILIES = ("float64_half_away", "float32_half_even", "q31_half_up", "q31_gemmlowp", "q31_single")


# ----------------------------------------------------------------------------- candidate rules (independent)


def _m64(sx: float, sw: list[float], sy: float, f32_product: bool) -> Tensor:
    if f32_product:
        return torch.tensor([float(F32(F32(sx) * F32(s))) / float(F32(sy)) for s in sw], dtype=torch.float64)
    return torch.tensor([float(F32(sx)) * float(F32(s)) / float(F32(sy)) for s in sw], dtype=torch.float64)


def _away(v: Tensor) -> Tensor:
    a = v.abs()
    fl = torch.floor(a)
    return (torch.sign(v) * (fl + ((a - fl) >= 0.5).to(v.dtype))).to(torch.int64)


def _q31(sx: float, sw: list[float], sy: float, f32_product: bool) -> tuple[Tensor, Tensor]:
    pairs = [quantize_multiplier(float(m)) for m in _m64(sx, sw, sy, f32_product)]
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def candidates(acc: Tensor, sx: float, sw: list[float], sy: float) -> dict[str, Tensor]:
    """Every plausible requantization of acc (M, N) int64: ``r`` before the zero point."""
    sxf, syf = torch.tensor(F32(sx)), torch.tensor(F32(sy))
    swf = torch.tensor(np.asarray(sw, dtype=F32))
    out = {}
    for p in (False, True):
        tag = "/f32prod" if p else ""
        out["float64_half_away" + tag] = _away(acc.double() * _m64(sx, sw, sy, p))
        q, s = _q31(sx, sw, sy, p)
        out["q31_single" + tag] = requantize_single_rounding(acc, q, s.clamp(max=30))
        out["q31_gemmlowp" + tag] = requantize_double_rounding(acc, q, s)
        high = saturating_rounding_doubling_high_mul(acc << s.clamp(min=0), q)
        out["q31_half_up" + tag] = rounding_right_shift(high, (-s).clamp(min=0))
    scales = {"": (sxf * swf) / syf, "/sx*(sw/sy)": sxf * (swf / syf), "/(sx/sy)*sw": (sxf / syf) * swf,
              "/f32(m64)": _m64(sx, sw, sy, False).float()}
    for tag, scale in scales.items():
        out["float32_half_even" + tag] = torch.round(acc.float() * scale).to(torch.int64)
    return out


def truth(kernel: str, op: str, per_tensor: bool) -> str:
    """The candidate that LiteRT's kernel was found to use (what the dialect implements)."""
    rule = dialect.rule_of(kernel, op)
    return rule + ("/f32prod" if (kernel, op, per_tensor) == ("optimized", "fully_connected", True) else "")


# ----------------------------------------------------------------------------- adversarial biases


def adversarial_bias(base: Tensor, sx: float, sw: list[float], sy: float, zy: int, g: torch.Generator,
                     kmax: int = 20, window: int = 128) -> Tensor:
    """int32 biases (N,): column n's designated accumulator ``base[n] + bias[n]`` lands next to a tie
    ``(k + 0.5) / M`` at a point where candidate rules (a different pair per column) disagree."""
    n = base.numel()
    m = _m64(sx, sw, sy, False)
    k = (torch.randint(-kmax, kmax, (n,), generator=g).double() - zy).clamp(-120 - zy, 120 - zy)
    lim = torch.floor(2.0**30 * m) - 1  # keep every accumulator inside int32
    k = torch.maximum(torch.minimum(k, lim), -lim - 1)
    center = torch.round((k + 0.5) / m - base.double()).long()
    j = torch.arange(-window, window + 1)
    bias = (center[None, :] + j[:, None]).clamp(-(2**31) + 1, 2**31 - 1)  # (C, N)
    acc = base[None, :] + bias
    ok = acc.abs() < 2**31 - 1
    cands = candidates(torch.where(ok, acc, 0), sx, sw, sy)
    outs = torch.stack([(v + zy).clamp(-128, 127) for v in cands.values()])  # (R, C, N)
    names = list(cands)
    families = [names.index(f) for f in FAMILIES]
    pairs = torch.tensor(list(itertools.combinations(families, 2)) * 4
                         + list(itertools.combinations(range(len(names)), 2)))
    target = pairs[torch.randint(0, len(pairs), (n,), generator=g)]  # (N, 2)
    a = outs.gather(0, target[:, 0].expand(1, outs.shape[1], n))[0]
    b = outs.gather(0, target[:, 1].expand(1, outs.shape[1], n))[0]
    differ = (a != b) & ok
    anyd = (outs != outs[:1]).any(0) & ok
    score = torch.where(differ, 0, torch.where(anyd, 1, 2)) * (4 * window) + (j[:, None].abs())
    pick = score.argmin(0)
    return bias[pick, torch.arange(n)].to(torch.int32)


# ----------------------------------------------------------------------------- FULLY_CONNECTED


def fc_case(g: torch.Generator, kind: str, per_channel: bool, m: int, k: int, n: int) -> dict:
    """One FULLY_CONNECTED problem: int8 x, int8 w, int32 bias, scales, zero points."""
    zx = int(torch.randint(-128, 128, (1,), generator=g))
    nsc = n if per_channel else 1
    if kind == "full":  # extreme integers: the largest accumulators
        x = torch.where(torch.rand(m, k, generator=g) < 0.5, -128, 127).to(torch.int8)
        w = torch.where(torch.rand(n, k, generator=g) < 0.5, -127, 127).to(torch.int8)
    elif kind == "pow2":  # exact float steps, small integers: about half the outputs are exact ties
        x = (zx + torch.randint(-3, 4, (m, k), generator=g)).clamp(-128, 127).to(torch.int8)
        w = torch.randint(-3, 4, (n, k), generator=g, dtype=torch.int8)
    else:
        x = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
        w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    acc0 = (x.long() - zx) @ w.long().T  # (M, K) @ (K, N) -> (M, N)
    zy = int(torch.randint(-100, 100, (1,), generator=g))
    if kind == "pow2":
        sx = 2.0 ** -int(torch.randint(2, 8, (1,), generator=g))
        sw = torch.tensor([2.0 ** -int(torch.randint(2, 10, (1,), generator=g)) for _ in range(nsc)])
        sy = sx * float(sw.max()) * 2.0 ** int(torch.randint(1, 5, (1,), generator=g))
        bias = torch.randint(-300, 300, (n,), generator=g, dtype=torch.int32)
        return dict(x=x, w=w, zx=zx, sx=sx, sw=sw, sy=sy, zy=zy, bias=bias, acc0=acc0)
    sx = float(F32(float(torch.rand(1, generator=g)) * 0.1 + 1e-3))
    sw = (torch.rand(nsc, generator=g) * 0.02 + 1e-4).float()
    big = kind == "big"  # accumulators near 2**27: f32(acc) rounds to a multiple of 8 or 16
    if big:
        sy = sx * float(sw.max()) * 2.0**20 * (0.5 + float(torch.rand(1, generator=g)))
    else:
        sy = max(float(acc0.abs().max()), 1.0) * sx * float(sw.max()) / float(torch.randint(30, 250, (1,), generator=g))
    rows = torch.arange(n) % m
    if kind == "random":
        bias = torch.randint(-20000, 20000, (n,), generator=g, dtype=torch.int32)
    else:
        bias = adversarial_bias(acc0[rows, torch.arange(n)], sx, sw.tolist() * (n // nsc), sy, zy, g,
                                kmax=100 if big else 20)
    return dict(x=x, w=w, zx=zx, sx=sx, sw=sw, sy=sy, zy=zy, bias=bias, acc0=acc0)


FC_SUITE = [("random", 160, 300, 256), ("pow2", 80, 200, 256), ("adversarial", 64, 150, 320),
            ("big", 64, 120, 320), ("full", 16, 2048, 256), ("adversarial", 1, 60, 320), ("big", 3, 40, 320)]



@pytest.fixture(scope="module")
def fc_results() -> dict:
    """Run the FC suite once: per (kernel, weight scheme), outputs and mismatches of dialect and candidates."""
    g = torch.Generator().manual_seed(20)
    stats: dict = {}
    for per_channel in (False, True):
        for kind, m, k, n in FC_SUITE:
            c = fc_case(g, kind, per_channel, m, k, n)
            sw_arg = c["sw"] if per_channel else float(c["sw"])
            model = litert.fully_connected_model(c["w"], c["sw"], c["bias"], c["sx"], c["zx"], c["sy"], c["zy"],
                                                 relu=kind == "random", batch=m)
            acc = c["acc0"] + c["bias"].long()
            cands = candidates(acc, c["sx"], c["sw"].tolist() * (1 if per_channel else n), c["sy"])
            lo = max(-128, c["zy"]) if kind == "random" else -128
            for kernel in KERNELS:
                ref = torch.from_numpy(litert.run(model, [c["x"].numpy()], kernel)[0])
                got = dialect.linear(c["x"], c["sx"], c["zx"], c["w"], sw_arg, c["bias"], c["sy"], c["zy"],
                                     relu=kind == "random", kernel=kernel)
                s = stats.setdefault((kernel, per_channel), {"outputs": 0, "mismatches": 0, "cands": {}})
                s["outputs"] += ref.numel()
                s["mismatches"] += int((got != ref).sum())
                for name, r in cands.items():
                    e = (r + c["zy"]).clamp(lo, 127)
                    s["cands"][name] = s["cands"].get(name, 0) + int((e != ref.long()).sum())
    return stats


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_fully_connected_bit_exact(fc_results: dict, kernel: str, per_channel: bool) -> None:
    s = fc_results[(kernel, per_channel)]
    assert s["outputs"] >= 100_000
    assert s["mismatches"] == 0, s
    assert s["cands"][truth(kernel, "fully_connected", not per_channel)] == 0  # the independent formula agrees


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_fully_connected_mutants_fail(fc_results: dict, kernel: str, per_channel: bool) -> None:
    """Every other rule (rounding, multiplier product, float32 operation order) misses outputs."""
    s = fc_results[(kernel, per_channel)]["cands"]
    true = truth(kernel, "fully_connected", not per_channel)
    wrong = {name: miss for name, miss in s.items() if name != true}
    # per tensor, q31_*/f32prod and float32 orderings can coincide with the truth for every scale drawn;
    # the rounding families themselves must always be told apart, by many outputs.
    for family in FAMILIES:
        if not true.startswith(family):
            assert wrong[family] > 50, (family, wrong)
    assert all(miss > 0 for name, miss in wrong.items() if per_channel or "/" not in name or "/" in true), wrong


def test_fully_connected_multiplier_products_are_told_apart(fc_results: dict) -> None:
    """optimized per tensor takes sx*sw in float32 (GetQuantizedConvolutionMultipler), per channel in float64."""
    assert fc_results[("optimized", False)]["cands"]["q31_half_up"] > 0
    assert fc_results[("optimized", True)]["cands"]["q31_half_up/f32prod"] > 0
    assert fc_results[("reference", False)]["cands"]["float64_half_away/f32prod"] > 0
    assert fc_results[("xnnpack", True)]["cands"]["float32_half_even/sx*(sw/sy)"] > 0
    assert fc_results[("xnnpack", True)]["cands"]["float32_half_even/f32(m64)"] > 0


# ----------------------------------------------------------------------------- CONV_2D


@pytest.fixture(scope="module")
def conv_results() -> dict:
    g = torch.Generator().manual_seed(21)
    stats: dict = {}
    geometries = [((9, 9), (3, 3), (1, 1), "same", (1, 1)), ((10, 7), (3, 3), (2, 2), "same", (1, 1)),
                  ((9, 9), (5, 3), (1, 2), "valid", (1, 1)), ((11, 11), (3, 3), (1, 1), "valid", (2, 2)),
                  ((6, 6), (1, 1), (1, 1), "valid", (1, 1)), ((8, 8), (2, 2), (2, 1), "same", (1, 1))]
    for t, (hw, ks, stride, padding, dil) in enumerate(geometries * 2):
        per_channel, big = t % 2 == 0, t >= len(geometries)
        c_in, c_out = 8, 192
        x = torch.randint(-128, 128, (2, *hw, c_in), generator=g, dtype=torch.int8)
        w = torch.randint(-127, 128, (c_out, *ks, c_in), generator=g, dtype=torch.int8)
        zx = int(torch.randint(-128, 128, (1,), generator=g))
        sx = float(F32(float(torch.rand(1, generator=g)) * 0.1 + 1e-3))
        sw = (torch.rand(c_out if per_channel else 1, generator=g) * 0.02 + 1e-4).float()
        acc0 = dialect.conv_accumulate(x, zx, w, stride, padding, dil)
        sy = (sx * float(sw.max()) * 2.0**20 if big
              else float(acc0.abs().max()) * sx * float(sw.max()) / float(torch.randint(30, 250, (1,), generator=g)))
        zy = int(torch.randint(-100, 100, (1,), generator=g))
        rows = (torch.arange(c_out) * 7) % acc0.shape[0]
        swl = sw.tolist() * (1 if per_channel else c_out)
        bias = adversarial_bias(acc0[rows, torch.arange(c_out)], sx, swl, sy, zy, g, kmax=100 if big else 20)
        model = litert.conv2d_model(w, sw, bias, sx, zx, sy, zy, hw, stride, padding, dil, relu=t % 3 == 0, batch=2)
        cands = candidates(acc0 + bias.long(), sx, swl, sy)
        lo = max(-128, zy) if t % 3 == 0 else -128
        for kernel in KERNELS:
            ref = torch.from_numpy(litert.run(model, [x.numpy()], kernel)[0])
            got = dialect.conv2d(x, sx, zx, w, sw if per_channel else float(sw), bias, sy, zy, stride, padding, dil,
                                 relu=t % 3 == 0, kernel=kernel)
            s = stats.setdefault((kernel, per_channel), {"outputs": 0, "mismatches": 0, "cands": {}})
            s["outputs"] += ref.numel()
            s["mismatches"] += int((got != ref).sum())
            for name, r in cands.items():
                e = (r + zy).clamp(lo, 127).reshape(ref.shape)
                s["cands"][name] = s["cands"].get(name, 0) + int((e != ref.long()).sum())
    return stats


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_conv2d_bit_exact_and_mutants_fail(conv_results: dict, kernel: str, per_channel: bool) -> None:
    s = conv_results[(kernel, per_channel)]
    assert s["outputs"] >= 50_000
    assert s["mismatches"] == 0, s
    true = truth(kernel, "conv_2d", not per_channel)
    assert s["cands"][true] == 0
    for family in FAMILIES:
        if family != true:
            assert s["cands"][family] > 20, (family, s["cands"])
    if kernel != "xnnpack":  # conv takes the float64 product even per tensor, unlike the optimized FC
        assert s["cands"][true + "/f32prod"] > 0


# ----------------------------------------------------------------------------- QUANTIZE / DEQUANTIZE


def _quantize_model(scale: float, zp: int, n: int) -> bytes:
    g = litert.Graph()
    x = g.tensor("x", (n,), np.float32)
    y = g.tensor("y", (n,), np.int8, scale=scale, zero_point=zp)
    g.op(114, 2, [x], [y])
    return g.finish([x], [y])


def _dequantize_model(scale: float, zp: int, n: int) -> bytes:
    g = litert.Graph()
    x = g.tensor("x", (n,), np.int8, scale=scale, zero_point=zp)
    y = g.tensor("y", (n,), np.float32)
    g.op(6, 2, [x], [y])
    return g.finish([x], [y])


def test_quantize_bit_exact_and_mutants_fail() -> None:
    """Floats on and one or two float32 ulps around (k + 1/2) * scale; sizes with SIMD tails."""
    g = torch.Generator().manual_seed(22)
    outputs = 0
    miss = {k: 0 for k in KERNELS}
    mutants: dict[tuple[str, str], int] = {}
    for t in range(24):
        s = 2.0 ** -int(torch.randint(0, 8, (1,), generator=g)) if t % 2 else \
            float(F32(float(torch.rand(1, generator=g)) * 0.2 + 1e-3))
        zp = int(torch.randint(-100, 100, (1,), generator=g))
        n = 8 * int(torch.randint(0, 400, (1,), generator=g)) + t % 8
        k = torch.randint(-135, 135, (n,), generator=g).double()
        x = ((k + 0.5) * float(F32(s))).float()
        x = (x.view(torch.int32) + torch.randint(-2, 3, (n,), generator=g).int()).view(torch.float32)
        model = _quantize_model(s, zp, n)
        s32 = torch.tensor(F32(s))
        forms = {"away(f32 x/s)": _away(x / s32), "rne(x*f32(1/s))": torch.round(x * (1 / s32)).long(),
                 "rne(exact x*f32(1/s))": torch.round(x.double() * float(1 / s32)).long(),
                 "away(f64 x/s)": _away(x.double() / float(s32)), "rne(f32 x/s)": torch.round(x / s32).long()}
        for kernel in KERNELS:
            ref = torch.from_numpy(litert.run(model, [x.numpy()], kernel)[0])
            miss[kernel] += int((dialect.quantize(x, s, zp, kernel) != ref).sum())
            for name, r in forms.items():
                key = (kernel, name)
                mutants[key] = mutants.get(key, 0) + int(((r + zp).clamp(-128, 127) != ref.long()).sum())
        outputs += n
    assert outputs >= 30_000 and miss == {k: 0 for k in KERNELS}, miss
    assert mutants[("reference", "away(f32 x/s)")] == 0
    assert mutants[("xnnpack", "rne(x*f32(1/s))")] == 0
    for name in ("rne(x*f32(1/s))", "away(f64 x/s)", "rne(f32 x/s)"):
        assert mutants[("reference", name)] > 100, mutants
    for name in ("away(f32 x/s)", "rne(exact x*f32(1/s))", "rne(f32 x/s)", "away(f64 x/s)"):
        assert mutants[("xnnpack", name)] > 0, mutants
    # optimized: neither form alone (the SIMD body and the scalar tail round differently)
    assert mutants[("optimized", "rne(x*f32(1/s))")] > 0 and mutants[("optimized", "away(f64 x/s)")] > 0


def test_dequantize_bit_exact_and_mutants_fail() -> None:
    g = torch.Generator().manual_seed(23)
    miss = {k: 0 for k in KERNELS}
    plain_on_optimized = fused_everywhere = outputs = 0
    for t in range(60):
        s = float(F32(float(torch.rand(1, generator=g)) * 0.2 + 1e-3))
        zp = int(torch.randint(-128, 128, (1,), generator=g))
        q = torch.randint(-128, 128, (256 + t % 8,), generator=g, dtype=torch.int8)
        s32 = torch.tensor(F32(s))
        every = torch.arange(-128, 128, dtype=torch.int8)
        differ = every[(every.float() - zp) * s32 != every.float() * s32 + torch.tensor(F32(-zp) * F32(s))]
        if differ.numel() and t % 8:  # the scalar tail gets values where the two forms differ
            q[256:] = differ[torch.randint(0, differ.numel(), (t % 8,), generator=g)]
        model = _dequantize_model(s, zp, q.numel())
        plain = (q.float() - zp) * s32
        fused = q.float() * s32 + torch.tensor(F32(-zp) * F32(s))
        for kernel in KERNELS:
            ref = torch.from_numpy(litert.run(model, [q.numpy()], kernel)[0])
            miss[kernel] += int((dialect.dequantize(q, s, zp, kernel).view(torch.int32) != ref.view(torch.int32)).sum())
            if kernel == "optimized":
                plain_on_optimized += int((plain != ref).sum())
                fused_everywhere += int((fused != ref).sum())
            else:
                assert torch.equal(plain, ref)
        outputs += q.numel()
    assert outputs >= 15_000 and miss == {k: 0 for k in KERNELS}, miss
    assert plain_on_optimized > 100 and fused_everywhere > 0  # the body is fused-form, the tail plain


# ----------------------------------------------------------------------------- edges


@pytest.mark.parametrize("edge", ["q_rounds_to_2**31", "power_of_two", "tiny_2**-31.5", "tiny_below_2**-32",
                                  "greater_than_one"])
def test_multiplier_edges(edge: str) -> None:
    """QuantizeMultiplier's edges, as LiteRT meets them: every kernel equals the dialect."""
    one_up = float(F32(1 + 2.0**-23))
    sx, sw, sy = {
        "q_rounds_to_2**31": (one_up, one_up, float(F32(1 + 2.0**-22))),  # M = 1 - 2**-46: q -> 2**31 -> (2**30, 1)
        "power_of_two": (0.25, 0.125, 4.0),
        "tiny_2**-31.5": (2.0**-20, 2.0**-11 * 1.5, 2.0),  # M = 1.5 * 2**-32: shift -31, right shift 31
        "tiny_below_2**-32": (2.0**-20, 2.0**-14, 1.0),  # M = 2**-34: flushed to (0, 0)
        "greater_than_one": (0.5, 0.75, 0.1),  # M = 3.75: a left shift of 2
    }[edge]
    m = float(F32(sx)) * float(F32(sw)) / float(F32(sy))
    q, shift = quantize_multiplier(m)
    if edge == "q_rounds_to_2**31":
        assert (q, shift) == (2**30, 1)
    g = torch.Generator().manual_seed(24)
    n, kk = 256, 16
    x = torch.randint(-128, 128, (4, kk), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (n, kk), generator=g, dtype=torch.int8)
    target = torch.randint(-100, 100, (n,), generator=g).double() + 0.5 * (torch.arange(n) % 2)
    base = (x[0].long() @ w.long().T)
    bias = (torch.round(target / m) - base).clamp(-(2**31) + 2**20, 2**31 - 2**20).to(torch.int32)
    if m < 1:
        bias += torch.randint(-3, 4, (n,), generator=g, dtype=torch.int32)
    model = litert.fully_connected_model(w, [sw], bias, sx, 0, sy, 0, batch=4)
    for kernel in KERNELS:
        ref = torch.from_numpy(litert.run(model, [x.numpy()], kernel)[0])
        got = dialect.linear(x, sx, 0, w, sw, bias, sy, 0, kernel=kernel)
        assert torch.equal(got, ref), (edge, kernel, int((got != ref).sum()))


def test_xnnpack_refuses_scale_256_and_dialect_says_so() -> None:
    w = torch.ones(4, 8, dtype=torch.int8)
    model = litert.fully_connected_model(w, [1.0], None, 16.0, 0, 1 / 16, 0)
    with pytest.raises(RuntimeError):
        litert.run(model, [np.zeros((1, 8), np.int8)], "xnnpack")
    with pytest.raises(ValueError, match="256"):
        dialect.linear(torch.zeros(1, 8, dtype=torch.int8), 16.0, 0, w, 1.0, None, 1 / 16, 0, kernel="xnnpack")
    for kernel in ("reference", "optimized"):  # the builtin kernels take it (left shift 8)
        ref = torch.from_numpy(litert.run(model, [np.ones((1, 8), np.int8)], kernel)[0])
        assert torch.equal(dialect.linear(torch.ones(1, 8, dtype=torch.int8), 16.0, 0, w, 1.0, None, 1 / 16, 0,
                                          kernel=kernel), ref)


def test_weights_of_minus_128_are_exact_on_x86() -> None:
    """TFLite's spec asks for weights in [-127, 127]; LiteRT's x86 kernels compute -128 exactly."""
    g = torch.Generator().manual_seed(25)
    for zx in (127, -128):
        x = torch.where(torch.rand(33, 64, generator=g) < 0.8, -128, 127).to(torch.int8)
        w = torch.where(torch.rand(40, 64, generator=g) < 0.8, -128, 127).to(torch.int8)
        acc = (x.long() - zx) @ w.long().T
        sy = float(acc.abs().max()) * 1e-5 / 100
        model = litert.fully_connected_model(w, [1e-3], None, 0.01, zx, sy, 3, batch=33)
        for kernel in KERNELS:
            ref = torch.from_numpy(litert.run(model, [x.numpy()], kernel)[0])
            assert torch.equal(dialect.linear(x, 0.01, zx, w, 1e-3, None, sy, 3, kernel=kernel), ref)
        xc = x[:32].reshape(2, 4, 4, 64)
        wc = w[:16].reshape(16, 1, 1, 64).repeat(1, 3, 3, 1)
        model = litert.conv2d_model(wc, [1e-3], None, 0.01, zx, sy * 9, 3, (4, 4), padding="same", batch=2)
        for kernel in KERNELS:
            ref = torch.from_numpy(litert.run(model, [xc.numpy()], kernel)[0])
            got = dialect.conv2d(xc, 0.01, zx, wc, 1e-3, None, sy * 9, 3, padding="same", kernel=kernel)
            assert torch.equal(got, ref)


def test_rule_table_matches_the_findings() -> None:
    assert dialect.rule_of("reference", "fully_connected") == "float64_half_away"
    assert dialect.rule_of("reference", "conv_2d") == "q31_gemmlowp"
    assert {dialect.rule_of("xnnpack", op) for op in dialect.OPS} == {"float32_half_even"}
    assert {dialect.rule_of("optimized", op) for op in dialect.OPS} == {"q31_half_up"}
    assert math.isclose(float(dialect.effective_scale(0.5, 0.25, 2.0, 1)[0]), 0.0625)


def test_prerounding_and_rule_override_explain_the_outputs() -> None:
    """The value each kernel's last rounding sees, rounded its way, gives LiteRT's integers; and
    ``requantize(rule=...)`` applies a named rule (here every candidate family) as written above."""
    g = torch.Generator().manual_seed(26)
    c = fc_case(g, "adversarial", True, 8, 100, 256)
    model = litert.fully_connected_model(c["w"], c["sw"], c["bias"], c["sx"], c["zx"], c["sy"], c["zy"], batch=8)
    acc = c["acc0"] + c["bias"].long()
    last_rounding = {"reference": _away, "xnnpack": lambda v: torch.round(v).long(),
                     "optimized": lambda v: torch.floor(v + 0.5).long()}
    for kernel in KERNELS:
        ref = torch.from_numpy(litert.run(model, [c["x"].numpy()], kernel)[0]).long()
        pre = dialect.prerounding(acc, c["sx"], c["sw"], c["sy"], kernel)
        assert torch.equal((last_rounding[kernel](pre) + c["zy"]).clamp(-128, 127), ref)
    cands = candidates(acc, c["sx"], c["sw"].tolist(), c["sy"])
    for family in FAMILIES:
        got = dialect.requantize(acc, c["sx"], c["sw"], c["sy"], c["zy"], rule=family)
        assert torch.equal(got.long(), (cands[family] + c["zy"]).clamp(-128, 127)), family
