"""tflite dialect: LiteRT 2.3's int8 FULLY_CONNECTED, CONV_2D, QUANTIZE and DEQUANTIZE, per op resolver.

LiteRT picks kernels by op resolver, and on x86 the three round differently. ``kernel`` names one
(``interop.litert`` maps it to ``OpResolverType``): ``reference`` (``BUILTIN_REF``), ``xnnpack``
(``AUTO``, the default) and ``optimized`` (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``, ruy's GEMM).
``acc`` is the exact int32 accumulator *with* the int32 bias; ``sx, sw, sy`` the float32 scales of
input, weight (one, or one per output channel) and output; ``zy`` the output zero point. The output
is ``clamp(r + zy, lo, 127)``, ``lo = max(-128, zy)`` with a fused RELU, else -128, where ``r`` is:

* ``float64_half_away`` (reference FULLY_CONNECTED): ``round_half_away(f64(acc) * M)``,
  ``M = (f64(sx) * f64(sw)) / f64(sy)`` — no Q31 multiplier at all;
* ``q31_gemmlowp`` (reference CONV_2D): gemmlowp's double rounding ``RoundingDivideByPOT(SRDHM(acc,
  q), e)`` with ``(q, shift) = QuantizeMultiplier(M)``, ``e = -shift``;
* ``float32_half_even`` (xnnpack, both ops): ``rne(f32(acc) * S)``, ``S = f32(f32(sx * sw) / sy)``;
* ``q31_half_up`` (optimized, both ops): ``h = SRDHM(acc << max(shift, 0), q)`` then
  ``(h + 2**(e-1)) >> e`` — two roundings, *both* half up (older ruy x86 kernels); for a
  FULLY_CONNECTED with one weight scale, ``M = f64(f32(sx * sw)) / f64(sy)`` (float32 product).

None is TFLite's single-rounding ``MultiplyByQuantizedMultiplier`` (``q31_single``, kept as a
mutant). QUANTIZE (float32 -> int8): reference ``round_half_away(f32(x / s)) + zp``; xnnpack
``rne(f32(x * f32(1 / s))) + zp``; optimized the same except the last ``n % 8`` elements (scalar
loop): ``round_half_away(f64(x) / f64(s)) + zp``; clamp to [-128, 127]. DEQUANTIZE: reference and
xnnpack ``f32(f32(q - zp) * s)``; optimized ``f32(f32(q * s) + f32(-zp * s))`` but the first form
for the last ``n % 8`` elements.
Proven against the real interpreter in tests/equivalence/test_litert.py; docs/dialects-tflite.md
has the counts and how each rule was found.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import check_finite, check_integer
from ..fixedpoint import (
    quantize_multiplier,
    requantize_double_rounding,
    requantize_single_rounding,
    rounding_right_shift,
    saturating_rounding_doubling_high_mul,
)
from ..floatops import f32
from ..rounding import round_half_away
from ._base import INT32_MAX, INT32_MIN, accumulate, as_column, check_int32

NAME = "tflite"
KERNELS = ("reference", "xnnpack", "optimized")
QMIN, QMAX = -128, 127
__all__ = [
    "KERNELS",
    "NAME",
    "RULES",
    "RULE_NAMES",
    "apply_rule",
    "conv2d",
    "conv_accumulate",
    "conv_output_size",
    "dequantize",
    "effective_scale",
    "float_scale",
    "linear",
    "output_multipliers",
    "prerounding",
    "quantize",
    "quantize_bias",
    "requantize",
    "rule_of",
    "same_padding",
]


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown tflite kernel {kernel!r}; choose one of {KERNELS}")


def _weight_scales(w_scale: Tensor | float, n: int) -> Tensor:
    """Weight scales as float32 ``(N,)`` (one scale is broadcast), checked finite and positive."""
    sw = f32(as_column(torch.as_tensor(w_scale, dtype=torch.float64).reshape(-1), n, torch.float64))
    if not bool(((sw > 0) & torch.isfinite(sw)).all()):
        raise ValueError("tflite: weight scales must be finite and positive")
    return sw


def _check_zero_point(z: int, label: str) -> int:
    if not QMIN <= int(z) <= QMAX:
        raise ValueError(f"tflite: {label} {z} outside int8 [-128, 127]")
    return int(z)


def _scalar_scale(s: float, label: str) -> float:
    v = float(f32(float(s)))
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"tflite: {label} must be a finite positive float32, got {s!r}")
    return v


#: The requantization rule of each (kernel, op), proven in tests/equivalence/test_litert.py.
RULES: dict[tuple[str, str], str] = {
    ("reference", "fully_connected"): "float64_half_away",
    ("reference", "conv_2d"): "q31_gemmlowp",
    ("xnnpack", "fully_connected"): "float32_half_even",
    ("xnnpack", "conv_2d"): "float32_half_even",
    ("optimized", "fully_connected"): "q31_half_up",
    ("optimized", "conv_2d"): "q31_half_up",
}
#: Every rule :func:`requantize` can apply; ``q31_single`` (TFLite's ``TFLITE_SINGLE_ROUNDING``) is
#: what none of LiteRT 2.3's x86 kernels use, kept to show that the tests can tell it apart.
RULE_NAMES = ("float64_half_away", "float32_half_even", "q31_half_up", "q31_gemmlowp", "q31_single")
OPS = ("fully_connected", "conv_2d")
#: XNNPACK refuses a requantization scale at or above this (the delegate then fails to prepare).
XNNPACK_MAX_SCALE = 256.0


def rule_of(kernel: str, op: str = "fully_connected") -> str:
    """The requantization rule name LiteRT's ``kernel`` applies for ``op`` (see :data:`RULES`)."""
    _check_kernel(kernel)
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose one of {OPS}")
    return RULES[(kernel, op)]


def effective_scale(x_scale: float, w_scale: Tensor | float, y_scale: float, n: int,
                    float32_product: bool = False) -> Tensor:
    """The float64 real multiplier ``M`` per output channel: float64 (N,).

    Numerics: ``(f64(sx) * f64(sw[n])) / f64(sy)`` — the product of two float32 values is exact in
    float64, the division rounds once — as ``reference_integer_ops::FullyConnected*`` and the
    per-channel ``Prepare`` (``PopulateConvolutionQuantizationParams``) form it. With
    ``float32_product`` the product is a float32 multiply first, ``f64(f32(sx * sw)) / f64(sy)``:
    TFLite's ``GetQuantizedConvolutionMultipler``, which the optimized FULLY_CONNECTED uses when the
    weights have one scale.
    """
    sx, sy = _scalar_scale(x_scale, "x_scale"), _scalar_scale(y_scale, "y_scale")
    sw = _weight_scales(w_scale, n)
    product = (f32(sx) * sw).to(torch.float64) if float32_product else sx * sw.to(torch.float64)
    return product / sy


def _float32_product(kernel: str, op: str, w_scale: Tensor | float) -> bool:
    return kernel == "optimized" and op == "fully_connected" and torch.as_tensor(w_scale).numel() == 1


def output_multipliers(x_scale: float, w_scale: Tensor | float, y_scale: float, n: int,
                       float32_product: bool = False) -> tuple[Tensor, Tensor]:
    """Q31 ``(multiplier, shift)`` per channel, int64 (N,) each, for the ``q31_*`` rules.

    Numerics: :func:`glassquant.fixedpoint.quantize_multiplier` (TFLite's ``QuantizeMultiplier``:
    frexp, round half away, ``2**31 -> 2**30`` with ``shift + 1``, ``M < 2**-32`` flushed to
    ``(0, 0)``) of :func:`effective_scale`. ``shift`` is a left exponent.
    """
    pairs = [quantize_multiplier(float(m)) for m in effective_scale(x_scale, w_scale, y_scale, n, float32_product)]
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def float_scale(x_scale: float, w_scale: Tensor | float, y_scale: float, n: int) -> Tensor:
    """XNNPACK's requantization scale per channel: ``f32(f32(sx * sw[n]) / sy)``, float32 (N,).

    Numerics: two float32 operations in this order (``sx * (sw / sy)``, ``(sx / sy) * sw`` or a
    float64 quotient rounded once differ in the last bit for some scales; the tests tell them apart).
    """
    sx, sy = _scalar_scale(x_scale, "x_scale"), _scalar_scale(y_scale, "y_scale")
    return (f32(sx) * _weight_scales(w_scale, n)) / f32(sy)


def quantize_bias(bias: Tensor, x_scale: float, w_scale: Tensor | float, name: str = "bias") -> Tensor:
    """A float bias on the accumulator grid: ``bias_q = round_half_away(b / (sx * sw[n]))``, int32 (N,).

    Numerics: exact. ``b``, ``sx`` and ``sw`` are float32; the quotient is formed as a rational
    number (no float rounding) and rounded half away from zero, so ``|bias_q * sx * sw - b| <=
    sx * sw / 2`` exactly — the int32 the kernels add to ``acc`` is the nearest one to ``b``. The
    flatbuffer stores the bias scale ``f32(sx * sw)``; the kernels only check it and never scale by
    it. A value outside int32 raises ValueError naming ``name`` (TFLite's converter would clamp it).
    Example: ``b = 0.3, sx = 0.5, sw = 0.25 -> 0.3 / 0.125 = 2.4000000953...`` -> 2.
    """
    check_finite(bias, name)
    b = f32(bias).reshape(-1)
    n = b.numel()
    sx = Fraction(_scalar_scale(x_scale, "x_scale"))
    sw = _weight_scales(w_scale, n).tolist()
    out = []
    for i, bv in enumerate(b.tolist()):
        q = Fraction(bv) / (sx * Fraction(sw[i]))
        fl = math.floor(abs(q))
        r = fl + (1 if abs(q) - fl >= Fraction(1, 2) else 0)
        out.append(r if q >= 0 else -r)
    if out and (max(out) > INT32_MAX or min(out) < INT32_MIN):
        raise ValueError(f"{name}: quantized bias {max(out, key=abs)} does not fit int32 (scale sx * sw too small)")
    return torch.tensor(out, dtype=torch.int32)


#: The optimized QUANTIZE/DEQUANTIZE loops take 8 elements at a time; the last ``n % 8`` of the
#: flattened tensor go through a scalar loop with a different formula.
SIMD_BLOCK = 8


def quantize(x: Tensor, scale: float, zero_point: int, kernel: str = "xnnpack") -> Tensor:
    """The QUANTIZE op, float -> int8 (eq. 3, LiteRT forms; see the module docstring).

    Numerics: x rounded to float32, any shape. ``reference``: ``round_half_away(f32(x / s)) + zp``
    (float32 division); ``xnnpack``: ``rne(f32(x * f32(1 / s))) + zp``; ``optimized``: the xnnpack
    form for the first ``8 * (n // 8)`` elements of the flattened tensor and, for the last ``n % 8``,
    ``round_half_away(f64(x) / f64(s)) + zp`` (a float64 division). Clamped to [-128, 127].
    Example, s = 0.5, zp = 0: x = 0.25 -> 1 (half away) or 0 (to even); x = -0.75 -> -2 in both.
    """
    _check_kernel(kernel)
    check_finite(x, "tflite quantize: x")
    s = f32(_scalar_scale(scale, "scale"))
    flat = f32(x).reshape(-1)
    if kernel == "reference":
        r = round_half_away(flat / s).to(torch.float64)
    else:
        r = torch.round(flat * (f32(1.0) / s)).to(torch.float64)
        if kernel == "optimized":
            body = flat.numel() - flat.numel() % SIMD_BLOCK
            r[body:] = round_half_away(flat[body:].to(torch.float64) / float(s))
    return (r + int(zero_point)).clamp(QMIN, QMAX).to(torch.int8).reshape(x.shape)


def dequantize(x_q: Tensor, scale: float, zero_point: int, kernel: str = "xnnpack") -> Tensor:
    """The DEQUANTIZE op, int8 -> float32, any shape.

    Numerics: ``reference``/``xnnpack``: ``f32(f32(q - zp) * s)`` (the difference is exact);
    ``optimized``: ``f32(f32(q * s) + f32(-zp * s))`` — two roundings, which differ from the former
    in the last bit for some (q, zp, s) — except the last ``n % 8`` elements of the flattened tensor,
    which take the first form.
    """
    _check_kernel(kernel)
    check_integer(x_q, "tflite dequantize: x_q", (torch.int8,))
    s = f32(_scalar_scale(scale, "scale"))
    q = x_q.reshape(-1).to(torch.float32)
    y = (q - float(int(zero_point))) * s
    if kernel == "optimized":
        body = q.numel() - q.numel() % SIMD_BLOCK
        y[:body] = q[:body] * s + f32(float(-int(zero_point))) * s
    return y.reshape(x_q.shape)


def _q31_high(acc: Tensor, x_scale: float, w_scale: Tensor | float, y_scale: float,
              float32_product: bool) -> tuple[Tensor, Tensor, Tensor]:
    """First step of the ``q31_*`` rules: ``(h, multiplier, shift)`` with ``h = SRDHM(acc << left, q)``.

    Numerics: ``acc * 2**max(shift, 0)`` must fit int32 (the kernels shift in int32): ValueError
    otherwise. ``h = floor(acc * q / 2**31 + 1/2)`` int64 (M, N) holding int32.
    """
    multiplier, shift = output_multipliers(x_scale, w_scale, y_scale, acc.shape[-1], float32_product)
    scaled = acc.to(torch.int64) << shift.clamp(min=0)
    if scaled.numel() and (int(scaled.max()) > INT32_MAX or int(scaled.min()) < INT32_MIN):
        raise ValueError("tflite: acc * 2**left_shift overflows int32 (multiplier >= 1 and a large accumulator)")
    return saturating_rounding_doubling_high_mul(scaled, multiplier), multiplier, shift


def prerounding(acc: Tensor, x_scale: float, w_scale: Tensor | float, y_scale: float,
                kernel: str = "xnnpack", op: str = "fully_connected") -> Tensor:
    """The value the kernel's *last* rounding sees, before ``+ zy``: float64 (M, N).

    ``float64_half_away``: ``f64(acc) * M`` (one float64 multiply); ``float32_half_even``:
    ``f32(acc) * S`` (one float32 multiply, held exactly in float64); ``q31_*``: ``h / 2**e`` with
    ``h`` the already-rounded SRDHM result (exact in float64). Numerics: acc int64 (M, N) holding
    int32 values (bias included).
    """
    rule = rule_of(kernel, op)
    n = acc.shape[-1]
    if rule == "float64_half_away":
        return acc.to(torch.float64) * effective_scale(x_scale, w_scale, y_scale, n)
    if rule == "float32_half_even":
        return (f32(acc) * float_scale(x_scale, w_scale, y_scale, n)).to(torch.float64)
    high, _, shift = _q31_high(acc, x_scale, w_scale, y_scale, _float32_product(kernel, op, w_scale))
    return high.to(torch.float64) / 2.0 ** (-shift).clamp(min=0).to(torch.float64)


def apply_rule(acc: Tensor, rule: str, x_scale: float, w_scale: Tensor | float, y_scale: float,
               float32_product: bool = False) -> Tensor:
    """``r``, the integer before ``+ zy``, by a named requantization rule: int64 (M, N).

    Numerics (acc int64 (M, N) holding int32, bias included):
    ``float64_half_away``: ``round_half_away(f64(acc) * M)``, M from :func:`effective_scale`;
    ``float32_half_even``: ``rne(f32(acc) * S)``, S from :func:`float_scale` (must be < 256);
    ``q31_half_up``: ``(h + 2**(e-1)) >> e`` with ``h = SRDHM(acc << l, q)``, ``e = max(-shift, 0)``;
    ``q31_gemmlowp``: ``RoundingDivideByPOT(h, e)`` (second rounding half away from zero);
    ``q31_single``: ``(acc * q + 2**(30 + e)) >> (31 + e)`` (one rounding, half up).
    The Q31 ``(q, shift)`` come from :func:`output_multipliers` (``float32_product`` as there).
    """
    n = acc.shape[-1]
    if rule == "float64_half_away":
        return round_half_away(acc.to(torch.float64) * effective_scale(x_scale, w_scale, y_scale, n,
                                                                        float32_product)).to(torch.int64)
    if rule == "float32_half_even":
        scale = float_scale(x_scale, w_scale, y_scale, n)
        if bool((scale >= XNNPACK_MAX_SCALE).any()):
            raise ValueError(f"tflite xnnpack: requantization scale {float(scale.max())} >= 256; "
                             "XNNPACK refuses the layer")
        return torch.round(f32(acc) * scale).to(torch.int64)  # rne of a float32 product
    if rule == "q31_single":  # TFLite saturates a shift above 30 to (2**31 - 1, 30) for this form
        multiplier, shift = output_multipliers(x_scale, w_scale, y_scale, n, float32_product)
        multiplier = torch.where(shift > 30, INT32_MAX, multiplier)
        return requantize_single_rounding(acc, multiplier, shift.clamp(max=30))
    if rule == "q31_gemmlowp":
        multiplier, shift = output_multipliers(x_scale, w_scale, y_scale, n, float32_product)
        return requantize_double_rounding(acc, multiplier, shift)
    if rule == "q31_half_up":
        high, _, shift = _q31_high(acc, x_scale, w_scale, y_scale, float32_product)
        return rounding_right_shift(high, (-shift).clamp(min=0))  # (h + 2**(e-1)) >> e: half up
    raise ValueError(f"unknown requantization rule {rule!r}; choose one of {RULE_NAMES}")


def requantize(acc: Tensor, x_scale: float, w_scale: Tensor | float, y_scale: float, y_zero_point: int,
               relu: bool = False, kernel: str = "xnnpack", op: str = "fully_connected",
               rule: str | None = None) -> Tensor:
    """int32 accumulators (bias included) to int8 outputs, as LiteRT's ``kernel`` does for ``op``.

    Numerics: acc int64 (M, N) holding int32 values; ``r`` by :func:`apply_rule` with
    :func:`rule_of` (``rule`` overrides it, e.g. to show what another runtime would give);
    ``y_q = clamp(r + zy, max(-128, zy) if relu else -128, 127)`` (a fused RELU clamps at the
    integer of real 0), int8 (M, N).
    """
    check_int32(acc, f"tflite {kernel} {op}")
    _check_zero_point(y_zero_point, "y_zero_point")
    r = apply_rule(acc, rule or rule_of(kernel, op), x_scale, w_scale, y_scale, _float32_product(kernel, op, w_scale))
    lo = max(QMIN, int(y_zero_point)) if relu else QMIN
    return (r + int(y_zero_point)).clamp(lo, QMAX).to(torch.int8)


def _bias_q(bias: Tensor | None, x_scale: float, w_scale: Tensor | float, n: int, name: str) -> Tensor | None:
    """An int32 bias as given, or a float bias by :func:`quantize_bias`."""
    if bias is None:
        return None
    if bias.shape != (n,):
        raise ValueError(f"{name}: bias shape {tuple(bias.shape)} != ({n},)")
    if bias.dtype == torch.int32:
        return bias
    if not bias.is_floating_point():
        raise TypeError(f"{name}: bias must be int32 (already quantized) or float, got {bias.dtype}")
    return quantize_bias(bias, x_scale, w_scale, f"{name}: bias")


def linear(x_q: Tensor, x_scale: float, x_zero_point: int, w_q: Tensor, w_scale: Tensor | float,
           bias: Tensor | None, y_scale: float, y_zero_point: int, relu: bool = False,
           kernel: str = "xnnpack", name: str = "tflite linear") -> Tensor:
    """FULLY_CONNECTED: int8 (M, K) x int8 (N, K) -> int8 (M, N).

    Numerics: weights symmetric (zero point 0, per tensor or per output channel); ``acc = sum_k
    (x_q - zx) * w_q + bias_q`` exact, int32 checked (:class:`AccumulatorOverflowError` otherwise);
    ``bias`` int32 as stored in the model, or float (:func:`quantize_bias`); then :func:`requantize`.
    """
    check_integer(x_q, f"{name}: x_q", (torch.int8,))
    check_integer(w_q, f"{name}: w_q", (torch.int8,))
    n = w_q.shape[0]
    bias_q = _bias_q(bias, x_scale, w_scale, n, name)
    zx = _check_zero_point(x_zero_point, f"{name}: x_zero_point")
    acc = accumulate(x_q, zx, w_q, 0, name)  # (M, K) @ (K, N) -> (M, N)
    if bias_q is not None:
        acc = acc + bias_q.to(torch.int64)
    return requantize(acc, x_scale, w_scale, y_scale, y_zero_point, relu, kernel, "fully_connected")


def conv_output_size(hw: tuple[int, int], kernel_size: tuple[int, int], stride: tuple[int, int],
                     padding: str, dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """TFLite's CONV_2D output (OH, OW): ``"same"``: ``ceil(in / s)``; ``"valid"``: ``ceil((in - ek + 1) / s)``
    with the dilated kernel ``ek = (k - 1) * d + 1``."""
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    out = []
    for i in range(2):
        ek = (kernel_size[i] - 1) * dilation[i] + 1
        o = -(-hw[i] // stride[i]) if padding == "same" else -(-(hw[i] - ek + 1) // stride[i])
        if o < 1:
            raise ValueError(f"conv: input {hw} is smaller than the dilated kernel ({ek}) for 'valid' padding")
        out.append(o)
    return out[0], out[1]


def same_padding(hw: tuple[int, int], kernel_size: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """TFLite's ``"same"`` padding ``(top, bottom, left, right)``: the odd pixel goes after (bottom/right)."""
    oh, ow = conv_output_size(hw, kernel_size, stride, "same", dilation)
    pads = []
    for i, o in enumerate((oh, ow)):
        ek = (kernel_size[i] - 1) * dilation[i] + 1
        total = max((o - 1) * stride[i] + ek - hw[i], 0)
        pads += [total // 2, total - total // 2]
    return pads[0], pads[1], pads[2], pads[3]


def conv_accumulate(x_q: Tensor, x_zero_point: int, w_q: Tensor, stride: tuple[int, int], padding: str,
                    dilation: tuple[int, int], name: str = "tflite conv2d") -> Tensor:
    """Exact CONV_2D accumulators (no bias): int64 (N * OH * OW, C_out), rows in (n, oh, ow) order.

    Numerics: x_q int8 NHWC (N, H, W, C), w_q int8 OHWI (C_out, kH, kW, C); taps outside the image
    contribute 0 (as padding with the zero point does); exact, int32 checked.
    """
    from ..nn.conv import im2col

    check_integer(x_q, f"{name}: x_q", (torch.int8,))
    check_integer(w_q, f"{name}: w_q", (torch.int8,))
    if x_q.dim() != 4 or w_q.dim() != 4 or x_q.shape[3] != w_q.shape[3]:
        raise ValueError(f"{name}: x_q {tuple(x_q.shape)} must be NHWC and w_q {tuple(w_q.shape)} OHWI "
                         "with the same C")
    kh, kw = int(w_q.shape[1]), int(w_q.shape[2])
    top, bottom, left, right = (same_padding((x_q.shape[1], x_q.shape[2]), (kh, kw), stride, dilation)
                                if padding == "same" else (0, 0, 0, 0))
    conv_output_size((x_q.shape[1], x_q.shape[2]), (kh, kw), stride, padding, dilation)
    x_u8 = (x_q.to(torch.int16) + 128).to(torch.uint8).permute(0, 3, 1, 2)  # NCHW, zero point + 128
    zp_u8 = _check_zero_point(x_zero_point, f"{name}: x_zero_point") + 128
    x_u8 = F.pad(x_u8, (left, right, top, bottom), value=zp_u8)  # (N, C, H', W'), real 0 in the border
    cols = im2col(x_u8, zp_u8, (kh, kw), stride, (0, 0), dilation, 1)[0]  # (N*OH*OW, C*kH*kW)
    w = w_q.permute(0, 3, 1, 2).reshape(w_q.shape[0], -1)  # OHWI -> (C_out, C*kH*kW), (c, i, j) order
    return accumulate(cols, zp_u8, w, 0, name)  # (M, K) @ (K, C_out) -> (M, C_out)


def conv2d(x_q: Tensor, x_scale: float, x_zero_point: int, w_q: Tensor, w_scale: Tensor | float,
           bias: Tensor | None, y_scale: float, y_zero_point: int, stride: tuple[int, int] = (1, 1),
           padding: str = "valid", dilation: tuple[int, int] = (1, 1), relu: bool = False,
           kernel: str = "xnnpack", name: str = "tflite conv2d") -> Tensor:
    """CONV_2D: int8 NHWC (N, H, W, C) x int8 OHWI (C_out, kH, kW, C) -> int8 NHWC (N, OH, OW, C_out).

    Numerics: :func:`conv_accumulate` plus the int32 bias, then :func:`requantize` of the kernel —
    the same rule as FULLY_CONNECTED. ``padding`` is TFLite's ``"same"``/``"valid"``.
    """
    c_out = int(w_q.shape[0])
    bias_q = _bias_q(bias, x_scale, w_scale, c_out, name)
    acc = conv_accumulate(x_q, x_zero_point, w_q, stride, padding, dilation, name)
    if bias_q is not None:
        acc = acc + bias_q.to(torch.int64)
        check_int32(acc, name)
    y = requantize(acc, x_scale, w_scale, y_scale, y_zero_point, relu, kernel, "conv_2d")  # (N*OH*OW, C_out)
    oh, ow = conv_output_size((x_q.shape[1], x_q.shape[2]), (int(w_q.shape[1]), int(w_q.shape[2])), stride,
                              padding, dilation)
    return y.reshape(x_q.shape[0], oh, ow, c_out)
