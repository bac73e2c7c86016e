"""QuantConv1d / QuantConv2d against torch.ao's quantized Conv1d, Conv2d and ConvReLU2d, bit for bit.

Reference: the torch.ao modules (``torch.ao.nn.quantized.Conv1d`` / ``Conv2d``,
``intrinsic.quantized.ConvReLU1d`` / ``ConvReLU2d``), built here from the same integers under
each engine; accumulators against an independent float64 ``F.conv2d`` of ``x_q - zx`` (its
zero padding is real 0). Integers compare with ``torch.equal`` / mismatch counts of 0 over
>= 100,000 outputs per engine and weight scheme: random integers, full-range integers (only
0/255 or 0/127 and -128/127: accumulators past 2**24, int16 pair sums that saturate in
fbgemm's depthwise kernel), power-of-two scales with small integers (about half of all
outputs exact .5 ties), the bias re-chosen so one output per channel lands exactly on a tie
(``gq_testing.force_ties``), affine weights, no bias; padding, stride 2, dilation 2, groups
(depthwise, channel multiplier 2, more than 100 groups), kernels 1x1 to 7x7, 1-D convs.
Mutants (ties away from zero, oneDNN's Linear rule, fbgemm without int16 saturation, padding
with integer 0) must fail: the suite can tell the true rule from a plausible one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from glassquant.dialects import fbgemm, onednn, qnnpack
from glassquant.errors import AccumulatorOverflowError
from glassquant.interop import torch_ao
from glassquant.kernels import vnni
from glassquant.nn import conv
from glassquant.nn.conv import QuantConv1d, QuantConv2d
from glassquant.rounding import round_half_away

from gq_testing import StaticCase, force_ties, needs_torch_ao

pytestmark = needs_torch_ao
ENGINES = ["x86", "fbgemm", "qnnpack", "onednn"]


@dataclass(frozen=True)
class Shape:
    """One conv geometry: batch, channels, spatial size (1 or 2 dims), kernel, stride, padding,
    dilation, groups, and the kind of data (random, full, small, ties, affine, nobias)."""

    n: int
    c_in: int
    c_out: int
    size: tuple[int, ...]
    k: int
    stride: int
    padding: int
    dilation: int
    groups: int
    kind: str


SHAPES = [
    Shape(2, 16, 32, (12, 12), 3, 1, 1, 1, 1, "random"),
    Shape(2, 16, 32, (12, 11), 3, 2, 1, 1, 1, "full"),
    Shape(2, 8, 64, (11, 11), 5, 1, 2, 1, 1, "ties"),
    Shape(1, 16, 32, (14, 13), 3, 1, 2, 2, 1, "ties"),  # dilation 2
    Shape(2, 32, 32, (10, 10), 3, 1, 1, 1, 32, "full"),  # depthwise: fbgemm's int16 kernel
    Shape(2, 32, 32, (10, 10), 3, 1, 1, 1, 32, "ties"),
    Shape(2, 16, 32, (9, 9), 5, 2, 2, 1, 16, "random"),  # depthwise, channel multiplier 2, stride 2
    Shape(2, 128, 128, (6, 6), 3, 1, 1, 1, 128, "ties"),  # > 100 groups: x86 runs fbgemm
    Shape(1, 128, 128, (6, 6), 3, 2, 1, 1, 128, "full"),
    Shape(2, 64, 64, (8, 8), 1, 1, 0, 1, 1, "small"),  # 1x1, many exact ties
    Shape(2, 16, 32, (8, 8), 3, 1, 1, 1, 4, "small"),  # grouped
    Shape(1, 3, 8, (15, 15), 7, 2, 3, 1, 1, "random"),
    Shape(2, 12, 12, (9, 9), 5, 1, 2, 1, 12, "ties"),  # depthwise, 12 groups: fbgemm's im2col path
    Shape(2, 256, 64, (5, 5), 3, 1, 1, 1, 1, "full"),  # K = 2304: |acc| past 2**24
    Shape(2, 16, 32, (9, 9), 3, 1, 1, 1, 1, "affine"),  # nonzero weight zero points (not onednn)
    Shape(2, 16, 32, (9, 9), 3, 1, 1, 1, 16, "affine"),  # ... in fbgemm's depthwise kernel
    Shape(2, 16, 16, (9, 9), 3, 1, 1, 1, 1, "nobias"),
    Shape(3, 16, 24, (40,), 5, 2, 2, 1, 4, "ties"),  # Conv1d
    Shape(2, 32, 32, (50,), 3, 1, 2, 2, 32, "full"),  # depthwise Conv1d, dilation 2
]

#: the shapes with many ties: enough to tell a rounding rule from a plausible one
ADVERSARIAL = [s for s in SHAPES if s.kind in ("ties", "small")]


@dataclass
class ConvCase:
    """Integers, qparams and geometry of one static conv problem."""

    x_q: Tensor  # uint8 (N, C_in, *size)
    x_scale: float
    x_zero_point: int
    w_q: Tensor  # int8 (C_out, C_in / groups, *kernel)
    w_scale: Tensor  # float32 (C_out,) or (1,)
    w_zero_point: Tensor  # int32, same shape
    bias: Tensor | None
    y_scale: float
    y_zero_point: int
    shape: Shape
    relu: bool

    def layer(self, engine: str) -> conv._QuantConvNd:
        cls = QuantConv1d if len(self.shape.size) == 1 else QuantConv2d
        s = self.shape
        return cls(self.w_q, self.w_scale, self.w_zero_point, self.bias, self.x_scale, self.x_zero_point,
                   self.y_scale, self.y_zero_point, stride=s.stride, padding=s.padding, dilation=s.dilation,
                   groups=s.groups, relu=self.relu, engine=engine)


def reference_accumulator(c: ConvCase) -> Tensor:
    """``sum (x_q - zx)(w_q - zw)`` from float64 ``F.unfold`` patches of ``x_q - zx`` (its zero
    padding is real 0 — what padding with ``zx`` must give) and one float64 product per group
    (exact: every sum < 2**53); int64 (N * OH * OW, C_out)."""
    s = c.shape
    x = c.x_q.to(torch.float64) - c.x_zero_point
    w = c.w_q.to(torch.float64) - c.w_zero_point.to(torch.float64).reshape(-1, *([1] * (c.w_q.dim() - 1)))
    one_d = len(s.size) == 1
    if one_d:
        x, w = x.unsqueeze(2), w.unsqueeze(2)
    two = (lambda v: (1, v)) if one_d else (lambda v: (v, v))
    pad = (0, s.padding) if one_d else (s.padding, s.padding)
    cols = F.unfold(x, w.shape[2:], dilation=two(s.dilation), padding=pad, stride=two(s.stride))  # (N, C*kk, L)
    n, ckk, length = cols.shape
    cols = cols.reshape(n, s.groups, ckk // s.groups, length)  # (N, G, C/G*kk, L)
    w = w.reshape(s.groups, s.c_out // s.groups, -1)  # (G, C_out/G, C/G*kk)
    acc = torch.einsum("gok,ngkl->nlgo", w, cols)  # (N, L, G, C_out/G)
    return acc.reshape(n * length, s.c_out).round().to(torch.int64)


def as_static_case(c: ConvCase) -> StaticCase:
    """The conv as one Linear problem: im2col rows (float64 ``F.unfold`` of the input padded with
    ``zx``) times a block-diagonal weight, so ``force_ties`` can re-choose the bias."""
    s = c.shape
    x = c.x_q.to(torch.float64)
    w = c.w_q
    if len(s.size) == 1:
        x, w = x.unsqueeze(2), w.unsqueeze(2)
    kh, kw = w.shape[2:]
    ph, pw = (0, s.padding) if len(s.size) == 1 else (s.padding, s.padding)
    x = F.pad(x, (pw, pw, ph, ph), value=float(c.x_zero_point))
    dil = (1, s.dilation) if len(s.size) == 1 else s.dilation
    stride = (1, s.stride) if len(s.size) == 1 else s.stride
    cols = F.unfold(x, (kh, kw), dilation=dil, stride=stride)  # (N, C_in * kk, L)
    rows = cols.permute(0, 2, 1).reshape(-1, cols.shape[1]).to(torch.uint8)  # (M, C_in * kk)
    c_g, o_g, kk = s.c_in // s.groups, s.c_out // s.groups, kh * kw
    w_full = torch.zeros(s.c_out, s.c_in * kk, dtype=torch.int8)  # block diagonal (C_out, C_in * kk)
    for g in range(s.groups):
        w_full[g * o_g:(g + 1) * o_g, g * c_g * kk:(g + 1) * c_g * kk] = w[g * o_g:(g + 1) * o_g].reshape(o_g, -1)
    return StaticCase(rows, c.x_scale, c.x_zero_point, w_full, c.w_scale, c.w_zero_point, c.bias, c.y_scale,
                      c.y_zero_point)


def _pow2(g: torch.Generator, lo: int, hi: int) -> float:
    return 2.0 ** -int(torch.randint(lo, hi, (1,), generator=g))


def make_case(g: torch.Generator, s: Shape, per_channel: bool, reduce_range: bool, relu: bool) -> ConvCase:
    """Random integers and qparams for ``s`` (see ``gq_testing.random_static_case`` for the kinds)."""
    x_hi = 127 if reduce_range else 255
    x_shape = (s.n, s.c_in, *s.size)
    w_shape = (s.c_out, s.c_in // s.groups, *([s.k] * len(s.size)))
    x_zp = int(torch.randint(0, x_hi + 1, (1,), generator=g))
    if s.kind == "full":  # extremes only, mostly of one sign per channel: |acc| near its bound
        x_zp = int(torch.randint(0, x_hi // 4, (1,), generator=g))
        x_q = ((torch.rand(x_shape, generator=g) < 0.9).to(torch.int64) * x_hi).to(torch.uint8)
        sign = torch.where(torch.rand(s.c_out, generator=g) < 0.5, 1, -1).reshape(-1, *([1] * len(w_shape[1:])))
        flip = torch.where(torch.rand(w_shape, generator=g) < 0.1, -1, 1)
        w_q = torch.where(sign * flip > 0, 127, -128).to(torch.int8)
    elif s.kind == "small":
        x_zp = min(max(x_zp, 3), x_hi - 3)
        x_q = (x_zp + torch.randint(-3, 4, x_shape, generator=g)).to(torch.uint8)
        w_q = torch.randint(-3, 4, w_shape, generator=g, dtype=torch.int8)
    else:
        x_q = torch.randint(0, x_hi + 1, x_shape, generator=g, dtype=torch.uint8)
        w_q = torch.randint(-128, 128, w_shape, generator=g, dtype=torch.int8)
    nsc = s.c_out if per_channel else 1
    w_zp = torch.zeros(nsc, dtype=torch.int32)
    if s.kind == "affine":
        w_zp = torch.randint(-20, 21, (nsc,), generator=g, dtype=torch.int32)
    if s.kind == "small":
        x_scale = _pow2(g, 2, 9)
        w_scale = torch.tensor([_pow2(g, 2, 12) for _ in range(nsc)], dtype=torch.float32)
    else:
        x_scale = float(torch.rand(1, generator=g) * 0.1 + 1e-3)
        w_scale = (torch.rand(nsc, generator=g) * 0.02 + 1e-4).to(torch.float32)
    c = ConvCase(x_q, x_scale, x_zp, w_q, w_scale, w_zp, None, 1.0, 0, s, relu)
    span = float(reference_accumulator(c).abs().max()) * x_scale * float(w_scale.max()) + 1e-3
    c.y_scale = span / float(torch.randint(30, 250, (1,), generator=g))
    if s.kind == "small":
        c.w_scale = float(w_scale.max()) * 2.0 ** -torch.randint(0, 2, w_scale.shape, generator=g).float()
        c.y_scale = 2.0 * x_scale * float(c.w_scale.max())
        c.bias = (torch.randint(-4000, 4000, (s.c_out,), generator=g).to(torch.float32)
                  * x_scale * c.w_scale.expand(s.c_out) / 4)
    elif s.kind != "nobias":
        c.bias = torch.randn(s.c_out, generator=g) * span / 4
    c.y_zero_point = int(torch.randint(0, 256, (1,), generator=g))
    return c


def torch_ao_conv(engine: str, c: ConvCase) -> Tensor:
    """The output integers of torch.ao's quantized Conv1d/2d (ConvReLU1d/2d) holding ``c``."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    s = c.shape
    one_d = len(s.size) == 1
    kind = (nniq.ConvReLU1d if one_d else nniq.ConvReLU2d) if c.relu else (nnq.Conv1d if one_d else nnq.Conv2d)
    with torch_ao.engine(engine):
        m = kind(s.c_in, s.c_out, s.k, stride=s.stride, padding=s.padding, dilation=s.dilation, groups=s.groups,
                 bias=c.bias is not None)
        m.set_weight_bias(torch_ao.make_qweight(c.w_q, c.w_scale, c.w_zero_point), c.bias)
        m.scale, m.zero_point = c.y_scale, c.y_zero_point
        return m(torch._make_per_tensor_quantized_tensor(c.x_q, c.x_scale, c.x_zero_point)).int_repr()


#: kernel family -> (prerounding, whether it includes the output zero point)
PREROUNDING = {"fbgemm": (fbgemm.prerounding, False), "qnnpack": (qnnpack.prerounding, False),
               "onednn": (conv.onednn_conv_prerounding, True)}


def cases(engine: str, per_channel: bool, seed: int, shapes: list[Shape] = SHAPES):
    """Yield ``(case, kernel family, forced ties)`` for every shape, reduce_range off and on."""
    g = torch.Generator().manual_seed(seed)
    for i, s in enumerate(shapes):
        if engine == "onednn" and s.kind == "affine":
            continue  # oneDNN takes symmetric weights only
        for reduce_range in (False, True):
            c = make_case(g, s, per_channel, reduce_range, relu=(i + reduce_range) % 3 == 0)
            kernel = conv.conv_kernel(engine, s.groups, c.w_zero_point)
            ties = 0
            if s.kind == "ties":
                pre = PREROUNDING[kernel][0]
                sc = as_static_case(c)
                ties = force_ties(sc, lambda a, sx, sw, b, sy, pre=pre: pre(a, sx, sw, b, sy))
                c.bias = sc.bias
            yield c, kernel, ties


def conv_suite(engine: str, per_channel: bool, seed: int, shapes: list[Shape] = SHAPES) -> dict[str, int]:
    """Every case through torch.ao and QuantConv's fast paths (the compiled VNNI kernel where it applies, and
    the torch path with the kernel turned off); counts outputs, mismatches of either, VNNI-run cases, ties."""
    stats = {"outputs": 0, "mismatches": 0, "forced_ties": 0, "exact_ties": 0, "saturating": 0, "vnni_cases": 0}
    for c, kernel, ties in cases(engine, per_channel, seed, shapes):
        ref = torch_ao_conv(engine, c)
        layer = c.layer(engine)
        got = layer.forward_int(c.x_q)
        stats["vnni_cases"] += layer._vnni_plan(kernel) is not None
        layer._vnni_plan = lambda family: None  # the torch path (im2col, _int_mm, the dialect's requantize)
        got_torch = layer.forward_int(c.x_q)
        assert got.dtype == ref.dtype == torch.uint8 and got.shape == ref.shape
        stats["outputs"] += ref.numel()
        stats["mismatches"] += int((ref != got).sum()) + int((ref != got_torch).sum())
        stats["forced_ties"] += ties
        pre_fn = PREROUNDING[kernel][0]
        w_arg = c.w_scale if c.w_scale.numel() > 1 else float(c.w_scale)
        pre = pre_fn(reference_accumulator(c), c.x_scale, w_arg, c.bias, c.y_scale)
        stats["exact_ties"] += int(((pre - torch.floor(pre)) == 0.5).sum())
        stats["saturating"] += int(kernel == "fbgemm" and c.shape.groups == c.shape.c_in >= 8
                                   and int(c.x_q.max()) > 127 and len(c.shape.size) == 2)
    return stats


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_static_conv_bit_exact(engine: str, per_channel: bool) -> None:
    stats = conv_suite(engine, per_channel, seed=11 + 2 * ENGINES.index(engine) + per_channel)
    assert stats["outputs"] >= 100_000, stats
    if engine != "qnnpack":  # qnnpack rounds the bias to int32 first: a bias cannot force a tie
        assert stats["forced_ties"] >= 300, stats
    assert stats["exact_ties"] >= 2_000, stats  # the adversarial cases really produced ties
    assert stats["mismatches"] == 0, stats
    if engine in ("fbgemm", "x86"):
        assert stats["saturating"] >= 1, stats  # fbgemm's depthwise kernel met inputs above 127
    if engine in ("fbgemm", "x86", "onednn") and vnni.available():
        assert stats["vnni_cases"] >= 5, stats  # the compiled conv path really ran


def test_x86_routes_convs_as_pytorch_does() -> None:
    """x86 runs oneDNN for <= 100 groups and symmetric weights on an AVX512-VNNI Linux CPU, else fbgemm."""
    zero, affine = torch.zeros(4, dtype=torch.int32), torch.tensor([0, 1, 0, 0], dtype=torch.int32)
    assert conv.conv_kernel("x86", 100, zero, vnni=True) == "onednn"
    assert conv.conv_kernel("x86", 101, zero, vnni=True) == "fbgemm"
    assert conv.conv_kernel("x86", 1, affine, vnni=True) == "fbgemm"
    assert conv.conv_kernel("x86", 1, zero, vnni=False) == "fbgemm"
    assert [conv.conv_kernel(e, 1, zero) for e in ("fbgemm", "qnnpack", "onednn")] == ["fbgemm", "qnnpack", "onednn"]


def _half_away(kernel: str):
    pre_fn, with_zp = PREROUNDING[kernel]

    def requantize(acc, x_scale, w_scale, bias, y_scale, y_zero_point, relu=False):
        pre = pre_fn(acc, x_scale, w_scale, bias, y_scale, *((y_zero_point,) if with_zp else ()))
        y = round_half_away(pre).to(torch.float64) + (0 if with_zp else y_zero_point)
        return y.clamp(y_zero_point if relu else 0, 255).to(torch.int64).to(torch.uint8)

    return requantize


@pytest.mark.parametrize("engine", ENGINES)
def test_suite_catches_a_wrong_tie_rule(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for kernel in PREROUNDING:  # the PyTorch kernel families
        monkeypatch.setitem(conv.REQUANTIZE, kernel, _half_away(kernel))
    stats = conv_suite(engine, per_channel=False, seed=11, shapes=ADVERSARIAL)
    assert stats["mismatches"] > 100, stats


@pytest.mark.parametrize("engine", ["onednn", "x86"])
def test_onednn_conv_is_not_onednn_linear(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN's conv takes the weight scale as given; its Linear rule (``f32(1 / f32(1 / f64(sw)))``)
    misses forced ties on convs whose weight scales change under that round trip."""
    from glassquant.floatops import f32

    g = torch.Generator().manual_seed(3)
    mismatches = 0
    for per_channel in (False, True):
        c = make_case(g, Shape(2, 64, 256, (4, 4), 1, 1, 0, 1, 1, "ties"), per_channel, False, False)
        candidates = (torch.rand(4096, generator=g) * 0.02 + 1e-4).to(torch.float32)
        candidates = candidates[f32(1.0) / f32(1.0 / candidates.double()) != candidates]  # about 13 %
        c.w_scale = candidates[:c.w_scale.numel()].clone()
        sc = as_static_case(c)
        assert force_ties(sc, lambda a, sx, sw, b, sy: conv.onednn_conv_prerounding(a, sx, sw, b, sy)) > 150
        c.bias = sc.bias
        ref = torch_ao_conv(engine, c)
        assert torch.equal(c.layer(engine).forward_int(c.x_q), ref)
        with monkeypatch.context() as mp:
            mp.setitem(conv.REQUANTIZE, "onednn", onednn.requantize)
            mismatches += int((c.layer(engine).forward_int(c.x_q) != ref).sum())
    assert mismatches > 0


@pytest.mark.parametrize("engine", ["fbgemm", "x86"])
def test_fbgemm_depthwise_saturates_int16_pairs(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the int16 pair saturation of fbgemm's depthwise kernel, full-range inputs mismatch;
    with [0, 127] inputs (reduce_range) no pair can saturate and the exact accumulator is right."""
    g = torch.Generator().manual_seed(5)
    groups = 32 if engine == "fbgemm" else 128  # x86 runs fbgemm only above 100 groups
    s = Shape(2, groups, groups, (10, 10), 3, 1, 1, 1, groups, "full")
    full, reduced = (make_case(g, s, per_channel=True, reduce_range=rr, relu=False) for rr in (False, True))
    assert conv.fbgemm_depthwise_fast_path(groups, groups, groups, (3, 3), (1, 1), (1, 1), (1, 1))
    for c in (full, reduced):
        assert torch.equal(c.layer(engine).forward_int(c.x_q), torch_ao_conv(engine, c))
    monkeypatch.setattr(conv, "fbgemm_depthwise_fast_path", lambda *a: False)
    assert torch.equal(reduced.layer(engine).forward_int(reduced.x_q), torch_ao_conv(engine, reduced))
    assert int((full.layer(engine).forward_int(full.x_q) != torch_ao_conv(engine, full)).sum()) > 100


@pytest.mark.parametrize("engine", ENGINES)
def test_padding_with_integer_zero_is_caught(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Padding with 0 instead of the zero point changes the border outputs."""
    g = torch.Generator().manual_seed(6)
    c = make_case(g, Shape(1, 8, 8, (6, 6), 3, 1, 1, 1, 1, "random"), True, False, False)
    c.x_zero_point = 200
    assert torch.equal(c.layer(engine).forward_int(c.x_q), torch_ao_conv(engine, c))
    monkeypatch.setattr(conv, "pad_with_zero_point", lambda x, zp, p: F.pad(x, (p[1], p[1], p[0], p[0])))
    layer = c.layer(engine)
    layer._vnni_plan = lambda family: None  # the torch path pads with pad_with_zero_point
    assert not torch.equal(layer.forward_int(c.x_q), torch_ao_conv(engine, c))


@pytest.mark.skipif(not vnni.available(), reason="the compiled VNNI library is not built or the CPU lacks VNNI")
def test_compiled_im2col_equals_im2col() -> None:
    """``vnni.im2col_u8`` (the compiled conv path's gather, channels last) == ``conv.im2col`` for one group
    with its columns reordered from (c, i, j) to (i, j, c): strides,
    paddings (read as the zero point), dilations, non-square kernels and inputs, 1x1 kernels."""
    g = torch.Generator().manual_seed(9)
    geometries = [((2, 3, 9, 7), (3, 3), (1, 1), (1, 1), (1, 1)), ((1, 4, 8, 8), (3, 2), (2, 1), (2, 0), (1, 2)),
                  ((3, 1, 5, 11), (1, 4), (1, 3), (0, 3), (1, 1)), ((2, 16, 6, 6), (1, 1), (1, 1), (0, 0), (1, 1)),
                  ((1, 2, 10, 10), (5, 5), (3, 2), (2, 2), (2, 1))]
    for shape, kernel, stride, padding, dilation in geometries:
        x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        for zp in (0, 37, 255):
            ref = conv.im2col(x, zp, kernel, stride, padding, dilation, 1)[0]  # columns (c, i, j)
            ref = ref.reshape(ref.shape[0], shape[1], kernel[0] * kernel[1]).transpose(1, 2).reshape(ref.shape)
            assert torch.equal(vnni.im2col_u8(x, zp, kernel, stride, padding, dilation), ref), (shape, kernel, zp)


def test_float_forward_is_dequantized_forward_int() -> None:
    """``QuantConv2d.forward`` (float in, float out) == eq. 1 of ``forward_int``'s integers, bit for bit."""
    from glassquant.affine import dequantize
    from glassquant.scheme import QScheme

    g = torch.Generator().manual_seed(10)
    for zy, sy in ((0, 0.0292226), (131, 0.3), (255, 1e-3)):
        c = make_case(g, Shape(2, 4, 8, (7, 7), 3, 1, 1, 1, 1, "random"), True, False, False)
        c.y_zero_point, c.y_scale = zy, sy
        layer = c.layer("x86")
        x = torch.randn(2, 4, 7, 7, generator=g)
        y_q = layer.forward_int(layer.quantize_input(x))
        ref = dequantize(y_q, torch.tensor(sy), torch.tensor(zy), QScheme(bits=8, signed=False))
        assert torch.equal(layer(x), ref)


@pytest.mark.parametrize("spatial", [1, 2])
def test_accumulators_fast_and_reference_equal_float64_conv(spatial: int) -> None:
    """``_int_mm`` fast path == ``dialects._base.accumulate`` == float64 ``F.conv`` of ``x_q - zx``."""
    g = torch.Generator().manual_seed(7 + spatial)
    size = (23,) if spatial == 1 else (9, 8)
    for s in [Shape(2, 12, 18, size, 3, 2, 1, 2, 3, "random"), Shape(1, 16, 16, size, 5, 1, 2, 1, 16, "full"),
              Shape(3, 256, 8, size, 3, 1, 1, 1, 1, "full"), Shape(2, 4, 6, size, 1, 1, 0, 1, 2, "affine")]:
        for rr in (False, True):
            c = make_case(g, s, per_channel=rr, reduce_range=rr, relu=False)
            layer = c.layer("qnnpack")
            x2 = c.x_q.unsqueeze(2) if spatial == 1 else c.x_q
            ref = reference_accumulator(c)
            assert torch.equal(layer.accumulate(x2, fast=True), ref)
            assert torch.equal(layer.accumulate(x2, fast=False), ref)
            if s.kind == "full" and s.c_in == 256 and spatial == 2:
                assert int(ref.abs().max()) > 2**24  # float32 would round these


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_modules_round_trip_and_float_forward(engine: str, per_channel: bool) -> None:
    """from_torch_ao / to_torch_ao / from_record keep every integer; float forward equals torch.ao's."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    g = torch.Generator().manual_seed(8)
    for s, relu in [(Shape(2, 6, 10, (9, 10), 3, 2, 1, 1, 2, "random"), True),
                    (Shape(2, 6, 9, (17,), 3, 1, 2, 2, 3, "random"), True),
                    (Shape(2, 8, 8, (7, 7), 3, 1, 1, 1, 8, "nobias"), False)]:
        c = make_case(g, s, per_channel, reduce_range=False, relu=relu)
        layer = c.layer(engine)
        ao = layer.to_torch_ao()
        one_d = len(s.size) == 1
        expected = (nniq.ConvReLU1d if one_d else nniq.ConvReLU2d) if relu else (nnq.Conv1d if one_d else nnq.Conv2d)
        assert type(ao) is expected
        back = type(layer).from_torch_ao(ao, c.x_scale, c.x_zero_point, engine=engine)
        again = type(layer).from_record(*layer.record())
        for other in (back, again):
            assert other.relu == relu and (other.stride, other.padding, other.dilation, other.groups) == (
                layer.stride, layer.padding, layer.dilation, layer.groups)
            for name, t in layer.state_dict().items():
                assert torch.equal(other.state_dict()[name], t), name
        x = torch.randn(s.n, s.c_in, *s.size, generator=g) * 2
        with torch_ao.engine(engine), torch.no_grad():
            ref = ao(torch.quantize_per_tensor(x, c.x_scale, c.x_zero_point, torch.quint8)).dequantize()
        assert torch.equal(layer(x), ref)
        assert torch.equal(again(x), ref)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_from_float_weights_equal_torch_ao_prepare_convert(engine: str, per_channel: bool) -> None:
    """from_float quantizes weights as torch.ao's min/max observers + convert do (symmetric int8)."""
    import torch.ao.quantization as tq

    from glassquant.nn.linear import WEIGHT_PER_CHANNEL, WEIGHT_PER_TENSOR

    torch.manual_seed(0)
    float_conv = torch.nn.Conv2d(4, 8, 3, padding=1, groups=2)
    qconfig = torch_ao.minmax_qconfig(engine, per_channel=per_channel, reduce_range=False)
    with torch_ao.engine(engine):
        m = torch.nn.Sequential(tq.QuantStub(), float_conv, tq.DeQuantStub()).eval()
        m.qconfig = qconfig
        tq.prepare(m, inplace=True)
        m(torch.randn(2, 4, 6, 6))
        tq.convert(m, inplace=True)
        w_ref, s_ref, zp_ref = torch_ao.qtensor_parts(m[1].weight())
    scheme = WEIGHT_PER_CHANNEL if per_channel else WEIGHT_PER_TENSOR
    layer = QuantConv2d.from_float(float_conv, 0.01, 128, 0.02, 128, weight_scheme=scheme, engine=engine)
    assert torch.equal(layer.w_q, w_ref) and torch.equal(layer.w_scale, s_ref)
    assert torch.equal(layer.w_zero_point, zp_ref)
    assert torch.equal(layer.bias, float_conv.bias.detach())


def test_bad_input_names_the_layer() -> None:
    w = torch.zeros(4, 2, 3, 3, dtype=torch.int8)
    s, z = torch.ones(4), torch.zeros(4, dtype=torch.int32)
    with pytest.raises(TypeError, match="c1: w_q"):
        QuantConv2d(w.float(), s, z, None, 0.1, 0, 0.1, 0, name="c1")
    with pytest.raises(ValueError, match="c1: groups"):
        QuantConv2d(w, s, z, None, 0.1, 0, 0.1, 0, groups=3, name="c1")
    with pytest.raises(ValueError, match="c1: stride"):
        QuantConv2d(w, s, z, None, 0.1, 0, 0.1, 0, stride=0, name="c1")
    with pytest.raises(ValueError, match="c1: bias shape"):
        QuantConv2d(w, s, z, torch.zeros(3), 0.1, 0, 0.1, 0, name="c1")
    with pytest.raises(ValueError, match="c1: x_zero_point"):
        QuantConv2d(w, s, z, None, 0.1, 300, 0.1, 0, name="c1")
    with pytest.raises(ValueError, match="c1: the onednn engine takes symmetric"):
        QuantConv2d(w, s, z + 1, None, 0.1, 0, 0.1, 0, engine="onednn", name="c1")
    with pytest.raises(ValueError, match="c1: w_q must be"):
        QuantConv1d(w, s, z, None, 0.1, 0, 0.1, 0, name="c1")
    layer = QuantConv2d(w, s, z, None, 0.1, 0, 0.1, 0, name="c1")
    with pytest.raises(TypeError, match="c1: x_q"):
        layer.forward_int(torch.zeros(1, 2, 5, 5, dtype=torch.int8))
    with pytest.raises(ValueError, match="c1: input must be"):
        layer.forward_int(torch.zeros(1, 3, 5, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"c1: input .* smaller than"):
        layer.forward_int(torch.zeros(1, 2, 2, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="c1: input"):
        layer(torch.full((1, 2, 5, 5), math.nan))
    with pytest.raises(TypeError, match=r"expected torch\.nn\.Conv2d"):
        QuantConv2d.from_float(torch.nn.Conv1d(2, 2, 3), 0.1, 0, 0.1, 0, name="c1")
    with pytest.raises(ValueError, match="zero padding"):
        QuantConv2d.from_float(torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), 0.1, 0, 0.1, 0)
    # 1100 * 8 * 8 = 70,400 taps of -128 against inputs up to 255: > 2**31 - 1
    with pytest.raises(AccumulatorOverflowError, match="big: worst-case"):
        QuantConv2d(torch.full((1, 1100, 8, 8), -128, dtype=torch.int8), torch.ones(1),
                    torch.zeros(1, dtype=torch.int32), None, 0.1, 0, 0.1, 0, name="big")
