"""``kernels.vnni``: the compiled AVX512-VNNI W8A8 Linear equals the reference dialects bit for bit.

Reference: each layer's ``fast=False`` path -- :mod:`glassquant.dialects.fbgemm` (static and
dynamic) and :mod:`glassquant.dialects.torchao` (per-token), proven against torch.ao's fbgemm/x86
engines and torchao in tests/equivalence/ -- never the kernels under test. Integers and floats
compare with ``torch.equal`` (0 mismatches). Inputs: random; adversarial (requantize values forced
onto exact .5 ties, quantize ties that break on ``x/scale + zp``, per-token rows on ties, zero
points 0 and 255, saturation at both ends, accumulators past 2**24); shapes with K not a multiple
of 4 or 64, N not a multiple of 16, M = 1, 3-D and non-contiguous inputs; both integer kernels
(dot and token-block) and one or two threads. Each adversarial family also shows that a plausible
wrong rule (half-away rounding, the zero point added after rounding, no FMA, another multiply
order) gives different numbers on the same inputs, so equality here is evidence.
"""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from glassquant.config import WEIGHT_PER_CHANNEL, WEIGHT_PER_TENSOR
from glassquant.dialects import fbgemm, pytorch, torchao
from glassquant.dialects._base import accumulate
from glassquant.floatops import f32
from glassquant.kernels import vnni
from glassquant.nn.linear import DynamicQuantLinear, QuantLinear
from glassquant.rounding import round_half_away

from gq_testing import StaticCase, dynamic_inputs, force_ties, random_static_case

needs_vnni = pytest.mark.skipif(not vnni.available(), reason="this CPU lacks AVX512-VNNI (or the library is not built)")
KERNELS = (vnni.KERNEL_AUTO, vnni.KERNEL_DOT, vnni.KERNEL_BLOCK)  # by shape; dot only; token blocks where M >= 16


@contextmanager
def threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _with_kernel(layer: QuantLinear | DynamicQuantLinear, kernel: int) -> None:
    plan = layer._vnni_plan()
    assert plan is not None, "the layer should take the VNNI path"
    plan.kernel = kernel


def test_library_is_built() -> None:
    """``pip install`` builds _vnni*.c here (gcc is present); a missing build must not pass silently."""
    assert vnni._LIB is not None, "glassquant/kernels/_vnni*.so was not built: run `pip install -e .` with gcc"


# ---- choose_qparams (the dynamic per-tensor activation qparams) ----

def _ranges(g: torch.Generator) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = [(0.0, 0.0), (-0.0, 0.0), (0.0, 1e-30), (-1e-30, 0.0), (-1e-6, 1e-6),
                                      (0.0, 6.1e-5 * 127), (-6.1e-5 * 127, 0.0), (-1e38, 1e38), (3.0, 5.0),
                                      (-5.0, -3.0), (-2e-3, 3e-3)]
    for e in range(-12, 12):
        for _ in range(40):
            lo = -float(torch.rand(1, generator=g)) * 10.0**e
            hi = float(torch.rand(1, generator=g)) * 10.0**e * float(torch.randint(0, 3, (1,), generator=g))
            out.append((float(f32(lo)), float(f32(hi))))
    for j in range(0, 127):  # zero point on an exact .5 tie: x_min = -(j + 0.5) * s, range 127 s or 255 s
        for width in (127, 255):
            s = 2.0 ** -int(torch.randint(0, 10, (1,), generator=g))
            out.append((-(j + 0.5) * s, (width - j - 0.5) * s))
    return out


def test_choose_qparams_matches_dialect() -> None:
    g = torch.Generator().manual_seed(0)
    ranges, n_ties, n_small, wrong_tie, wrong_small = _ranges(g), 0, 0, 0, 0
    for lo, hi in ranges:
        for reduce_range in (False, True):
            assert vnni.choose_qparams_u8(lo, hi, reduce_range) == pytorch.choose_qparams(lo, hi, 0, 255, reduce_range)
            qmax = 127 if reduce_range else 255
            scale = (max(hi, 0.0) - min(lo, 0.0)) / qmax
            if 0 < scale < pytorch.SMALL_SCALE_THRESHOLD:  # mutant: no SMALL_SCALE_THRESHOLD stretch
                n_small += 1
                wrong_small += float(f32(scale)) != pytorch.choose_qparams(lo, hi, 0, 255, reduce_range)[0]
            initial = -min(lo, 0.0) / scale if scale > 0 else 0.0
            if initial - int(initial) == 0.5 and 0 < initial < qmax:  # mutant: zero point rounded half away
                n_ties += 1
                wrong_tie += int(initial + 0.5) != pytorch.choose_qparams(lo, hi, 0, 255, reduce_range)[1]
    assert n_ties > 100 and wrong_tie > 50, (n_ties, wrong_tie)
    assert n_small > 50 and wrong_small == n_small, (n_small, wrong_small)


# ---- static x86/fbgemm: forward_int (uint8 -> uint8) and forward (float -> float) ----

def _static_layer(c: StaticCase, engine: str = "x86") -> QuantLinear:
    return QuantLinear(c.w_q, c.w_scale, c.w_zero_point, c.bias, c.x_scale, c.x_zero_point, c.y_scale,
                       c.y_zero_point, relu=c.relu, engine=engine)


def _static_cases() -> Iterator[tuple[str, StaticCase]]:
    g = torch.Generator().manual_seed(1)
    shapes = [(1, 768, 40, "random"), (17, 5, 33, "random"), (64, 131, 96, "ties"), (70, 200, 97, "small"),
              (33, 64, 17, "full"), (1, 3, 1, "random"), (130, 63, 50, "pow2"), (20, 65, 16, "ties")]
    for i, (m, k, n, kind) in enumerate(shapes):
        for per_channel in (True, False):
            c = random_static_case(g, m, k, n, per_channel=per_channel, reduce_range=kind != "full",
                                   full_range=kind == "full", pow2_scales=kind in ("pow2", "small"),
                                   small=kind == "small", relu=(i + per_channel) % 3 == 0)
            if kind == "ties":
                assert force_ties(c, fbgemm.prerounding) > n // 2
            if i == 5:
                c.bias = None
            if i == 1:  # zero points at the ends of the grid
                c.x_zero_point, c.y_zero_point = (0, 255) if per_channel else (255, 0)
            yield f"{m}x{k}x{n}-{kind}-{'pc' if per_channel else 'pt'}", c


@needs_vnni
def test_static_forward_int_equals_dialect() -> None:
    compared = 0
    for name, c in _static_cases():
        layer = _static_layer(c)
        ref = layer.forward_int(c.x_q, fast=False)
        for kernel in KERNELS:
            _with_kernel(layer, kernel)
            got = layer.forward_int(c.x_q)
            assert got.dtype == ref.dtype == torch.uint8 and torch.equal(got, ref), (name, kernel)
            compared += ref.numel()
        assert layer._packed is None  # no transposed weight copy was made
    assert compared >= 100_000, compared


@needs_vnni
def test_static_adversarial_inputs_are_adversarial() -> None:
    """The tie and saturation cases are what they claim: a half-away rounding and a
    zero point added before rounding would both change outputs there."""
    ties = wrong = saturated_low = saturated_high = 0
    for _, c in _static_cases():
        acc = accumulate(c.x_q, c.x_zero_point, c.w_q, c.w_zero_point)
        pre = fbgemm.prerounding(acc, c.x_scale, c.w_scale_arg(), c.bias, c.y_scale)
        tie = (pre - torch.floor(pre)) == 0.5
        ties += int(tie.sum())
        ref = _static_layer(c).forward_int(c.x_q, fast=False).to(torch.int64)
        lo = c.y_zero_point if c.relu else 0
        half_away = (round_half_away(pre).to(torch.int64) + c.y_zero_point).clamp(lo, 255)
        wrong += int((half_away != ref).sum())
        saturated_low += int((ref == 0).sum())
        saturated_high += int((ref == 255).sum())
    assert ties > 1000 and wrong > ties // 10, (ties, wrong)  # half-away differs on about half the inner ties
    assert saturated_low > 100 and saturated_high > 100, (saturated_low, saturated_high)


@needs_vnni
def test_static_float_forward_equals_dialect() -> None:
    """quantize (fma, zero point before rounding) + integer layer + dequantize, in one call; one and
    two threads, and a case big enough for token-block panels and the parallel quantize phase."""
    g = torch.Generator().manual_seed(2)
    compared = 0
    for n_threads in (1, 2):
        with threads(n_threads):
            for name, c in _static_cases():
                layer = _static_layer(c, engine="fbgemm" if "pt" in name else "x86")
                x = (c.x_q.to(torch.float32) - c.x_zero_point) * c.x_scale  # on the input grid ...
                x = x + (torch.randint(-1, 2, x.shape, generator=g) * 0.5 * c.x_scale)  # ... and on its ties
                got, ref = layer(x), layer(x, fast=False)
                assert got.dtype == ref.dtype == torch.float32 and torch.equal(got, ref), name
                compared += ref.numel()
            x = torch.randn(300, 1000, generator=g) * 4  # 300,000 activations: quantized in parallel
            layer = _static_layer(random_static_case(g, 300, 1000, 40, per_channel=True, reduce_range=True))
            ref = layer(x, fast=False)
            assert torch.equal(layer(x), ref)
            compared += ref.numel()
    assert compared >= 100_000, compared


def test_quantize_zero_point_before_rounding_matters() -> None:
    """x86's per-tensor quantize ties break on x/scale + zp: with an odd zero point the other order
    (round, then add) differs on every tie -- the inputs test_static_float_forward_equals_dialect uses."""
    x = (torch.arange(-20, 20, dtype=torch.float32) + 0.5) * 0.25
    q_ref = fbgemm.quantize(x, 0.25, 7, torch.uint8).to(torch.int64)
    q_after = (torch.round(x / 0.25) + 7).to(torch.int64)
    assert bool((q_ref != q_after).all())


# ---- dynamic x86/fbgemm (per-tensor uint8, qparams per call) ----

def _dynamic_layer(k: int, n: int, seed: int, engine: str, per_channel: bool, bias: bool = True,
                   relu: bool = False, reduce_range: bool = True) -> DynamicQuantLinear:
    torch.manual_seed(seed)
    scheme = WEIGHT_PER_CHANNEL if per_channel else WEIGHT_PER_TENSOR
    return DynamicQuantLinear.from_float(nn.Linear(k, n, bias=bias), weight_scheme=scheme, engine=engine,
                                         reduce_range=reduce_range, relu=relu)


def _odd_zero_point_grid(g: torch.Generator) -> Tensor:
    """Range [-5/16, 122/16]: with reduce_range, scale 1/16 and zero point 5 exactly; every value a tie."""
    x = (torch.randint(0, 127, (64, 96), generator=g).to(torch.float32) + 0.5) / 16 - 5 / 16
    x[0, 0], x[0, 1] = -5 / 16, 122 / 16
    return x


@needs_vnni
def test_dynamic_x86_equals_dialect() -> None:
    g = torch.Generator().manual_seed(3)
    xs = [*dynamic_inputs(g), _odd_zero_point_grid(g), torch.randn(2, 5, 77, generator=g)]
    compared = 0
    for i, x in enumerate(xs):
        k = x.shape[-1]
        for per_channel, reduce_range in ((False, True), (True, False)):
            layer = _dynamic_layer(k, 3 + 37 * (i % 3), i, "x86", per_channel, bias=i % 4 != 3, relu=i % 5 == 1,
                                   reduce_range=reduce_range)
            ref = layer(x, fast=False)
            for kernel in KERNELS:
                _with_kernel(layer, kernel)
                assert torch.equal(layer(x), ref), (i, per_channel, kernel)
                compared += ref.numel()
    assert compared >= 100_000, compared


@needs_vnni
def test_dynamic_x86_adversarial_inputs_are_adversarial() -> None:
    """The FMA output rule and the zero point before rounding matter on these inputs."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 300, generator=g) * 3
    layer = _dynamic_layer(300, 200, 0, "x86", per_channel=False)
    x_q, sx, zx = fbgemm.quantize_activation(x, True)
    acc = accumulate(x_q, zx, layer.w_q, layer.w_zero_point)
    scale = f32(sx) * layer.w_scale
    no_fma = f32(acc) * scale + layer.bias  # two roundings
    assert int((no_fma != layer(x, fast=False)).sum()) > 100
    grid = _odd_zero_point_grid(g)
    q, s, z = fbgemm.quantize_activation(grid, True)
    assert (s, z) == (1 / 16, 5)
    q_after = (torch.round(grid * 16) + z).to(torch.int64)
    assert bool((q.to(torch.int64) != q_after)[1:].all())  # every tie (row 0 holds the two range ends)


# ---- torchao per-token ----

def _token_rows(g: torch.Generator, m: int, k: int) -> Tensor:
    """Rows whose x * (1/scale) are exact .5 ties (scale 2**-e), plus +-127.5 (-> -128 and 127)."""
    e = torch.randint(-20, 20, (m, 1), generator=g).to(torch.float64)
    unit = torch.pow(2.0, -e)
    x = (torch.randint(-128, 128, (m, k), generator=g).to(torch.float64) + 0.5) * unit
    x[:, 0], x[:, 1] = 127.5 * unit[:, 0], -127.5 * unit[:, 0]
    return x.to(torch.float32)


@needs_vnni
def test_torchao_equals_dialect() -> None:
    g = torch.Generator().manual_seed(5)
    tiny = torch.finfo(torch.float32).tiny
    special = torch.zeros(6, 9)
    special[1] = torch.linspace(-1e-38, 1e-38, 9)
    special[2, :3] = torch.tensor([tiny / 4, -tiny / 8, tiny])
    special[3] = torch.tensor([-3e38, -1e30, -1.0, 0.0, 1.0, 1e30, 1e37, 2e38, 3e38])
    xs = [_token_rows(g, 40, 64), _token_rows(g, 1, 777), special, torch.randn(3, 7, 130, generator=g) * 5,
          torch.randn(70, 48, generator=g) * torch.pow(10.0, torch.randint(-20, 20, (70, 1), generator=g).float()),
          torch.randn(200, 33, generator=g).t()]  # (33, 200): non-contiguous
    compared = 0
    for i, x in enumerate(xs):
        for per_channel, bias, relu in ((True, True, False), (False, False, True), (True, False, True)):
            layer = _dynamic_layer(x.shape[-1], 96 + 17 * (i % 2), i, "torchao", per_channel, bias, relu)
            ref = layer(x, fast=False)
            for kernel in KERNELS:
                _with_kernel(layer, kernel)
                assert torch.equal(layer(x), ref), (i, per_channel, bias, relu, kernel)
                compared += ref.numel()
    assert compared >= 100_000, compared


@needs_vnni
def test_torchao_adversarial_inputs_are_adversarial() -> None:
    g = torch.Generator().manual_seed(6)
    x = _token_rows(g, 40, 64)
    layer = _dynamic_layer(64, 200, 0, "torchao", per_channel=True, bias=False)
    x_q, sx, _ = torchao.quantize_activation(x)
    inv = 1.0 / sx
    assert bool((((x * inv).abs() - (x * inv).abs().floor()) == 0.5).all())  # every product is a tie
    half_away = torch.sign(x * inv) * torch.floor((x * inv).abs() + 0.5)
    assert int((half_away.clamp(-128, 127) != x_q).sum()) > 500
    x = torch.randn(40, 64, generator=g) * 3  # scales that are not powers of two: the multiply order shows
    x_q, sx, _ = torchao.quantize_activation(x)
    acc = accumulate(x_q, 0, layer.w_q, 0)
    other_order = f32(acc) * (sx * layer.w_scale)  # f32(acc * f32(sx * sw)) instead of (acc * sx) * sw
    assert int((other_order != layer(x, fast=False)).sum()) > 100


# ---- threads, errors, memory, dispatch ----

@needs_vnni
@pytest.mark.parametrize("engine", ["torchao", "x86"])
def test_two_threads_parallel_quantize(engine: str) -> None:
    """Inputs big enough for the parallel activation phase (the per-tensor min/max reduction across
    threads) and several output chunks per thread."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 1000, generator=g) * 2
    x[17, 3] = 40.0  # the range is set by one element of one row
    for per_channel in (True, False):
        layer = _dynamic_layer(1000, 200, 1, engine, per_channel)
        with threads(2):
            got = layer(x)
        assert torch.equal(got, layer(x, fast=False))


@needs_vnni
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_raises_the_named_error(bad: float) -> None:
    g = torch.Generator().manual_seed(8)
    c = random_static_case(g, 5, 40, 24, per_channel=True, reduce_range=True)
    layers = [_static_layer(c), _dynamic_layer(40, 24, 0, "x86", True), _dynamic_layer(40, 24, 0, "torchao", True)]
    x = torch.randn(5, 40, generator=g)
    x[3, 7] = bad
    for layer in layers:
        layer.name = "encoder.layer.0.query"
        messages = []
        for fast in (True, False):
            with pytest.raises(ValueError, match=r"encoder\.layer\.0\.query") as err:
                layer(x, fast=fast)
            messages.append(str(err.value))
        assert messages[0] == messages[1]


@needs_vnni
@pytest.mark.parametrize("k,n", [(768, 768), (768, 3072), (4096, 4096), (4096, 11008)])
def test_weight_memory_bound(k: int, n: int) -> None:
    """w_q (N K bytes) plus the plan's column sums and per-channel constants stay <= 1.05 N K;
    no packed or transposed copy of the weight is made."""
    w_q = torch.zeros((n, k), dtype=torch.int8)
    zero, scale, bias = torch.zeros(n, dtype=torch.int32), torch.full((n,), 1e-3), torch.zeros(n)
    plans = [vnni.plan_token(w_q, scale, zero, bias, False),
             vnni.plan_dynamic(w_q, scale[:1], zero[:1], bias, False, True),
             vnni.plan_static(w_q, scale, zero, bias, 0.02, 128, 0.05, 128, False),
             vnni.plan_static(w_q, scale[:1], zero[:1], bias, 0.02, 128, 0.05, 128, False)]
    for plan in plans:
        assert plan is not None and plan.tensors[0] is w_q  # the weight is used in place
        assert w_q.numel() + plan.nbytes <= 1.05 * n * k


@needs_vnni
def test_layers_take_the_vnni_path(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(9)
    c = random_static_case(g, 6, 50, 30, per_channel=True, reduce_range=True)
    layers = [_static_layer(c), _dynamic_layer(50, 30, 0, "x86", False), _dynamic_layer(50, 30, 0, "torchao", True)]
    x = torch.randn(6, 50, generator=g)
    calls = []
    real = vnni._call
    monkeypatch.setattr(vnni, "_call", lambda *a: calls.append(1) or real(*a))
    for layer in layers:
        layer(x)
    layers[0].forward_int(c.x_q)
    assert len(calls) == 4
    layers[1](x.double())  # not float32: the dialect path
    layers[0].forward_int(c.x_q, fast=False)
    assert len(calls) == 4
    qnnpack = _static_layer(c, engine="qnnpack")  # another dialect: never the VNNI path
    assert qnnpack._vnni_plan() is None


@needs_vnni
def test_fallback_without_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the kernels "absent" (a CPU without AVX512-VNNI) every layer takes its previous path, same numbers."""
    g = torch.Generator().manual_seed(10)
    c = random_static_case(g, 9, 70, 40, per_channel=False, reduce_range=True)
    layers = [_static_layer(c), _dynamic_layer(70, 40, 0, "x86", True), _dynamic_layer(70, 40, 0, "torchao", True)]
    x = torch.randn(9, 70, generator=g)
    fast = [layer(x) for layer in layers]
    monkeypatch.setattr(vnni, "available", lambda: False)
    monkeypatch.setattr(vnni, "_call", lambda *a: pytest.fail("the VNNI kernel ran although unavailable"))
    for layer, y in zip(layers, fast, strict=True):
        assert torch.equal(layer(x), y)
    assert torch.equal(layers[0].forward_int(c.x_q), layers[0].forward_int(c.x_q, fast=False))


@needs_vnni
def test_plan_follows_the_layer() -> None:
    """In-place weight edits, new buffers and changed settings rebuild the plan; copies get their own."""
    g = torch.Generator().manual_seed(11)
    layer = _dynamic_layer(40, 24, 0, "torchao", True)
    x = torch.randn(7, 40, generator=g)
    first = layer(x)
    with torch.no_grad():
        layer.w_q[3].neg_()
    assert torch.equal(layer(x), layer(x, fast=False)) and not torch.equal(layer(x), first)
    layer.bias = torch.randn(24, generator=g)
    layer.relu = True
    assert torch.equal(layer(x), layer(x, fast=False))
    twin = copy.deepcopy(layer)
    assert twin._vnni._plan is None and torch.equal(twin(x), layer(x))
    c = random_static_case(g, 4, 40, 24, per_channel=True, reduce_range=True)
    static = _static_layer(c)
    static.forward_int(c.x_q)
    static.y_zero_point, static.x_zero_point = 3, 250
    assert torch.equal(static.forward_int(c.x_q), static.forward_int(c.x_q, fast=False))


@needs_vnni
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux only)")
def test_one_openmp_runtime() -> None:
    """The library shares torch's libgomp (same soname, loaded first): one OpenMP runtime, one pool.
    Checked in a fresh interpreter after a two-thread layer call."""
    code = ("import pathlib, torch; from torch import nn; from glassquant.nn import DynamicQuantLinear; "
            "torch.set_num_threads(2); layer = DynamicQuantLinear.from_float(nn.Linear(512, 512)); "
            "layer(torch.randn(64, 512)); "
            "maps = pathlib.Path('/proc/self/maps').read_text().splitlines(); "
            "print(sorted({l.split()[-1] for l in maps if 'libgomp' in l or '_vnni' in l}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    paths = ast.literal_eval(out.strip())
    gomp = [p for p in paths if "libgomp" in p]
    assert any("_vnni" in p for p in paths)
    assert len(gomp) == 1 and Path(gomp[0]).parent == Path(torch.__file__).parent / "lib", gomp


@needs_vnni
@pytest.mark.parametrize(("scale", "zero_point"), [(0.05, 0), (0.0292226, 17), (1.0, 10), (2.0**-7, 255), (3.3, 128)])
def test_quantize_u8_equals_pytorch_quantize(scale: float, zero_point: int) -> None:
    """The compiled per-tensor quantize (static layers' inputs) against the dialect's torch steps: random
    values at many magnitudes, values placed on ties of ``x/scale + zp`` (where FMA vs two roundings, and
    zero point before vs after rounding, differ), saturation at both ends, a buffer large enough to run
    in parallel, a non-contiguous view; NaN / Inf give None (the caller's torch path names the error)."""
    g = torch.Generator().manual_seed(zero_point)
    s32 = float(f32(scale))
    ties = (torch.arange(-300, 300, dtype=torch.float64) + 0.5 - zero_point) * s32  # x/scale + zp on .5
    parts = [torch.randn(70_001, generator=g) * s32 * 200, torch.randn(999, generator=g) * 1e-6,
             ties.to(torch.float32), torch.tensor([1e30, -1e30, 0.0, -0.0, 1.0])]
    x = torch.cat(parts)
    for t in (x, x[: x.numel() // 7 * 7].reshape(-1, 7)[:, ::2], x[:100].reshape(4, 25)):
        got = vnni.quantize_u8(t, scale, zero_point)
        assert got is not None and got.shape == t.shape
        assert torch.equal(got, pytorch.quantize(t, scale, zero_point, torch.uint8))
    # the same inputs under a wrong rule (ties half away from zero) differ: the ties are real ties
    wrong = round_half_away(x.double() / s32 + zero_point).clamp(0, 255).to(torch.uint8)
    assert not torch.equal(wrong, pytorch.quantize(x, scale, zero_point, torch.uint8))
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[12_345] = bad
        assert vnni.quantize_u8(y, scale, zero_point) is None


@needs_vnni
def test_static_layers_name_non_finite_inputs() -> None:
    lin = QuantLinear.from_float(nn.Linear(16, 8), 0.05, 0, 0.1, 0, name="fc7")
    x = torch.randn(2, 16)
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="fc7: input: contains 1 NaN"):
        lin.quantize_input(x)
    from glassquant.nn.conv import QuantConv2d

    conv = QuantConv2d.from_float(nn.Conv2d(3, 8, 3, padding=1), 0.05, 0, 0.1, 0, name="conv3")
    img = torch.randn(2, 3, 5, 5)
    img[0, 1, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="conv3: input: contains 0 NaN and 1 Inf"):
        conv(img)
    # an empty batch keeps the torch path and gives an empty output of the right shape
    assert conv(torch.zeros(0, 3, 5, 5)).shape == (0, 8, 5, 5)
    assert conv.forward_int(torch.zeros(0, 3, 5, 5, dtype=torch.uint8)).shape == (0, 8, 5, 5)


@pytest.mark.needs_cc
def test_im2col_under_sanitizers(tmp_path: Path) -> None:
    """``gq_im2col_u8`` built with ASan + UBSan, 400 random geometries (strides, paddings, dilations,
    1-40 channels), exact-size buffers, every byte checked against the definition in C:
    tests/unit/data/im2col_harness.c."""
    import os
    import shutil

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler on PATH")
    kernels = Path(vnni.__file__).parent
    sources = [str(kernels / f"{name}.c") for name in ("_vnni", "_vnni_quant", "_vnni_gemm", "_vnni_epilogue")]
    exe = tmp_path / "im2col"
    build = subprocess.run([cc, "-std=c99", "-O1", "-g", "-fopenmp", "-Wall", "-Wextra", "-Werror",
                            "-fsanitize=address,undefined", "-fno-sanitize-recover=all", *sources,
                            str(Path(__file__).with_name("data") / "im2col_harness.c"), "-lm", "-o", str(exe)],
                           capture_output=True, text=True)
    if build.returncode != 0 and "sanitize" in build.stderr:
        pytest.skip(f"{cc} cannot build with sanitizers here: {build.stderr.strip()[:200]}")
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1"})
    assert run.returncode == 0 and run.stdout.strip() == "ok", (run.stdout, run.stderr[-2000:])
