"""glassquant's own integer-only dialect: what the portable C runtime (export/runtime/) computes.

No float at run time. Everything float is done once, offline, in float64 (``bias_to_int32``,
``requantize_params``) and at the boundary (``quantize`` / ``dequantize``, outside the integer
path). The run-time functions (``accumulate``, ``requantize``, ``linear``) take only integer
tensors and Python ints.

Integer layout (one Linear, ``K`` inputs, ``N`` outputs):
  x_q          int8 (M, K), asymmetric: zero point ``zx`` in [-128, 127]
  w_q          int8 (N, K), symmetric per output channel: zero point 0, values in [-128, 127]
  bias_q       int32 (N,) = rne(f64(b[n]) / (f64(sx) * f64(sw[n])))                      (offline)
  acc[m, n]    = bias_q[n] + sum_k (x_q[m, k] - zx) * w_q[n, k]    int32, exact           (eq. 4)
  multiplier   int32 (N,), 0 or in [2**30, 2**31); right_shift int32 (N,) in [-30, 31] with
               ``multiplier * 2**-(31 + right_shift) ~= f64(sx) * f64(sw[n]) / f64(sy)``   (offline)
  y_q[m, n]    = clamp(floor(acc * multiplier / 2**(31 + right_shift) + 1/2) + zy, qmin, qmax)  (eq. 5)

The zero point is folded in one way only: the accumulator subtracts ``x_zero_point`` from each
input (CMSIS-NN writes the same thing as ``input_offset = -x_zero_point`` added to each input;
see docs/c-runtime.md). The requantization is TFLite's / CMSIS-NN's *single rounding*
(``fixedpoint.requantize_single_rounding``, ties toward +infinity); ``right_shift`` is
``-shift`` of TFLite's left exponent, negative (a left shift) only for real multipliers >= 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import fixedpoint
from ..errors import AccumulatorOverflowError, check_finite, check_integer
from ._base import INT32_MAX, INT32_MIN, as_column, check_int32, worst_case_accumulator
from ._base import accumulate as _accumulate_exact

NAME = "glassquant"
QMIN, QMAX = -128, 127  # int8 activations
RIGHT_SHIFT_MIN, RIGHT_SHIFT_MAX = -30, 31  # TFLite's left exponent range [-31, 30], negated
MULTIPLIER_MIN = 2**30  # a nonzero Q31 multiplier lies in [2**30, 2**31)

__all__ = [
    "NAME",
    "QMAX",
    "QMIN",
    "accumulate",
    "accumulator_bound",
    "bias_to_int32",
    "check_accumulator",
    "dequantize",
    "linear",
    "quantize",
    "requantize",
    "requantize_params",
]


def _int(v: object, name: str, lo: int, hi: int) -> int:
    """A Python int in ``[lo, hi]`` (no bool, no float): the scalar arguments of the run-time path."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected a Python int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ValueError(f"{name}: {v} outside [{lo}, {hi}]")
    return v


def _scale_f64(s: object, name: str) -> float:
    v = float(s.item() if isinstance(s, Tensor) else s)  # type: ignore[arg-type]
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite positive number, got {v}")
    return v


# ----------------------------------------------------------------------------- offline (float64)


def bias_to_int32(bias: Tensor | None, x_scale: float, w_scale: Tensor | float, n: int,
                  name: str = "linear") -> Tensor:
    """The int32 bias in the accumulator's units: ``bias_q[n] = rne(f64(b[n]) / (f64(sx) * f64(sw[n])))``.

    Numerics: offline, float64: the float32 bias and scales are widened exactly, the product
    ``sx * sw[n]`` and the quotient are each rounded once to float64, then rounded half to even
    (``torch.round``). ``bias=None`` gives zeros. Returns int32 (N,). A value outside int32 (a
    bias far larger than the accumulator's scale can carry) raises ValueError naming ``name``.
    Example: b = 0.3, sx = 2**-7, sw = 2**-8 -> 0.3 * 2**15 = 9830.4 -> 9830.
    """
    if bias is None:
        return torch.zeros(n, dtype=torch.int32)
    check_finite(bias, f"{name}: bias")
    if bias.shape != (n,):
        raise ValueError(f"{name}: bias shape {tuple(bias.shape)} != ({n},)")
    sx = _scale_f64(x_scale, f"{name}: x_scale")
    sw = as_column(torch.as_tensor(w_scale, dtype=torch.float64).reshape(-1), n, torch.float64)
    if not bool(((sw > 0) & torch.isfinite(sw)).all()):
        raise ValueError(f"{name}: w_scale must be finite and positive")
    b_q = torch.round(bias.to(torch.float64) / (sx * sw))  # (N,) float64
    if int(b_q.max()) > INT32_MAX or int(b_q.min()) < INT32_MIN:
        worst = int(b_q.abs().argmax())
        raise ValueError(f"{name}: quantized bias of output {worst} is {b_q[worst].item():.6g}, outside int32: bias "
                         f"{bias[worst].item():.6g} is too large for x_scale * w_scale = {sx * sw[worst].item():.3g}")
    return b_q.to(torch.int32)


def requantize_params(x_scale: float, w_scale: Tensor | float, y_scale: float, n: int,
                      name: str = "linear") -> tuple[Tensor, Tensor]:
    """Per-channel ``(multiplier, right_shift)`` for the real multiplier ``f64(sx) * f64(sw[n]) / f64(sy)``.

    Numerics: offline: the product and quotient are each rounded once to float64 (the C double
    arithmetic TFLite uses), then :func:`glassquant.fixedpoint.quantize_multiplier` (frexp, Q31
    mantissa rounded half away from zero): ``multiplier`` int32 0 or in [2**30, 2**31),
    ``right_shift = -shift`` int32 in [-30, 31]. A real multiplier below 2**-32 becomes (0, 0):
    every output is then the zero point. One >= 2**30 raises ValueError (not representable).
    Example: sx = 0.5, sw = 0.25, sy = 1 -> 0.125 = 2**-3 -> (2**30, 2) since 2**30 * 2**-33 = 2**-3.
    """
    sx = _scale_f64(x_scale, f"{name}: x_scale")
    sy = _scale_f64(y_scale, f"{name}: y_scale")
    sw = as_column(torch.as_tensor(w_scale, dtype=torch.float64).reshape(-1), n, torch.float64)
    multiplier, right_shift = [], []
    for j in range(n):
        real = sx * float(sw[j]) / sy
        m, shift = fixedpoint.quantize_multiplier(real)
        if -shift < RIGHT_SHIFT_MIN:
            raise ValueError(f"{name}: output {j}: real multiplier {real:.6g} >= 2**30 cannot be requantized "
                             "with a Q31 multiplier and a shift (x_scale * w_scale / y_scale is far too large)")
        multiplier.append(m)
        right_shift.append(fixedpoint.right_shift_of(shift))
    return torch.tensor(multiplier, dtype=torch.int32), torch.tensor(right_shift, dtype=torch.int32)


def accumulator_bound(w_q: Tensor, bias_q: Tensor, x_zero_point: int, x_qmin: int = QMIN,
                      x_qmax: int = QMAX) -> Tensor:
    """Largest ``|partial sum|`` the C loop can reach for any int8 input, per output channel.

    Numerics: the C kernel starts from ``bias_q[n]`` and adds ``(x_q[k] - zx) * w_q[n, k]`` one
    term at a time, so every partial sum is bounded by ``|bias_q[n]| + sum_k |w_q[n, k]| *
    max(|qmin - zx|, |qmax - zx|)`` (``_base.worst_case_accumulator``). int64 (N,). The layer is
    safe in int32 (no intermediate overflow, in any summation order) iff every value <= 2**31 - 1.
    """
    wc = worst_case_accumulator(w_q, 0, x_qmin, x_qmax, x_zero_point)  # (N,)
    return wc + bias_q.to(torch.int64).abs()


def check_accumulator(w_q: Tensor, bias_q: Tensor, x_zero_point: int, name: str = "linear") -> int:
    """Raise :class:`AccumulatorOverflowError` unless :func:`accumulator_bound` fits int32; returns its max."""
    bound = accumulator_bound(w_q, bias_q, x_zero_point)
    worst = int(bound.max()) if bound.numel() else 0
    if worst > INT32_MAX:
        n = int(bound.argmax())
        raise AccumulatorOverflowError(
            f"{name}: output {n} can reach |accumulator| {worst} > 2**31 - 1 (|bias_q| {abs(int(bias_q[n]))} + "
            f"K = {w_q.shape[1]} products); an int32 accumulator could overflow. Use smaller weights or split K.")
    return worst


# ----------------------------------------------------------------------------- run time (integers only)


def accumulate(x_q: Tensor, x_zero_point: int, w_q: Tensor, bias_q: Tensor, name: str = "linear") -> Tensor:
    """``acc[m, n] = bias_q[n] + sum_k (x_q[m, k] - zx) * w_q[n, k]`` exactly (eq. 4, zero point folded in).

    Numerics: x_q int8 (M, K), w_q int8 (N, K) (zero point 0), bias_q int32 (N,), zx a Python
    int in [-128, 127]. Exact in int64 (M, N) holding int32; a value outside int32 raises
    :class:`AccumulatorOverflowError` (the C runtime would overflow).
    """
    check_integer(x_q, f"{name}: x_q", (torch.int8,))
    check_integer(w_q, f"{name}: w_q", (torch.int8,))
    check_integer(bias_q, f"{name}: bias_q", (torch.int32, torch.int64))
    zx = _int(x_zero_point, f"{name}: x_zero_point", QMIN, QMAX)
    if bias_q.shape != (w_q.shape[0],):
        raise ValueError(f"{name}: bias_q shape {tuple(bias_q.shape)} != ({w_q.shape[0]},)")
    acc = _accumulate_exact(x_q, zx, w_q, 0, name) + bias_q.to(torch.int64)  # (M, N)
    check_int32(acc, name)
    return acc


def requantize(acc: Tensor, multiplier: Tensor | int, right_shift: Tensor | int, y_zero_point: int,
               qmin: int = QMIN, qmax: int = QMAX, name: str = "linear") -> Tensor:
    """int32 accumulators to int8: ``clamp(floor(acc * multiplier / 2**(31 + right_shift) + 1/2) + zy, qmin, qmax)``.

    Numerics: acc int32 values (any integer dtype, (..., N)); multiplier int32 (N,) or int in
    [0, 2**31) (0 or >= 2**30 from :func:`requantize_params`); right_shift (N,) or int in
    [-30, 31]; total shift ``31 + right_shift`` in [1, 62]. The product is exact in int64
    (``|acc * multiplier| < 2**62``); one rounding, half toward +infinity (-2.5 -> -2, 2.5 -> 3):
    ``fixedpoint.requantize_single_rounding`` (TFLite ``TFLITE_SINGLE_ROUNDING``, CMSIS-NN
    ``CMSIS_NN_USE_SINGLE_ROUNDING``). The scaled
    value must fit int32 (ValueError otherwise; :class:`~glassquant.nn.integer.IntLinear`
    certifies it). Then ``+ zy`` and clamp to ``[qmin, qmax]`` (``qmin = zy`` for a fused ReLU).
    Returns int8 with the shape of ``acc``. Bit-exact with export/runtime/gq_requantize.c.
    Example: acc 10, multiplier 2**30, right_shift 2 (x 1/8): 1.25 -> 1; acc 12: 1.5 -> 2; acc -12: -1.5 -> -1.
    """
    if not isinstance(acc, Tensor):
        raise TypeError(f"{name}: acc must be an integer tensor, got {type(acc).__name__}")
    zy = _int(y_zero_point, f"{name}: y_zero_point", QMIN, QMAX)
    lo = _int(qmin, f"{name}: qmin", QMIN, QMAX)
    hi = _int(qmax, f"{name}: qmax", QMIN, QMAX)
    if lo > hi:
        raise ValueError(f"{name}: qmin {lo} > qmax {hi}")
    rs = fixedpoint._int64(right_shift, f"{name}: right_shift", RIGHT_SHIFT_MIN, RIGHT_SHIFT_MAX)
    try:
        scaled = fixedpoint.requantize_single_rounding(acc, multiplier, -rs)  # (..., N) int64
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e
    return (scaled + zy).clamp(lo, hi).to(torch.int8)


def linear(x_q: Tensor, x_zero_point: int, w_q: Tensor, bias_q: Tensor, multiplier: Tensor, right_shift: Tensor,
           y_zero_point: int, qmin: int = QMIN, qmax: int = QMAX, name: str = "linear") -> Tensor:
    """Integer-only Linear: int8 (M, K) x int8 (N, K) -> int8 (M, N) (eqs. 4-5, integer form).

    Numerics: :func:`accumulate` (exact int32, zero point folded in, bias_q added) then
    :func:`requantize` (Q31 multiplier, single rounding, + zy, clamp). No float anywhere.
    Bit-exact with export/runtime/gq_fully_connected_s8.c.
    """
    acc = accumulate(x_q, x_zero_point, w_q, bias_q, name)  # (M, N)
    return requantize(acc, multiplier, right_shift, y_zero_point, qmin, qmax, name)


# ----------------------------------------------------------------------------- boundary (float, outside the path)


def quantize(x: Tensor, scale: float, zero_point: int, name: str = "input") -> Tensor:
    """Float input to int8 at the edge of the integer path: ``clamp(rne(f64(x) / f64(scale)) + zp, -128, 127)``.

    Numerics: x float (any shape); the division in float64 (one rounding), then round half to
    even, then the integer zero point, then the clamp. Returns int8. Not part of the integer
    path (the C runtime takes int8 inputs).
    """
    check_finite(x, name)
    zp = _int(zero_point, f"{name}: zero_point", QMIN, QMAX)
    s = _scale_f64(scale, f"{name}: scale")
    q = torch.round(x.to(torch.float64) / s) + zp
    return q.clamp(QMIN, QMAX).to(torch.int8)


def dequantize(y_q: Tensor, scale: float, zero_point: int) -> Tensor:
    """int8 to real values at the edge of the integer path: ``f32(f32(scale) * (y_q - zp))`` (eq. 1)."""
    check_integer(y_q, "y_q", (torch.int8,))
    return torch.tensor(float(scale), dtype=torch.float32) * (y_q.to(torch.int32) - int(zero_point)).to(torch.float32)
