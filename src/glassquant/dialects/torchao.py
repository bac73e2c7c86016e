"""torchao dialect: torchao 0.18's int8 Linear on CPU, written as explicit float32 steps.

Covers ``Int8DynamicActivationInt8WeightConfig()`` (W8A8, activations per row = per token)
and ``Int8WeightOnlyConfig()`` (W8, float activations) with their defaults (``PerRow``
granularity, symmetric activations, ``reduce_range=False``), both built on torchao's
``Int8Tensor`` (``quantize_/workflows/int8/int8_tensor.py``) and ``quant_primitives``:

Qparams (``Int8Tensor.from_hp`` -> ``choose_qparams_affine``, ``MappingType.SYMMETRIC``, int8
[-128, 127], one scale per row of the 2-D tensor; weights and activations alike):
  ``amax = max(-min(x_min, 0), max(x_max, 0))``
  ``scale = max(f32(amax / 127.5), eps)`` with ``127.5 = (127 - (-128)) / 2`` and
  ``eps = torch.finfo(float32).eps = 2**-23`` — passed explicitly by ``from_hp``; the
  primitive's own default (``eps=None``) would be the smallest normal float32. Zero point 0.
Quantize (``quantize_affine``): ``q = clamp(rne(f32(x * f32(1 / scale))), -128, 127)``; the
reciprocal is one correctly rounded float32 operation (``1.0 / scale`` is
``scale.reciprocal()``), the product one float32 rounding (no FMA, no zero point to add).
Worked example: a row with range (-1.0, 3.0): ``scale = f32(3 / 127.5) = 0.023529412``,
``1/scale = 42.5`` (to float32); ``x = 3.0 -> 127.5 -> 128 -> clamp 127``,
``x = -1.0 -> -42.5 -> -42`` (ties to even).
Dynamic output (``Int8Tensor`` linear -> ``int_scaled_matmul``; on CPU the exact int32
accumulators come from ``torch._int_mm`` — on AVX512-VNNI CPUs without AMX as
``(x_q + 128)`` uint8 times int8 minus ``128 * colsum(w_q)``, the same integers — then
``.to(float32) * x_scales``): ``y = f32(f32(f32(acc) * sx[m]) * sw[n])``, then ``y += b``.
Weight-only output: ``y = f32(f32(x @ f32(w_q).T) * sw[n])``, then ``y += b``.

Status: proven against torchao 0.18.0 on CPU (tests/equivalence/test_torchao.py, torch.equal,
0 mismatches): weight integers and scales (114,176 values per config: random weights and
adversarial rows — exact .5 ties with power-of-two and arbitrary scales, -127.5 -> -128,
all-zero rows, rows below eps with subnormals, values up to float32's max); activation
integers and per-token scales captured inside torchao's own linear (219,564 values); float32
outputs of ``DynamicQuantLinear(engine="torchao")`` on its compiled, ``_int_mm`` and reference
paths (162,816 each, accumulators past 2**24 included) and of the int8 ``WeightOnlyLinear`` /
:func:`linear_weight_only` (162,816). Each wrong rule tried — divisor 127, eps = smallest
normal or 1e-5, half-away rounding, true division ``x / scale``, [-127, 127], another order of
the output multiplies — differs from torchao on those inputs. Weight-only equality holds
because the float32 ``torch.mm`` call is the same as torchao's (its summation order is the
BLAS library's, not a documented one). Not modelled: ``reduce_range=True`` (torchao then
uses [-64, 63] and divisor 63.5 for weights and activations; the ``reduce_range`` argument
here is ignored), ``PerTensor`` activations, asymmetric activations, bfloat16/float16
models. ``PerTensor`` *weights* are proven too. There is no fused ReLU in torchao;
``relu=True`` applies ``max(y, 0)`` afterwards (exact, as a separate ``nn.ReLU`` would).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import check_finite, check_integer
from ..floatops import f32
from ..scheme import QScheme
from ._base import accumulate, as_column

NAME = "torchao"
#: torchao's int8 grid (``_DTYPE_TO_QVALUE_BOUNDS[torch.int8]``).
QMIN, QMAX = -128, 127
#: The ``eps`` that ``Int8Tensor.from_hp`` passes to ``choose_qparams_affine``: ``finfo(float32).eps``.
SCALE_EPS = torch.finfo(torch.float32).eps

__all__ = [
    "NAME",
    "QMAX",
    "QMIN",
    "SCALE_EPS",
    "choose_qparams",
    "choose_weight_qparams",
    "dynamic_output",
    "linear_dynamic",
    "linear_weight_only",
    "quantize",
    "quantize_activation",
    "quantize_weight",
]


def choose_qparams(x_min: Tensor | float, x_max: Tensor | float, qmin: int = QMIN, qmax: int = QMAX,
                   eps: float = SCALE_EPS) -> tuple[Tensor, Tensor]:
    """torchao's symmetric ``choose_qparams_affine``, elementwise on ranges.

    ``amax = max(-min(x_min, 0), max(x_max, 0))``; ``scale = max(f32(amax / ((qmax - qmin) / 2)), eps)``
    (the divisor is 127.5 for int8: the grid's half-width, not 127); zero point 0.
    Example: range (-1.0, 3.0): ``scale = f32(3 / 127.5) = 0.023529412``.

    Numerics: x_min, x_max float32 of any shape (exact min/max of the data); one float32
    division (correctly rounded), then the clamp at ``eps``. Returns ``(scale float32,
    zero_point int32 zeros)`` with the shape of ``x_min``.
    """
    x_min = f32(torch.as_tensor(x_min, dtype=torch.float32))
    x_max = f32(torch.as_tensor(x_max, dtype=torch.float32))
    check_finite(x_min, f"{NAME} choose_qparams: x_min")
    check_finite(x_max, f"{NAME} choose_qparams: x_max")
    lo = torch.min(x_min, torch.zeros_like(x_min))
    hi = torch.max(x_max, torch.zeros_like(x_max))
    amax = torch.max(-lo, hi)  # exact
    scale = amax / (float(qmax - qmin) / 2)  # one float32 division by 127.5 (int8)
    scale = torch.clamp(scale, min=eps)
    return scale, torch.zeros_like(scale, dtype=torch.int32)


def quantize(x: Tensor, scale: Tensor | float, zero_point: Tensor | int = 0, dtype: torch.dtype = torch.int8,
             axis: int | None = None, qmin: int = QMIN, qmax: int = QMAX) -> Tensor:
    """torchao's ``quantize_affine`` (integer zero-point domain): ``clamp(rne(x * f32(1/scale)) + zp)``.

    Numerics: x float (rounded to float32); scale float32 > 0, a scalar, a tensor that
    broadcasts against ``x`` (``(M, 1)`` per row), or ``(C,)`` along ``axis``; ``1/scale`` is one
    float32 division, ``x * (1/scale)`` one float32 multiply (no FMA), rounding half to
    even, the zero point added after rounding (exact), saturating clamp to [qmin, qmax].
    Example: scale 0.5 (1/scale = 2): x = 0.25 -> 0.5 -> 0; x = 0.75 -> 1.5 -> 2.
    Returns ``dtype`` (int8) with the shape of ``x``.
    """
    check_finite(x, f"{NAME} quantize: x")
    return _quantize(f32(x), scale, zero_point, dtype, axis, qmin, qmax)


def _quantize(x: Tensor, scale: Tensor | float, zero_point: Tensor | int, dtype: torch.dtype,
              axis: int | None, qmin: int, qmax: int) -> Tensor:
    """:func:`quantize` without the finiteness check (the caller has made it)."""
    s = f32(torch.as_tensor(scale, dtype=torch.float32))
    z = torch.as_tensor(zero_point, dtype=torch.float64)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        s = s.reshape(shape)
        z = z.reshape(shape) if z.numel() > 1 else z
    inv_scale = f32(1.0) / s  # float32 reciprocal
    r = (x * inv_scale).round_()  # one float32 multiply, rne: integer-valued float32 (a new tensor)
    if z.numel() == 1 and float(z) == 0.0:
        return r.clamp_(qmin, qmax).to(dtype)  # exact: integers and bounds are float32 values
    r = r.to(torch.float64) + z  # + zp, exact
    return r.clamp(qmin, qmax).to(torch.int64).to(dtype)


def choose_weight_qparams(weight: Tensor, scheme: QScheme, name: str = "weight") -> tuple[Tensor, Tensor]:
    """Per-row (``scheme.axis == 0``) or per-tensor symmetric qparams of a weight (N, K).

    Numerics: exact float32 min/max of each row (or of the tensor), then
    :func:`choose_qparams` on ``[scheme.qmin, scheme.qmax]``. Returns ``(scale float32,
    zero_point int32)`` of shape (N,) per row, (1,) per tensor.
    """
    _check_weight_scheme(scheme, name)
    check_finite(weight, name)
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty (N, K) weight, got shape {tuple(weight.shape)}")
    w = f32(weight.detach())
    if scheme.granularity == "per_channel":
        x_min, x_max = w.amin(dim=1), w.amax(dim=1)  # (N,)
    else:
        x_min, x_max = w.min().reshape(1), w.max().reshape(1)  # (1,)
    return choose_qparams(x_min, x_max, scheme.qmin, scheme.qmax)


def quantize_weight(weight: Tensor, scheme: QScheme, name: str = "weight") -> tuple[Tensor, Tensor, Tensor]:
    """torchao's int8 weight (``Int8Tensor.from_hp``): ``(w_q int8 (N, K), scale (N,) or (1,), zero_point int32)``.

    Numerics: :func:`choose_weight_qparams` then :func:`quantize` row by row (or with the
    single scale). The rule ``nn.linear.quantize_weight`` uses for ``engine="torchao"``.
    """
    scale, zero_point = choose_weight_qparams(weight, scheme, name)
    w_q = quantize(weight.detach(), scale.reshape(-1, 1), 0, torch.int8, qmin=scheme.qmin, qmax=scheme.qmax)
    return w_q, scale, zero_point


def _check_weight_scheme(scheme: QScheme, name: str) -> None:
    if not (scheme.signed and scheme.symmetric and scheme.bits == 8):
        raise ValueError(f"{name}: torchao's int8 weights are signed, symmetric, 8 bits; got {scheme}")
    if scheme.granularity == "per_group" or (scheme.granularity == "per_channel" and scheme.axis not in (0, -2)):
        raise ValueError(f"{name}: torchao int8 weights are per row (axis 0) or per tensor; got {scheme}")


def quantize_activation(x: Tensor, reduce_range: bool = False) -> tuple[Tensor, Tensor, int]:
    """Per-token activation quantization: ``(x_q int8 (M, K), x_scale float32 (M, 1), zero_point 0)``.

    Numerics: one symmetric scale per row (last axis), from that row's exact min/max by
    :func:`choose_qparams` (divisor 127.5, clamp at eps; an all-zero row gets scale eps and
    quantizes to 0), then :func:`quantize`. ``reduce_range`` is accepted for the common
    dialect signature and ignored: this is the default ``reduce_range=False`` config
    (torchao's opt-in ``reduce_range=True`` halves the grid to [-64, 63]; not modelled).
    Leading dimensions other than M are kept: (..., K) -> (..., K), (..., 1).
    """
    if x.dim() == 0 or x.numel() == 0:
        raise ValueError(f"{NAME} dynamic linear: input must be a non-empty (M, K) tensor, got {tuple(x.shape)}")
    x = f32(x)
    # max(-min(x_min, 0), max(x_max, 0)) == max |x| exactly, and abs + amax is one fast pass
    x_amax = x.abs().amax(dim=-1, keepdim=True)  # (M, 1); NaN and Inf propagate
    if not bool(torch.isfinite(x_amax).all()):
        check_finite(x, f"{NAME} dynamic linear: input")  # names the NaN/Inf count
    x_scale, _ = choose_qparams(-x_amax, x_amax)
    return _quantize(x, x_scale, 0, torch.int8, None, QMIN, QMAX), x_scale, 0


def dynamic_output(acc: Tensor, x_scale: Tensor | float, w_scale: Tensor | float, bias: Tensor | None,
                   relu: bool = False) -> Tensor:
    """Float32 output of the dynamic Linear: ``y = f32(f32(f32(acc) * sx[m]) * sw[n])``, then ``y += b``.

    Numerics: acc int64 (M, N) holding int32 values, converted once to float32 (rounds past
    2**24); x_scale float32 (M, 1) or a scalar; w_scale float32 (N,) or a scalar; bias
    float32 (N,) or None. Three float32 roundings (two with no bias), in this order.
    """
    sx = f32(torch.as_tensor(x_scale, dtype=torch.float32))
    if sx.dim() == 1:
        sx = sx.reshape(-1, 1)  # (M,) -> (M, 1)
    sw = f32(as_column(w_scale, acc.shape[-1], torch.float32))  # (N,)
    # f32(acc) * sx in one pass: type promotion converts each int32 to float32 (one rounding,
    # exact below 2**24) inside the multiply; the result is a new tensor, so in-place is safe
    y = torch.mul(acc, sx) if acc.dtype == torch.int32 else acc.to(torch.float32) * sx  # (M, N) * (M, 1)
    y.mul_(sw)  # then * (N,): float32 roundings in this order
    if bias is not None:
        y.add_(f32(bias))
    return y.clamp_min_(0.0) if relu else y


def linear_dynamic(x: Tensor, w_q: Tensor, w_scale: Tensor | float, w_zero_point: Tensor | int,
                   bias: Tensor | None, reduce_range: bool = False, relu: bool = False) -> Tensor:
    """Dynamic W8A8 Linear: float32 (M, K) -> float32 (M, N), one int8 scale per token.

    Numerics: :func:`quantize_activation`, exact int32 accumulators (eq. 4; overflow raises),
    :func:`dynamic_output`. ``w_zero_point`` must be 0 (symmetric weights).
    """
    x_q, x_scale, x_zp = quantize_activation(x, reduce_range)
    acc = accumulate(x_q, x_zp, w_q, w_zero_point, NAME)  # (M, K) x (N, K) -> (M, N)
    return dynamic_output(acc, x_scale, w_scale, bias, relu)


def linear_weight_only(x: Tensor, w_q: Tensor, w_scale: Tensor | float, bias: Tensor | None,
                       name: str = "weight-only linear", w_float: Tensor | None = None) -> Tensor:
    """Int8 weight-only Linear: ``y = (x @ f32(w_q).T) * sw[n]``, then ``y += b`` (torchao's order).

    Numerics: x float32 (..., K); w_q int8 (N, K) converted exactly to float32; the matmul
    is float32 ``torch.mm`` on the same layout torchao uses (``w_q.t()`` then ``.to``), so
    its summation order is the BLAS library's — identical to torchao on the same machine,
    not a documented order; then one float32 multiply by the row scale, one add of the bias.
    Returns float32 (..., N). ``w_float``: ``w_q.t().to(torch.float32)`` already computed by the
    caller (the same values and strides, (K, N) with strides (1, K); e.g. in a reused buffer).
    """
    check_integer(w_q, f"{name}: w_q", (torch.int8,))
    check_finite(x, f"{name}: input")
    if x.shape[-1] != w_q.shape[1]:
        raise ValueError(f"{name}: input has {x.shape[-1]} features, weight expects {w_q.shape[1]}")
    x2 = f32(x).reshape(-1, w_q.shape[1])  # (M, K)
    if w_float is None:
        w_float = w_q.t().to(torch.float32)  # (K, N), strides (1, K)
    elif w_float.shape != w_q.t().shape or w_float.stride() != w_q.t().stride() or w_float.dtype != torch.float32:
        raise ValueError(f"{name}: w_float must be float32 {tuple(w_q.t().shape)} with strides {w_q.t().stride()}")
    m = torch.mm(x2, w_float)  # (M, K) @ (K, N) -> (M, N) float32
    # in place on the fresh matmul output: the same float32 roundings as ``m * s`` then ``+ b``, without
    # two more (M, N) allocations (their page faults cost as much as the multiply on this machine)
    y = m.mul_(f32(as_column(w_scale, w_q.shape[0], torch.float32)))  # (M, N) * (N,)
    if bias is not None:
        y = y.add_(f32(bias))
    return y.reshape(*x.shape[:-1], w_q.shape[0])
