"""Explain every mismatch between two dialects on a static Linear, element by element.

Each dialect's static path is described by a :class:`Recipe`: the same pipeline (eq. 4-5)
with one named choice per stage —

  accumulate   ``exact`` int32, or ``int16_pairs`` (fbgemm's AVX2 ``vpmaddubsw``, saturating)
  bias         added as ``float`` inside the requantization, or quantized to ``int32`` first
  tie          how the float32 value's .5 ties round: ``even``, ``away``, ``up``
  zero_point   output zero point added ``after`` rounding (integer) or ``before`` (float32 add)
  requant      ``float32`` (the dialect's own float32 formula), or fixed point
               ``fixed_single`` / ``fixed_double`` (Q31 multiplier, TFLite / gemmlowp)

To explain A against B, start from A's recipe and switch one stage at a time to B's, in
pipeline order (accumulate, bias, tie, zero point, requant). An output element is
attributed to the first switch that changes it; the last hybrid is B's recipe, which must
reproduce B's real output (a recipe's ``reference``) — any element where it does not is
reported as ``unexplained``, never guessed. Inside the requant switch an element whose
accumulator is not exact in float32 (|acc| > 2**24) and whose value computed in float64
already rounds to the fixed-point result is attributed to float32 precision loss; a change between two
fixed-point recipes is single vs double rounding.

Causes (:data:`CAUSES`) for a float input add the input stage (quantize with each
dialect's rule): ties, zero point before/after rounding, and the float32 arithmetic of the
quantize formula — found exactly with ``fractions.Fraction``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from .. import fixedpoint
from ..dialects import fbgemm, onednn, onnx, qnnpack, tflite
from ..dialects._base import accumulate, as_column
from ..floatops import f32

__all__ = ["CAUSES", "RECIPES", "Difference", "Explanation", "Recipe", "explain_linear", "int16_pair_accumulate",
           "recipe_output"]

CAUSES = {
    "int16_pairs": "int16 pair saturation (fbgemm's AVX2 kernel without VNNI)",
    "bias": "bias quantized to int32 vs added in float",
    "tie": "rounding tie broken differently",
    "zero_point": "zero point added before vs after rounding",
    "precision": "float32 precision loss: |acc| > 2**24 is not exact in float32",
    "float_vs_fixed": "float32 vs fixed-point requantization",
    "double_rounding": "single vs double rounding",
    "float_formula": "float32 requantization formula differs (multiplier / bias formed in another order)",
    "input_formula": "input quantization: float32 arithmetic of the formula (reciprocal / FMA vs division)",
    "reduce_range": "reduce_range: activations on [0, 127] instead of [0, 255]",
    "zero_point_clamp": "activation zero point chosen by a different rule (nudged / clamped)",
    "unexplained": "not explained by the recipes (the recipe does not reproduce the dialect here)",
}

ValueFn = Callable[[Tensor, float, Any, "Tensor | None", float], Tensor]


@dataclass(frozen=True)
class Recipe:
    """One dialect's static Linear as stage choices (see the module docstring).

    ``value(acc, sx, sw, bias, sy)`` is the dialect's float32 value to round, zero point
    excluded (used when ``requant == "float32"``; ``bias`` is None when ``bias == "int32"``
    and the accumulator already holds ``bias_q``); ``quantize_bias(bias, sx, sw)`` gives
    ``bias_q`` int64 (N,); ``quantize(x, sx, zx)`` is the input rule (float -> uint8) with
    its stage choices ``input_tie`` / ``input_zero_point``; ``reference`` (``linear``'s
    signature) is the real dialect, used to check the recipe reproduces it.
    """

    name: str
    accumulate: str = "exact"
    bias: str = "float"
    tie: str = "even"
    zero_point: str = "after"
    requant: str = "float32"
    value: ValueFn | None = None
    quantize_bias: Callable[[Tensor, float, Any], Tensor] | None = None
    quantize: Callable[[Tensor, float, int], Tensor] | None = None
    input_tie: str = "even"
    input_zero_point: str = "before"
    reference: Callable[..., Tensor] | None = field(default=None, compare=False)


def _rne_bias(bias: Tensor, x_scale: float, w_scale: Any) -> Tensor:
    """``rne(b / (f64(sx) * f64(sw[n])))`` in float64: int64 (N,) (TFLite / ONNX Runtime style)."""
    sw = as_column(w_scale, bias.shape[0], torch.float64)
    return torch.round(bias.to(torch.float64) / (float(x_scale) * sw)).to(torch.int64)


def _pytorch_quantize(x: Tensor, sx: float, zx: int) -> Tensor:
    from ..dialects import pytorch

    return pytorch.quantize(x, sx, zx, torch.uint8)


def _glassquant_linear(x_q: Tensor, x_scale: float, x_zero_point: int, w_q: Tensor, w_scale: Any,
                       w_zero_point: Any, bias: Tensor | None, y_scale: float, y_zero_point: int,
                       relu: bool = False) -> Tensor:
    """The integer-only ``glassquant`` dialect on a static layer's parameters (uint8 in and out):
    its ``IntLinear`` twin (int8, shifted by 128), as the C runtime computes it."""
    from ..nn.integer import IntLinear
    from ..nn.linear import QuantLinear

    layer = QuantLinear(w_q, w_scale, w_zero_point, bias, x_scale, x_zero_point, y_scale, y_zero_point, relu=relu,
                        check_overflow=False)
    twin = IntLinear.from_quant_linear(layer)
    y = twin.forward_int((x_q.to(torch.int16) - 128).to(torch.int8))  # int8 (M, N)
    return (y.to(torch.int16) + 128).to(torch.uint8)


def _tflite_linear(kernel: str) -> Callable[..., Tensor]:
    """The ``tflite`` dialect of one LiteRT kernel on a static layer's parameters, uint8 in and out."""

    def linear(x_q: Tensor, x_scale: float, x_zero_point: int, w_q: Tensor, w_scale: Any, w_zero_point: Any,
               bias: Tensor | None, y_scale: float, y_zero_point: int, relu: bool = False) -> Tensor:
        y8 = tflite.linear((x_q.to(torch.int16) - 128).to(torch.int8), x_scale, x_zero_point - 128, w_q, w_scale,
                           bias, y_scale, y_zero_point - 128, relu, kernel=kernel)
        return (y8.to(torch.int16) + 128).to(torch.uint8)

    return linear


def _tflite_xnnpack_value(acc: Tensor, sx: float, sw: Any, bias: Tensor | None, sy: float) -> Tensor:
    """XNNPACK's float32 value (bias already in ``acc`` as int32): ``f32(acc) * f32(f32(sx*sw)/sy)``."""
    assert bias is None, "tflite: the bias is an int32 added to the accumulator"
    return tflite.prerounding(acc, sx, sw, sy, "xnnpack")


RECIPES: dict[str, Recipe] = {
    "fbgemm": Recipe("fbgemm", value=fbgemm.prerounding, quantize=_pytorch_quantize, reference=fbgemm.linear),
    "qnnpack": Recipe("qnnpack", bias="int32", value=qnnpack.prerounding, quantize_bias=qnnpack.quantize_bias,
                      quantize=_pytorch_quantize, reference=qnnpack.linear),
    "onednn": Recipe("onednn", zero_point="before",
                     value=lambda acc, sx, sw, b, sy: onednn.prerounding(acc, sx, sw, b, sy, 0),
                     quantize=_pytorch_quantize, reference=onednn.linear),
    # modelled from the kernel's instruction (DIALECTS.md, pytorch/pytorch#44939); this CPU has
    # VNNI, so it is not checked against hardware here
    "fbgemm-avx2": Recipe("fbgemm-avx2", accumulate="int16_pairs", value=fbgemm.prerounding,
                          quantize=_pytorch_quantize),
    "fixed-single": Recipe("fixed-single", bias="int32", tie="up", requant="fixed_single",
                           quantize_bias=_rne_bias),
    "fixed-double": Recipe("fixed-double", bias="int32", tie="up", requant="fixed_double",
                           quantize_bias=_rne_bias),
    "onnx": Recipe("onnx", bias="int32", value=onnx.prerounding, quantize_bias=onnx.quantize_bias,
                   quantize=lambda x, sx, zx: onnx.quantize(x, sx, zx, torch.uint8), input_zero_point="after",
                   reference=onnx.linear),
    "tflite": Recipe("tflite", bias="int32", value=_tflite_xnnpack_value, quantize_bias=tflite.quantize_bias,
                     reference=_tflite_linear("xnnpack")),
    "glassquant": Recipe("glassquant", bias="int32", tie="up", requant="fixed_single", quantize_bias=_rne_bias,
                         reference=_glassquant_linear),
}
RECIPES["x86"] = replace(RECIPES["fbgemm"], name="x86")


def int16_pair_accumulate(x_q: Tensor, x_zero_point: int, w_q: Tensor, w_zero_point: Tensor | int) -> Tensor:
    """fbgemm's AVX2 accumulator: raw products summed in adjacent-k pairs saturated to int16.

    ``acc = sum_j sat16(x[2j] w[2j] + x[2j+1] w[2j+1]) - zx sum_k w - zw sum_k x + K zx zw``;
    x_q uint8 (M, K) raw, w_q int8 (N, K) raw; an odd last k pairs with 0. int64 (M, N).
    Equals eq. 4 whenever no pair leaves [-32768, 32767].
    """
    m, k = x_q.shape
    n = w_q.shape[0]
    x, w = x_q.to(torch.int64), w_q.to(torch.int64)
    if k % 2:
        x, w = torch.nn.functional.pad(x, (0, 1)), torch.nn.functional.pad(w, (0, 1))
    prod = x.reshape(m, 1, -1, 2) * w.reshape(1, n, -1, 2)  # (M, N, K/2, 2)
    pairs = prod.sum(-1).clamp(-(2**15), 2**15 - 1).sum(-1)  # (M, N)
    zw = as_column(w_zero_point, n, torch.int64).reshape(1, n)
    zx = int(x_zero_point)
    return pairs - zx * w.sum(1).reshape(1, n) - zw * x.sum(1, keepdim=True) + k * zx * zw


def _round(v: Tensor, tie: str) -> Tensor:
    """float32 values to integers (float64) with the named tie rule; exact (v is float32)."""
    v64 = v.to(torch.float64)
    if tie == "even":
        return torch.round(v64)
    if tie == "up":
        return torch.floor(v64 + 0.5)
    if tie == "away":
        return torch.sign(v64) * torch.floor(v64.abs() + 0.5)
    raise ValueError(f"unknown tie rule {tie!r}")


def _multipliers(x_scale: float, w_scale: Any, y_scale: float, n: int) -> tuple[Tensor, Tensor]:
    sw = as_column(w_scale, n, torch.float64).tolist()
    pairs = [fixedpoint.quantize_multiplier(float(x_scale) * s / float(y_scale)) for s in sw]
    return (torch.tensor([p[0] for p in pairs], dtype=torch.int64),
            torch.tensor([p[1] for p in pairs], dtype=torch.int64))


def recipe_output(r: Recipe, acc_exact: Tensor, acc_pairs: Tensor | None, layer: Any) -> Tensor:
    """``y_q - zy`` (int64 (M, N)) of ``layer``'s static path under recipe ``r``, unclamped
    to the ReLU only through ``layer.relu`` (clamp range [lo - zy, 255 - zy])."""
    acc = acc_exact if r.accumulate == "exact" else acc_pairs
    assert acc is not None
    sx, sy, zy = layer.x_scale, layer.y_scale, layer.y_zero_point
    sw = layer.w_scale if layer.w_scale.numel() > 1 else float(layer.w_scale)
    bias = layer.bias
    if bias is not None and r.bias == "int32":
        assert r.quantize_bias is not None, f"recipe {r.name}: int32 bias needs quantize_bias"
        acc = acc + r.quantize_bias(bias, sx, sw).reshape(1, -1)
        bias = None
    if r.requant == "float32":
        assert r.value is not None, f"recipe {r.name}: float32 requant needs value"
        v = r.value(acc, sx, sw, bias, sy)
        y = _round(f32(v + f32(float(zy))), r.tie) - zy if r.zero_point == "before" else _round(v, r.tie)
    else:
        if bias is not None:
            raise ValueError(f"recipe {r.name}: fixed-point requantization needs an int32 bias")
        qm, shift = _multipliers(sx, sw, sy, acc.shape[-1])
        fn = (fixedpoint.requantize_single_rounding if r.requant == "fixed_single"
              else fixedpoint.requantize_double_rounding)
        y = fn(acc, qm.reshape(1, -1), shift.reshape(1, -1)).to(torch.float64)
    lo = zy if layer.relu else 0
    return y.clamp(lo - zy, 255 - zy).to(torch.int64)


@dataclass(frozen=True)
class Difference:
    """One differing output (or input) element: where, the two integers, and why."""

    stage: str
    index: tuple[int, ...]
    a: int
    b: int
    cause: str


@dataclass
class Explanation:
    """Every differing element of one layer between two dialects, with its cause."""

    layer: str
    a: str
    b: str
    compared: int
    differences: list[Difference]

    @property
    def counts(self) -> Counter[str]:
        return Counter(d.cause for d in self.differences)

    def to_markdown(self, limit: int = 20) -> str:
        lines = [f"**{self.layer}**: {self.a} vs {self.b}: {len(self.differences)} of {self.compared} "
                 f"integers differ", "", "| cause | count |", "|---|---|"]
        lines += [f"| {CAUSES[c]} | {k} |" for c, k in self.counts.most_common()]
        if self.differences:
            lines += ["", "| stage | element | " + self.a + " | " + self.b + " | cause |", "|---|---|---|---|---|"]
            lines += [f"| {d.stage} | {list(d.index)} | {d.a} | {d.b} | {d.cause} |"
                      for d in self.differences[:limit]]
        return "\n".join(lines)


def _resolve(r: Recipe | str) -> Recipe:
    if isinstance(r, Recipe):
        return r
    try:
        return RECIPES[r]
    except KeyError:
        raise ValueError(f"no recipe for dialect {r!r}; known: {sorted(RECIPES)}") from None


def _input_differences(x: Tensor, layer: Any, a: Recipe, b: Recipe) -> tuple[Tensor, list[Difference]]:
    """Quantize ``x`` with both input rules; name the cause of each differing element exactly."""
    if a.quantize is None or b.quantize is None:
        raise ValueError(f"recipes {a.name}/{b.name}: a float input needs both input quantize rules")
    qa, qb = a.quantize(x, layer.x_scale, layer.x_zero_point), b.quantize(x, layer.x_scale, layer.x_zero_point)
    out = []
    sx, zx = Fraction(layer.x_scale), layer.x_zero_point
    for idx in (qa != qb).nonzero().tolist():
        q = Fraction(float(x[tuple(idx)])) / sx  # exact x / scale
        if q - (q.numerator // q.denominator) == Fraction(1, 2):
            cause = "zero_point" if a.input_zero_point != b.input_zero_point and zx % 2 else "tie"
        else:
            cause = "input_formula"
        out.append(Difference("input", tuple(idx), int(qa[tuple(idx)]), int(qb[tuple(idx)]), cause))
    return qa, out


def explain_linear(layer: Any, x: Tensor, a: Recipe | str, b: Recipe | str, name: str | None = None) -> Explanation:
    """Every element where dialects ``a`` and ``b`` disagree on ``layer``, with its cause.

    ``layer`` is a static ``QuantLinear`` (its qparams, weights and float bias are shared by
    both dialects); ``x`` is its uint8 input (M, K) or a float input (quantized with each
    dialect's rule; output differences are then explained on ``a``'s integers). Numerics:
    the exact int32 accumulator (and fbgemm's int16-pair one where a recipe uses it), each
    hybrid recipe evaluated in full, integers compared with ``!=`` — no tolerance.
    """
    ra, rb = _resolve(a), _resolve(b)
    label = str(name or getattr(layer, "name", "layer"))
    diffs: list[Difference] = []
    if x.dtype == torch.uint8:
        x_q = x.reshape(-1, layer.in_features)
    else:
        x_q, diffs = _input_differences(x.reshape(-1, layer.in_features), layer, ra, rb)
    if ra.bias == "int32" and rb.bias == "float" and layer.bias is not None:
        ra, rb, flipped = rb, ra, True  # walk from the float-bias side (see module docstring)
    else:
        flipped = False
    acc = accumulate(x_q, layer.x_zero_point, layer.w_q, layer.w_zero_point, label)  # (M, N) int64
    pairs = None
    if "int16_pairs" in (ra.accumulate, rb.accumulate):
        pairs = int16_pair_accumulate(x_q, layer.x_zero_point, layer.w_q, layer.w_zero_point)
    steps = [("accumulate", "int16_pairs"), ("bias", "bias"), ("tie", "tie"), ("zero_point", "zero_point"),
             ("requant", None)]
    current = ra
    y_prev = recipe_output(current, acc, pairs, layer)
    y_first = y_prev
    cause_of = torch.full(acc.shape, -1, dtype=torch.int64)
    keys = list(CAUSES)
    for stage, cause in steps:
        nxt = replace(current, **{stage: getattr(rb, stage)})
        if stage == "bias":
            nxt = replace(nxt, quantize_bias=rb.quantize_bias)  # b's rule for bias_q
        if stage == "requant":
            nxt = rb  # the whole of b: its formula, multiplier and rounding
        if nxt == current:
            continue
        y = recipe_output(nxt, acc, pairs, layer)
        changed = (y != y_prev) & (cause_of < 0)
        if stage == "tie":
            cause_of[changed & _false_tie(current, acc, pairs, layer)] = keys.index("precision")
        if cause is None:
            cause = _requant_cause(current, rb)
            if cause == "float_vs_fixed":
                cause_of[changed & _precision_lost(current, nxt, acc, pairs, layer, y)] = keys.index("precision")
        cause_of[changed & (cause_of < 0)] = keys.index(cause)
        current, y_prev = nxt, y
    y_b = y_prev
    if rb.reference is not None:  # the recipe must reproduce the real dialect
        real = rb.reference(x_q, layer.x_scale, layer.x_zero_point, layer.w_q,
                            layer.w_scale if layer.w_scale.numel() > 1 else float(layer.w_scale),
                            layer.w_zero_point, layer.bias, layer.y_scale, layer.y_zero_point, layer.relu)
        real = real.to(torch.int64) - layer.y_zero_point
        cause_of[(real != y_b)] = keys.index("unexplained")
        y_b = real
    differ = (y_first != y_b) | (cause_of == keys.index("unexplained"))
    zy = layer.y_zero_point
    for idx in differ.nonzero().tolist():
        i = tuple(idx)
        c = int(cause_of[i])
        ya, yb = int(y_first[i]) + zy, int(y_b[i]) + zy
        if flipped:
            ya, yb = yb, ya
        diffs.append(Difference("output", i, ya, yb, keys[c] if c >= 0 else "unexplained"))
    n_a, n_b = (rb.name, ra.name) if flipped else (ra.name, rb.name)
    return Explanation(label, n_a, n_b, acc.numel() + (x_q.numel() if x.dtype != torch.uint8 else 0), diffs)


def _exact_value(float_r: Recipe, acc: Tensor, pairs: Tensor | None, layer: Any) -> tuple[Tensor, Tensor]:
    """``(v, lossy)``: the float recipe's value before rounding computed in float64 from the
    integer accumulator (no 2**24 loss; exact enough away from ties), and where the
    accumulator is not exact in float32."""
    a = acc if float_r.accumulate == "exact" else pairs
    assert a is not None
    lossy = a.to(torch.float32).to(torch.int64) != a
    sx, sy = float(layer.x_scale), float(layer.y_scale)
    sw = as_column(layer.w_scale, a.shape[-1], torch.float64).reshape(1, -1)
    total = a.to(torch.float64)
    if layer.bias is not None and float_r.bias == "int32":
        assert float_r.quantize_bias is not None
        total = total + float_r.quantize_bias(layer.bias, sx, layer.w_scale).reshape(1, -1).to(torch.float64)
    elif layer.bias is not None:
        total = total + layer.bias.to(torch.float64).reshape(1, -1) / (sx * sw)
    return total * (sx * sw / sy), lossy


def _precision_lost(float_r: Recipe, fixed_r: Recipe, acc: Tensor, pairs: Tensor | None, layer: Any,
                    y_fixed: Tensor) -> Tensor:
    """Elements whose accumulator is not exact in float32 (|acc| > 2**24) and where the float
    recipe, run in float64 (no such loss), already gives the fixed-point result."""
    if float_r.requant != "float32":
        float_r, fixed_r = fixed_r, float_r
    v, lossy = _exact_value(float_r, acc, pairs, layer)
    zy = layer.y_zero_point
    lo = zy if layer.relu else 0
    y64 = _round(v, fixed_r.tie).clamp(lo - zy, 255 - zy).to(torch.int64)
    return lossy & (y64 == y_fixed)


def _false_tie(r: Recipe, acc: Tensor, pairs: Tensor | None, layer: Any) -> Tensor:
    """Elements that are .5 ties only because float32 rounded the accumulator (|acc| > 2**24):
    their exact value is not a tie."""
    if r.requant != "float32":
        return torch.zeros(acc.shape, dtype=torch.bool)
    v, lossy = _exact_value(r, acc, pairs, layer)
    return lossy & ((v.abs() - v.abs().floor()) != 0.5)


def _requant_cause(a: Recipe, b: Recipe) -> str:
    if a.requant == "float32" and b.requant == "float32":
        return "float_formula"
    if a.requant != "float32" and b.requant != "float32":
        return "double_rounding"
    return "float_vs_fixed"


@dataclass(frozen=True)
class QparamsDifference:
    """Two rules' dynamic activation qparams for one input, and the rule that separates them."""

    a: tuple[float, int, tuple[int, int]]
    b: tuple[float, int, tuple[int, int]]
    cause: str | None
    differing_inputs: int


def explain_activation_qparams(x: Tensor, a: Callable[[Tensor], tuple[Tensor, Any, int, tuple[int, int]]],
                               b: Callable[[Tensor], tuple[Tensor, Any, int, tuple[int, int]]]) -> QparamsDifference:
    """Compare two dynamic activation rules on ``x``: ``rule(x) -> (x_q, scale, zero_point, (qmin, qmax))``.

    Cause: ``reduce_range`` when the integer ranges differ (e.g. fbgemm's [0, 127] against
    qnnpack's [0, 255]); ``zero_point_clamp`` when the scale agrees and only the zero point
    differs (a nudged or clamped zero point); None when both agree. ``differing_inputs``
    counts the activation integers that differ (every output can then differ).
    """
    qa, sa, za, ra = a(x)
    qb, sb, zb, rb = b(x)
    ta, tb = (float(sa), int(za), ra), (float(sb), int(zb), rb)
    cause = None
    if ra != rb:
        cause = "reduce_range"
    elif ta[0] == tb[0] and ta[1] != tb[1]:
        cause = "zero_point_clamp"
    elif ta != tb:
        cause = "unexplained"
    n = int((qa.to(torch.int64) != qb.to(torch.int64)).sum()) if qa.shape == qb.shape else qa.numel()
    return QparamsDifference(ta, tb, cause, n)


def pytorch_activation_rule(engine: str, reduce_range: bool) -> Callable[[Tensor], tuple[Tensor, Any, int,
                                                                                   tuple[int, int]]]:
    """A PyTorch engine's dynamic activation rule in :func:`explain_activation_qparams`' form."""
    from .. import dialects

    d = dialects.get(engine)
    qmax = 255 if engine == "qnnpack" or not reduce_range else 127

    def rule(x: Tensor) -> tuple[Tensor, Any, int, tuple[int, int]]:
        x_q, scale, zp = d.quantize_activation(x, reduce_range)
        return x_q, scale, zp, (0, qmax)

    return rule
