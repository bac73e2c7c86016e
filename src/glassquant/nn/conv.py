"""Static int8 convolutions: im2col on integers, an exact accumulator, each engine's requantize.

``QuantConv1d`` / ``QuantConv2d``: uint8 activations (per tensor), int8 weights (per output
channel or per tensor) in torch's ``(C_out, C_in / groups, kH, kW)`` layout, float32 bias,
stride / padding / dilation / groups, fused ReLU. The integer path:

1. pad with the input *zero point* (the integer for real 0), never with integer 0;
2. im2col: ``cols[g]`` uint8 ``(N * OH * OW, C_in / groups * kH * kW)`` for each group;
3. ``acc = sum_k (x_q - zx)(w_q - zw)`` per group, exactly (eq. 4: ``dialects._base.accumulate``
   or the ``torch._int_mm`` fast path, bit-identical);
4. requantize to uint8 with the rule of the kernel PyTorch runs (eq. 5).

Which kernel runs, and its rules (proven bit for bit against ``torch.ao.nn.quantized.Conv1d``,
``Conv2d`` and ``intrinsic.quantized.ConvReLU2d`` in tests/equivalence/test_conv.py, torch 2.13
CPU, x86-64 with AVX512-VNNI):

- ``qnnpack``: the qnnpack Linear rule (``dialects.qnnpack.requantize``).
- ``fbgemm``: the fbgemm Linear rule (``dialects.fbgemm.requantize``), with one exception in the
  accumulator. fbgemm's depthwise kernel (``takeDepthWiseFastPath``: ``groups == C_in``,
  ``groups % 8 == 0``, ``C_out`` = 1 or 2 x ``groups``, square 3x3 / 5x5 / 7x7 kernel, stride 1
  or 2, dilation 1, padding ``(k - 1) / 2``; measured: 9x9, even kernels, dilation 2, stride 3
  and 12 groups all take the exact path) multiplies the *raw* uint8 inputs by the weights two
  kernel taps at a time (``vpmaddubsw``) and saturates each pair sum to int16:
  ``acc = sum_pairs sat16(x[t] w[t] + x[t+1] w[t+1]) - zx * sum_t w[t]`` (taps in ``kH*kW``
  order, an odd last tap paired with 0; plus the weight-zero-point terms). A pair can saturate
  only if an input exceeds 127, so with ``reduce_range`` (inputs in [0, 127], fbgemm's default)
  the accumulator is exact; with full-range inputs the exact accumulator misses 15 % (random
  inputs) to 85 % (extreme inputs) of a depthwise layer's outputs, by up to 101 steps.
  glassquant reproduces the saturation (:func:`fbgemm_depthwise_accumulate`). Every other
  fbgemm conv (im2col, pointwise, the groupwise kernel) is exact on the full uint8 range.
- ``onednn`` (and ``x86`` when PyTorch routes a conv to oneDNN: ``should_use_onednn_quant`` =
  Linux, AVX512-VNNI, ``groups <= 100``, every weight zero point 0; otherwise ``x86`` runs
  fbgemm). oneDNN's *convolution* scales differently from its Linear: the weight scale
  enters as given, not as a float32 reciprocal inverted back:
  ``sx' = f32(1 / f32(1 / f64(sx)))``, ``inv_sy = f32(1 / f32(1 / f32(1 / f64(sy))))``,
  ``y_q = clamp(rne(f32(f32(f32(f32(f32(acc) * sx') * f32(sw[n])) + b) * inv_sy) + zy), 0, 255)``.
  Found by forcing ties with the bias (as ``tests/gq_testing.force_ties``, with the Linear
  rule's own formula): the Linear rule (``sw' = f32(1 / f32(1 / f64(sw)))``) missed 76 of
  720,768 outputs, every one an exact tie broken the other way; of 288 orderings searched
  (reciprocals of each scale, combined or sequential scaling, FMA or not for bias and zero
  point, zero point before or after rounding) only this one misses none.

Fused ReLU clamps below at ``zy``. Conv1d runs as Conv2d with ``H = 1`` (as PyTorch does).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import dialects
from ..dialects import fbgemm, onnx, qnnpack
from ..dialects._base import INT32_MAX, accumulate, as_column, check_int32, worst_case_accumulator
from ..errors import AccumulatorOverflowError, check_finite, check_integer
from ..floatops import f32
from ..kernels import vnni
from ..kernels.cpu import PackedWeight, accumulate_int_mm
from ..scheme import QScheme
from .base import QuantModule, quantize_static_input, register
from .linear import WEIGHT_PER_CHANNEL, quantize_weight


def _pair(v: int | Sequence[int], n: int, label: str, name: str) -> tuple[int, ...]:
    """``v`` as a tuple of ``n`` Python ints (an int is repeated)."""
    t = (int(v),) * n if isinstance(v, int) else tuple(int(i) for i in v)
    if len(t) != n:
        raise ValueError(f"{name}: {label} must have {n} value(s), got {v!r}")
    return t


def _round_trip_f64(s: float) -> Tensor:
    """``f32(1 / f32(1 / f64(s)))``: a scale PyTorch hands oneDNN as a reciprocal, inverted back."""
    return f32(1.0) / f32(1.0 / torch.tensor(float(s), dtype=torch.float64))


def onednn_conv_prerounding(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
                            y_scale: float, y_zero_point: int = 0) -> Tensor:
    """The float32 value oneDNN's int8 convolution rounds to give ``y_q`` (zero point included).

    Numerics: acc int64 (M, N) holding int32 values; float32 throughout, one rounding per
    operation, in this order: ``f32(acc) * sx'``, ``* f32(sw[n])``, ``+ b``, ``* inv_sy``, ``+ f32(zy)``
    with ``sx' = f32(1 / f32(1 / f64(sx)))`` and ``inv_sy = f32(1 / f32(1 / f32(1 / f64(sy))))``
    (module docstring). Returns float32 (M, N).
    """
    n = acc.shape[-1]
    sw = f32(as_column(w_scale, n, torch.float64))  # (N,) float32, as given
    v = (f32(acc) * _round_trip_f64(x_scale)) * sw  # (M, N) float32, in this order
    if bias is not None:
        v = v + f32(bias)
    inv_y_scale = f32(1.0) / _round_trip_f64(y_scale)  # three reciprocals: f64, f32, f32
    return v * inv_y_scale + f32(float(y_zero_point))


def onednn_conv_requantize(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
                           y_scale: float, y_zero_point: int, relu: bool = False) -> Tensor:
    """int32 accumulators (M, N) to uint8: ``clamp(rne(onednn_conv_prerounding), lo, 255)``, ``lo = zy``
    with fused ReLU, else 0 (zero point added before rounding, in float32)."""
    y = torch.round(onednn_conv_prerounding(acc, x_scale, w_scale, bias, y_scale, y_zero_point))
    return y.to(torch.float64).clamp(y_zero_point if relu else 0, 255).to(torch.int64).to(torch.uint8)


#: kernel family -> requantize(acc, x_scale, w_scale, bias, y_scale, y_zero_point, relu)
REQUANTIZE = {"fbgemm": fbgemm.requantize, "qnnpack": qnnpack.requantize, "onednn": onednn_conv_requantize,
              "onnx": onnx.requantize}


#: kernel family -> the requantize the compiled VNNI epilogue reproduces (GQ_OUT_STATIC_U8, GQ_OUT_ONEDNN_U8);
#: a family whose REQUANTIZE entry is anything else keeps the torch path
_VNNI_RULES = {"fbgemm": fbgemm.requantize, "onednn": onednn_conv_requantize}


@functools.lru_cache(maxsize=1)
def cpu_has_avx512_vnni() -> bool:
    """Whether this Linux CPU reports AVX512-VNNI (PyTorch's ``cpuinfo_has_x86_avx512vnni``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "avx512_vnni" in line.split() for line in f)
    except OSError:
        return False


def conv_kernel(engine: str, groups: int, w_zero_point: Tensor, vnni: bool | None = None) -> str:
    """The kernel family (``"fbgemm"``, ``"qnnpack"``, ``"onednn"``) that runs an engine's static conv.

    ``x86`` picks oneDNN on Linux with AVX512-VNNI when ``groups <= 100`` and every weight zero
    point is 0 (PyTorch's ``should_use_onednn_quant``), else fbgemm. ``vnni=None`` reads this CPU.
    """
    dialects.get(engine)
    if engine == "x86":
        vnni = cpu_has_avx512_vnni() if vnni is None else vnni
        symmetric = not bool(w_zero_point.ne(0).any())
        return "onednn" if vnni and groups <= 100 and symmetric else "fbgemm"
    return engine


def fbgemm_depthwise_fast_path(in_channels: int, out_channels: int, groups: int, kernel_size: Sequence[int],
                               stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> bool:
    """fbgemm's ``takeDepthWiseFastPath`` for a 2-D conv (the kernel with int16 pair sums)."""
    kh, kw = kernel_size
    return (groups == in_channels and groups % 8 == 0 and out_channels in (groups, 2 * groups)
            and kh == kw and kh in (1, 3, 5, 7) and all(s in (1, 2) for s in stride)
            and all(d == 1 for d in dilation) and tuple(padding) == ((kh - 1) // 2, (kw - 1) // 2))


def pad_with_zero_point(x_q: Tensor, zero_point: int, padding: Sequence[int]) -> Tensor:
    """uint8 (N, C, H, W) padded by ``padding = (ph, pw)`` on each side with ``zero_point`` (real 0).

    Numerics: exact; output uint8 (N, C, H + 2 ph, W + 2 pw).
    """
    ph, pw = padding
    return F.pad(x_q, (pw, pw, ph, ph), value=int(zero_point))


def conv_taps(x_q: Tensor, zero_point: int, kernel_size: Sequence[int], stride: Sequence[int],
              padding: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """Every input a 2-D kernel sees: uint8 (N, C, OH, OW, kH * kW), taps in ``kH*kW`` order (a view)."""
    kh, kw = kernel_size
    (dh, dw), (sh, sw) = dilation, stride
    xp = pad_with_zero_point(x_q, zero_point, padding)  # (N, C, Hp, Wp)
    t = xp.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)  # (N, C, OH, OW, ekH, ekW)
    t = t[..., ::dh, ::dw]  # (N, C, OH, OW, kH, kW)
    return t.flatten(-2)


def im2col(x_q: Tensor, zero_point: int, kernel_size: Sequence[int], stride: Sequence[int],
           padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """Patches of a uint8 (N, C, H, W) input as matrices, one per group: (G, N * OH * OW, C / G * kH * kW).

    Row ``m = (n, oh, ow)`` holds, for channels ``c`` of group ``g`` and taps ``(i, j)`` in
    ``(c, i, j)`` order (torch's weight layout), ``x_pad[n, c, oh * sh + i * dh, ow * sw + j * dw]``.
    Numerics: an exact gather, uint8.
    """
    n, c = x_q.shape[:2]
    t = conv_taps(x_q, zero_point, kernel_size, stride, padding, dilation)  # (N, C, OH, OW, kk)
    oh, ow, kk = t.shape[2:]
    t = t.reshape(n, groups, c // groups, oh, ow, kk).permute(1, 0, 3, 4, 2, 5)  # (G, N, OH, OW, C/G, kk)
    return t.reshape(groups, n * oh * ow, (c // groups) * kk)


def fbgemm_depthwise_accumulate(x_q: Tensor, x_zero_point: int, w_q: Tensor, w_zero_point: Tensor,
                                stride: Sequence[int], padding: Sequence[int]) -> Tensor:
    """fbgemm's depthwise accumulator, int16 saturation included: int64 (N * OH * OW, C_out).

    ``acc = sum_pairs sat16(x[t] w[t] + x[t+1] w[t+1]) - zx sum_t w[t] - zw sum_t x[t] + kk zx zw``
    over the ``kk = kH*kW`` taps in ``kH*kW`` order (an odd last tap paired with 0); ``x`` are the
    raw uint8 inputs (padding holds ``zx``); output channel ``o`` reads input channel
    ``o // (C_out / C_in)``. Numerics: x_q uint8 (N, C, H, W), w_q int8 (C_out, 1, k, k); each
    pair sum clamped to [-32768, 32767] (``vpmaddubsw``), the rest exact. Equals eq. 4 whenever no
    pair saturates, which needs an input above 127.
    """
    c_out, _, kh, kw = w_q.shape
    kk = kh * kw
    t = conv_taps(x_q, x_zero_point, (kh, kw), stride, padding, (1, 1)).to(torch.int64)  # (N, C, OH, OW, kk)
    t = t.repeat_interleave(c_out // x_q.shape[1], dim=1)  # (N, C_out, OH, OW, kk)
    w = w_q.to(torch.int64).reshape(1, c_out, 1, 1, kk)
    zw = as_column(w_zero_point, c_out, torch.int64).reshape(1, c_out, 1, 1)
    prod = t * w
    if kk % 2:
        prod = F.pad(prod, (0, 1))  # (..., kk + 1): the last tap pairs with 0
    pair_sum = prod.reshape(*prod.shape[:-1], -1, 2).sum(-1).clamp(-(2**15), 2**15 - 1)  # (..., pairs)
    zx = int(x_zero_point)
    acc = pair_sum.sum(-1) - zx * w.sum(-1) - zw * t.sum(-1) + kk * zx * zw  # (N, C_out, OH, OW)
    return acc.permute(0, 2, 3, 1).reshape(-1, c_out)


class _QuantConvNd(QuantModule):
    """Static int8 convolution over ``spatial`` dims (1 or 2); see the module docstring.

    Buffers: ``w_q`` int8 (C_out, C_in / groups, *kernel); ``w_scale`` float32 (C_out,) or (1,);
    ``w_zero_point`` int32, same shape; ``bias`` float32 (C_out,) or absent. Input and output
    qparams, stride, padding, dilation, groups are metadata.
    """

    spatial: ClassVar[int] = 2
    meta_fields = ("x_scale", "x_zero_point", "y_scale", "y_zero_point", "stride", "padding", "dilation",
                   "groups", "relu", "engine", "name", "check_overflow")
    w_q: Tensor
    w_scale: Tensor
    w_zero_point: Tensor
    bias: Tensor | None

    def __init__(self, w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor, bias: Tensor | None,
                 x_scale: float, x_zero_point: int, y_scale: float, y_zero_point: int, *,
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, relu: bool = False,
                 engine: str = "x86", name: str | None = None, check_overflow: bool = True) -> None:
        super().__init__()
        name = name or self.kind
        d = self.spatial
        check_integer(w_q, f"{name}: w_q", (torch.int8,))
        if w_q.dim() != 2 + d:
            raise ValueError(f"{name}: w_q must be (C_out, C_in/groups, {', '.join('k' * d)}), got {tuple(w_q.shape)}")
        c_out = w_q.shape[0]
        self.stride, self.padding = _pair(stride, d, "stride", name), _pair(padding, d, "padding", name)
        self.dilation, self.groups = _pair(dilation, d, "dilation", name), int(groups)
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(f"{name}: stride and dilation must be >= 1 and padding >= 0, got stride "
                             f"{self.stride}, padding {self.padding}, dilation {self.dilation}")
        if self.groups < 1 or c_out % self.groups:
            raise ValueError(f"{name}: groups = {groups} must be >= 1 and divide C_out = {c_out}")
        w_scale = torch.as_tensor(w_scale, dtype=torch.float32).reshape(-1)
        w_zero_point = torch.as_tensor(w_zero_point, dtype=torch.int32).reshape(-1)
        if w_scale.numel() not in (1, c_out) or w_zero_point.numel() != w_scale.numel():
            raise ValueError(f"{name}: w_scale and w_zero_point must both have 1 or {c_out} elements, got "
                             f"{w_scale.numel()} and {w_zero_point.numel()}")
        if not bool((w_scale > 0).all() and torch.isfinite(w_scale).all()):
            raise ValueError(f"{name}: w_scale must be finite and positive")
        if bias is not None:
            check_finite(bias, f"{name}: bias")
            if bias.shape != (c_out,):
                raise ValueError(f"{name}: bias shape {tuple(bias.shape)} != ({c_out},)")
        for label, s in (("x_scale", x_scale), ("y_scale", y_scale)):
            if not 0 < float(s) < float("inf"):
                raise ValueError(f"{name}: {label} must be a finite positive number, got {s}")
        for label, z in (("x_zero_point", x_zero_point), ("y_zero_point", y_zero_point)):
            if not 0 <= int(z) <= 255:
                raise ValueError(f"{name}: {label} {z} outside uint8 [0, 255]")
        dialects.get(engine)  # validates the engine name
        if engine == "onednn" and bool(w_zero_point.ne(0).any()):
            raise ValueError(f"{name}: the onednn engine takes symmetric weights only (weight zero points 0)")
        self.engine, self.relu, self.name = engine, bool(relu), name
        self.x_scale, self.x_zero_point = float(x_scale), int(x_zero_point)
        self.y_scale, self.y_zero_point = float(y_scale), int(y_zero_point)
        self.register_buffer("w_q", w_q.contiguous())
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_zero_point", w_zero_point)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.check_overflow = check_overflow
        bound = worst_case_accumulator(w_q.reshape(c_out, -1), w_zero_point, 0, 255, self.x_zero_point)
        self.accumulator_bound = int(bound.max())
        if check_overflow and self.accumulator_bound > INT32_MAX:
            raise AccumulatorOverflowError(
                f"{name}: worst-case |accumulator| {self.accumulator_bound} > 2**31 - 1 for "
                f"{w_q[0].numel()} terms per output; some uint8 input would overflow int32")
        self._packed: list[PackedWeight] | None = None
        self._vnni: vnni.PlanCache[vnni.Plan] = vnni.PlanCache()

    @property
    def in_channels(self) -> int:
        return int(self.w_q.shape[1]) * self.groups

    @property
    def out_channels(self) -> int:
        return int(self.w_q.shape[0])

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.w_q.shape[2:])

    @property
    def kernel_family(self) -> str:
        """The kernel family PyTorch runs for this layer on this machine (see :func:`conv_kernel`)."""
        return conv_kernel(self.engine, self.groups, self.w_zero_point)

    def _as_2d(self) -> tuple[Tensor, tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
        """Weight and geometry lifted to 2-D (Conv1d: ``H = 1``, kernel ``(1, k)``)."""
        if self.spatial == 2:
            return self.w_q, self.kernel_size, self.stride, self.padding, self.dilation  # type: ignore[return-value]
        (k,), (s,), (p,), (dl,) = self.kernel_size, self.stride, self.padding, self.dilation
        return self.w_q.unsqueeze(2), (1, k), (1, s), (0, p), (1, dl)

    def accumulate(self, x_q: Tensor, fast: bool = True) -> Tensor:
        """Exact int32 accumulators (as int64) (N * OH * OW, C_out) of a uint8 (N, C, H, W) input (eq. 4).

        ``fast``: one ``torch._int_mm`` per group; else ``dialects._base.accumulate``. Identical.
        """
        w_q, kernel, stride, padding, dilation = self._as_2d()
        cols = im2col(x_q, self.x_zero_point, kernel, stride, padding, dilation, self.groups)  # (G, M, Kg)
        c_g = self.out_channels // self.groups
        w_g = w_q.reshape(self.groups, c_g, -1)  # (G, C_out/G, Kg)
        zw = as_column(self.w_zero_point, self.out_channels, torch.int64).reshape(self.groups, c_g)
        if not fast:
            accs = [accumulate(cols[g], self.x_zero_point, w_g[g], zw[g], self.name) for g in range(self.groups)]
        else:
            if self._packed is None:
                self._packed = [PackedWeight.pack(w_g[g], zw[g]) for g in range(self.groups)]
            accs = [accumulate_int_mm(cols[g], self.x_zero_point, packed, self.name)
                    for g, packed in enumerate(self._packed)]
        return torch.cat(accs, dim=1)  # G x (M, Kg) @ (Kg, C_out/G) -> (M, C_out), channels in group order

    def forward_int(self, x_q: Tensor, fast: bool = True) -> Tensor:
        """uint8 (N, C_in, *spatial) -> uint8 (N, C_out, *out_spatial): integers until the requantize."""
        check_integer(x_q, f"{self.name}: x_q", (torch.uint8,))
        if x_q.dim() != 2 + self.spatial or x_q.shape[1] != self.in_channels:
            raise ValueError(f"{self.name}: input must be (N, {self.in_channels}, {', '.join('L' * self.spatial)}), "
                             f"got {tuple(x_q.shape)}")
        x2 = x_q.unsqueeze(2) if self.spatial == 1 else x_q  # (N, C, H, W)
        w_q, kernel, stride, padding, dilation = self._as_2d()
        oh, ow = ((x2.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                  for i in range(2))
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.name}: input {tuple(x_q.shape)} is smaller than the (dilated) kernel")
        kernel_family = self.kernel_family
        if (kernel_family == "fbgemm" and int(x2.max()) > 127
                and fbgemm_depthwise_fast_path(self.in_channels, self.out_channels, self.groups, kernel, stride,
                                               padding, dilation)):
            acc = fbgemm_depthwise_accumulate(x2, self.x_zero_point, w_q, self.w_zero_point, stride, padding)
            check_int32(acc, self.name)
        elif (plan := self._vnni_plan(kernel_family) if fast and x2.device.type == "cpu" and x2.numel() > 0
              else None) is not None:
            # one compiled call on the im2col rows: the same integers (kernels/vnni.py, _vnni_epilogue.c)
            cols = vnni.im2col_u8(x2, self.x_zero_point, kernel, stride, padding, dilation)  # (N * OH * OW, K)
            acc = None
            y_q = vnni.run_uint8(plan, cols)  # (M, C_out)
        else:
            acc = self.accumulate(x2, fast)  # (N * OH * OW, C_out)
        if acc is not None:
            w_scale = self.w_scale if self.w_scale.numel() > 1 else float(self.w_scale)
            y_q = REQUANTIZE[kernel_family](acc, self.x_scale, w_scale, self.bias, self.y_scale, self.y_zero_point,
                                            self.relu)  # (M, C_out)
        y_q = y_q.reshape(x2.shape[0], oh, ow, self.out_channels).permute(0, 3, 1, 2).contiguous()
        return y_q.squeeze(2) if self.spatial == 1 else y_q

    def quantize_input(self, x: Tensor) -> Tensor:
        """Float input to uint8 with this layer's input qparams and the engine's rule."""
        return quantize_static_input(self, x)

    def _vnni_plan(self, kernel_family: str) -> vnni.Plan | None:
        """The compiled AVX512-VNNI plan for ``groups = 1`` convolutions of the oneDNN family (oneDNN's
        requantize) or the fbgemm family (fbgemm's, as the static Linear), rebuilt when a buffer or
        setting changes; None where it does not apply (no VNNI, groups > 1, another family, an
        asymmetric weight, a weight whose worst-case accumulator could leave int32)."""
        if not vnni.available() or self.groups != 1 or REQUANTIZE.get(kernel_family) is not _VNNI_RULES.get(
                kernel_family):  # the compiled epilogue implements exactly these two rules
            return None
        b = self._buffers
        w_q, w_scale, w_zero_point = b["w_q"], b["w_scale"], b["w_zero_point"]
        assert w_q is not None and w_scale is not None and w_zero_point is not None
        return self._vnni.get(w_q, w_scale, w_zero_point, b["bias"],
                              (kernel_family, self.relu, self.x_scale, self.x_zero_point, self.y_scale,
                               self.y_zero_point), lambda: self._build_vnni_plan(kernel_family))

    def _build_vnni_plan(self, kernel_family: str) -> vnni.Plan | None:
        if self.w_q.device.type != "cpu" or self.accumulator_bound > INT32_MAX:
            return None
        # (C_out, kH * kW * C_in): the channels-last column order of vnni.im2col_u8 -- a reordered copy of the
        # weight (C_out * K bytes) that the plan holds, the only extra memory of the compiled conv path
        w_q, _, _, _, _ = self._as_2d()
        w2 = w_q.permute(0, 2, 3, 1).reshape(self.out_channels, -1).contiguous()
        if kernel_family == "fbgemm":
            return vnni.plan_static(w2, self.w_scale, self.w_zero_point, self.bias, self.x_scale,
                                    self.x_zero_point, self.y_scale, self.y_zero_point, self.relu)
        x_scale_rt = float(_round_trip_f64(self.x_scale))
        inv_y_scale = float(f32(1.0) / _round_trip_f64(self.y_scale))
        return vnni.plan_onednn_conv(w2, self.w_scale, self.w_zero_point, self.bias, x_scale_rt, self.x_zero_point,
                                     inv_y_scale, self.y_zero_point, self.relu)

    def forward(self, x: Tensor) -> Tensor:
        y_q = self.forward_int(self.quantize_input(x))
        # affine.dequantize's f32(q - zy) * f32(sy) in two float32 passes: q - zy is an integer of at most
        # 255 in magnitude, exact in float32 either way, so the floats are the same (tested)
        return y_q.to(torch.float32).sub_(float(self.y_zero_point)).mul_(float(f32(self.y_scale)))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, engine={self.engine}, "
                f"relu={self.relu}, x=({self.x_scale:.6g}, {self.x_zero_point}), "
                f"y=({self.y_scale:.6g}, {self.y_zero_point})")

    @classmethod
    def from_float(cls, conv: nn.Module, x_scale: float, x_zero_point: int, y_scale: float, y_zero_point: int,
                   *, weight_scheme: QScheme = WEIGHT_PER_CHANNEL, relu: bool = False, engine: str = "x86",
                   name: str | None = None) -> Any:
        """Quantize a float ``nn.Conv1d`` / ``nn.Conv2d`` (min/max weight qparams, as torch.ao)."""
        name = name or cls.kind
        float_type = nn.Conv1d if cls.spatial == 1 else nn.Conv2d
        if type(conv) is not float_type:
            raise TypeError(f"{name}: expected torch.nn.{float_type.__name__}, got {type(conv).__name__}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{name}: only numeric zero padding is supported, got padding={conv.padding!r}, "
                             f"padding_mode={conv.padding_mode!r}")
        w = conv.weight.detach()
        w_q, w_scale, w_zp = quantize_weight(w.reshape(w.shape[0], -1), weight_scheme, engine, f"{name}.weight")
        bias = None if conv.bias is None else conv.bias.detach()
        return cls(w_q.reshape(w.shape), w_scale, w_zp, bias, x_scale, x_zero_point, y_scale, y_zero_point,
                   stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                   relu=relu, engine=engine, name=name)

    @classmethod
    def from_torch_ao(cls, module: Any, x_scale: float, x_zero_point: int, engine: str = "x86") -> Any:
        """From a ``torch.ao.nn.quantized.Conv1d`` / ``Conv2d`` (or ``intrinsic.quantized.ConvReLU1d/2d``)."""
        from ..interop import torch_ao

        ok, why = torch_ao.available()
        if not ok:
            raise RuntimeError(why)
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq

        ao_type = nnq.Conv1d if cls.spatial == 1 else nnq.Conv2d
        if not isinstance(module, ao_type):
            raise TypeError(f"expected torch.ao.nn.quantized.{ao_type.__name__}, got {type(module).__name__}")
        if module.padding_mode != "zeros":
            raise ValueError(f"{cls.kind}: only zero padding is supported, got {module.padding_mode!r}")
        with torch_ao.engine(engine):
            w_q, w_scale, w_zp = torch_ao.qtensor_parts(module.weight())
            bias = module.bias()
        relu_type = nniq.ConvReLU1d if cls.spatial == 1 else nniq.ConvReLU2d
        return cls(w_q, w_scale, w_zp, bias, x_scale, x_zero_point, float(module.scale), int(module.zero_point),
                   stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
                   relu=isinstance(module, relu_type), engine=engine)

    def to_torch_ao(self) -> Any:
        """An equivalent ``torch.ao.nn.quantized.Conv1d/2d`` (``ConvReLU1d/2d`` with fused ReLU)."""
        from ..interop import torch_ao

        ok, why = torch_ao.available()
        if not ok:
            raise RuntimeError(why)
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq

        kind: Any
        if self.spatial == 1:
            kind = nniq.ConvReLU1d if self.relu else nnq.Conv1d
        else:
            kind = nniq.ConvReLU2d if self.relu else nnq.Conv2d
        with torch_ao.engine(self.engine):
            m = kind(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
                     dilation=self.dilation, groups=self.groups, bias=self.bias is not None)
            m.set_weight_bias(torch_ao.make_qweight(self.w_q, self.w_scale, self.w_zero_point), self.bias)
            m.scale, m.zero_point = self.y_scale, self.y_zero_point
        return m


@register
class QuantConv1d(_QuantConvNd):
    """Static int8 Conv1d: uint8 (N, C_in, L) -> uint8 (N, C_out, L_out); weights (C_out, C_in/groups, k)."""

    kind = "QuantConv1d"
    spatial = 1


@register
class QuantConv2d(_QuantConvNd):
    """Static int8 Conv2d: uint8 (N, C_in, H, W) -> uint8 (N, C_out, OH, OW); weights (C_out, C_in/groups, kH, kW)."""

    kind = "QuantConv2d"
    spatial = 2
