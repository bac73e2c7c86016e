"""AdaRound: learn, weight by weight, whether to round down or up, to reconstruct a layer's outputs.

Nagel, Amjad, van Baalen, Louizos, Blankevoort (2020), "Up or Down? Adaptive Rounding for
Post-Training Quantization". Round to nearest (RTN) makes each weight's error as small as
possible; AdaRound makes the *layer output's* error small. For one layer with weight ``W``
(N, K), calibration inputs ``x_t`` (K,) (t = 1..n) and a grid with (scale, zero_point) fixed by
eq. 2 of docs/quantization.md (min/max, exactly as RTN), every weight gets a continuous
variable ``V`` and a soft integer

    h(V)   = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),  zeta = 1.1, gamma = -0.1   (A1)
    q~     = clamp(floor(w / scale) + h(V) + zero_point, qmin, qmax)                      (A2)
    w~     = scale * (q~ - zero_point)                                                    (A3)

(the rectified sigmoid (A1) reaches 0 and 1 exactly, so the soft integer can settle on
either neighbour). ``V`` minimizes, with Adam,

    E(V) = mean_t ||(W - W~) x_t||^2 = trace((W - W~) G (W - W~)^T),  G = 1/n sum_t x_t x_t^T  (A4)
    loss = E(V) / E_rtn + lambda * mean_i (1 - |2 h(V_i) - 1|^beta)                       (A5)

The regularizer pushes every ``h`` to 0 or 1; ``beta`` is annealed linearly from
``beta_start`` (only values far from 0/1 are penalized) to ``beta_end`` (all are), after
``warmup`` of the iterations with ``lambda = 0``. (A5) is the paper's objective up to one
positive constant per layer (its ``lambda`` equals ours times ``E_rtn / (N K)``): dividing by
``E_rtn``, the RTN error (A4) of the same layer, makes one ``lambda`` fit layers of any size
and scale. Finally the rounding is hard:

    q = clamp(floor(w / scale) + [h(V) >= 0.5] + zero_point, qmin, qmax)                  (A6)

where ``h(V) >= 0.5`` is evaluated exactly as ``V >= 0`` (sigmoid is increasing and
``sigmoid(0) * 1.2 - 0.1 = 0.5``). ``V`` starts at the value with ``h(V) = frac(w / scale)``, so
before any step (A6) is RTN except at exact ties (RTN rounds those half to even).

Cost and bounds: ``G`` is summed once (float64, via ``glassquant.gptq.HessianAccumulator``,
``G = H / 2``) and factored once, ``G = L L^T`` with ``L`` (K, r), ``r <= min(n, K)``
(:func:`gram_factor`), so (A4) is ``||(W - W~) L||^2``; each Adam step is one (N, K) @ (K, r)
product and its gradient, over all calibration tokens at once: no sampling, no random numbers,
so the result is the same on every run with the same thread count. The work is bounded by
``AdaRoundConfig.iterations`` (default 1000 per layer, at most ``MAX_ITERATIONS``): about
``6 N K r`` flops per step (1 s per layer of 384 x 384 on one core; all-MiniLM-L6-v2's 37 layers
in a few minutes). ``damp`` adds ``damp * mean(diag G) * ||W - W~||^2`` (GPTQ's dampening).
Inputs are each layer's inputs in the *float* model (as ``glassquant.gptq.gptq_model``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .affine import dequantize, expand_param
from .convert import run_batches  # one rule for feeding batches to a model
from .errors import check_finite
from .gptq import HessianAccumulator
from .qparams import choose_qparams, observe_range
from .scheme import QScheme

ZETA, GAMMA = 1.1, -0.1  #: stretch of the rectified sigmoid (A1), the paper's values
MAX_ITERATIONS = 20_000
#: Below this many multiply-adds per (A4) product, the Adam loop runs on one thread (then restores the count).
SMALL_LAYER_MACS = 1 << 22

__all__ = [
    "GAMMA",
    "MAX_ITERATIONS",
    "ZETA",
    "AdaRoundConfig",
    "RoundedWeight",
    "adaround_model",
    "adaround_weight",
    "beta_at",
    "collect_grams",
    "dequantized_module",
    "gram_factor",
    "gram_from_inputs",
    "layer_rows",
    "reconstruction_error",
    "rectified_sigmoid",
    "rounding_regularizer",
    "v_from_fraction",
    "weight_only_linear",
]


@dataclass(frozen=True)
class AdaRoundConfig:
    """Optimization settings of (A5); the defaults were chosen on the digits MLP's calibration split."""

    iterations: int = 1000  #: Adam steps per layer, in [0, MAX_ITERATIONS]
    lr: float = 1e-2  #: Adam learning rate on V
    reg_weight: float = 10.0  #: lambda of (A5)
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2  #: fraction of the iterations without the regularizer
    damp: float = 0.0  #: G + damp * mean(diag G) * I (as GPTQ's percdamp), against over-fitting few tokens

    def __post_init__(self) -> None:
        if not 0 <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(f"AdaRoundConfig.iterations must be in [0, {MAX_ITERATIONS}], got {self.iterations}")
        if not self.lr > 0 or not self.reg_weight >= 0 or not self.damp >= 0:
            raise ValueError("AdaRoundConfig: lr must be > 0, reg_weight and damp >= 0")
        if not self.beta_start >= self.beta_end > 0:
            raise ValueError(f"AdaRoundConfig: need beta_start >= beta_end > 0, got {self.beta_start}, {self.beta_end}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"AdaRoundConfig.warmup must be in [0, 1), got {self.warmup}")


def rectified_sigmoid(v: Tensor) -> Tensor:
    """(A1) ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``.

    Numerics: float in, same dtype out, in [0, 1]; ``h = 0`` for ``V <= -ln 11 = -2.398``,
    ``h = 1`` for ``V >= ln 11``, ``h(0) = 0.5``. Gradient 0 where the clamp is active.
    """
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def v_from_fraction(frac: Tensor) -> Tensor:
    """The ``V`` with ``h(V) = frac`` for ``frac`` in [0, 1): ``V = -log((zeta - gamma) / (frac - gamma) - 1)``.

    Example: frac 0.5 -> V = 0; frac 0 -> V = -ln 11 = -2.398 (h exactly 0).
    Numerics: float32 in and out, finite for frac in [0, 1].
    """
    return -torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0)


def rounding_regularizer(h: Tensor, beta: float) -> Tensor:
    """(A5)'s ``mean_i (1 - |2 h_i - 1|^beta)``: 0 when every ``h`` is 0 or 1, 1 when all are 1/2."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).mean()


def beta_at(step: int, config: AdaRoundConfig) -> float | None:
    """Annealed ``beta`` at ``step`` (0-based), or None during the warm-up (no regularizer).

    Linear from ``beta_start`` at the end of the warm-up to ``beta_end`` at the last step.
    """
    start = int(config.warmup * config.iterations)
    if step < start:
        return None
    t = (step - start) / max(1, config.iterations - 1 - start)
    return config.beta_end + (config.beta_start - config.beta_end) * max(0.0, 1.0 - t)


def gram_from_inputs(inputs: Tensor | Iterable[Tensor], name: str = "layer") -> Tensor:
    """(A4)'s ``G = 1/n sum_t x_t x_t^T`` float64 (K, K) from inputs (..., K), one tensor or several."""
    batches = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if not batches or not isinstance(batches[0], Tensor) or batches[0].dim() == 0:
        raise ValueError(f"{name}: no calibration inputs of shape (..., K) given")
    acc = HessianAccumulator(batches[0].shape[-1], name)
    for x in batches:
        acc.add(x)
    return acc.hessian() / 2.0


def reconstruction_error(delta: Tensor, gram: Tensor) -> Tensor:
    """(A4) ``trace(delta G delta^T) = mean_t ||delta x_t||^2`` for ``delta = W - W~`` (N, K).

    Numerics: in ``delta``'s dtype; ``(N, K) @ (K, K) -> (N, K)``, then an elementwise product summed.
    """
    return ((delta @ gram) * delta).sum()  # (N, K) @ (K, K) -> (N, K)


@dataclass
class RoundedWeight:
    """Integers of one layer's weight on ``scheme``'s grid, and what they cost on the calibration data.

    ``w_q`` (N, K) ``scheme.dtype``; ``scale`` float32 and ``zero_point`` int32 with the
    scheme's parameter shape ((N,) per channel, (N, K/g) per group, () per tensor);
    ``shape`` the layer's weight shape (a conv's (O, C, kh, kw) flattened to (O, C*kh*kw));
    ``error_rtn`` / ``error``: (A4) of round to nearest and of these integers, float64.
    """

    w_q: Tensor
    scale: Tensor
    zero_point: Tensor
    scheme: QScheme
    shape: tuple[int, ...]
    error_rtn: float
    error: float

    def dequantize(self) -> Tensor:
        """Eq. 1, float32, in the layer's weight shape."""
        return dequantize(self.w_q, self.scale, self.zero_point, self.scheme).reshape(self.shape)


def _check_scheme(scheme: QScheme, k: int, name: str) -> None:
    if scheme.granularity == "per_channel" and scheme.axis not in (0, -2):
        raise ValueError(f"{name}: per-channel weights need axis 0 (output channels), got {scheme.axis}")
    if scheme.granularity == "per_group" and k % (scheme.group_size or 1):
        raise ValueError(f"{name}: in_features {k} is not a multiple of group_size {scheme.group_size}")


def adaround_weight(weight: Tensor, gram: Tensor, scheme: QScheme, config: AdaRoundConfig = AdaRoundConfig(),
                    name: str = "weight") -> RoundedWeight:
    """AdaRound integers (A1)-(A6) for ``weight`` (N, K) given ``gram`` (A4) of its inputs.

    Numerics: qparams by eq. 2 on the float32 weight (``observe_range`` + ``choose_qparams``,
    the same as RTN); ``w / scale`` one float32 division, ``floor`` exact; the optimization in
    float32 (``G`` rounded from float64); (A6) adds integers and clamps to ``[qmin, qmax]``.
    Errors (A4) are evaluated in float64. ``iterations=0`` gives RTN with ties rounded up.
    """
    if weight.dim() != 2 or weight.numel() == 0 or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a non-empty float (N, K) weight, got {weight.dtype} "
                         f"{tuple(weight.shape)}")
    k = weight.shape[1]
    if gram.shape != (k, k):
        raise ValueError(f"{name}: Gram matrix shape {tuple(gram.shape)} does not match in_features ({k}, {k})")
    check_finite(weight, name)
    check_finite(gram, f"{name}: Gram matrix")
    _check_scheme(scheme, k, name)
    w = weight.detach().to(torch.float32)
    scale, zero_point = choose_qparams(*observe_range(w, scheme, name), scheme)
    s = expand_param(scale, w, scheme)  # broadcastable to (N, K)
    z = expand_param(zero_point, w, scheme).to(torch.float32)
    ratio = w / s  # (N, K) float32, one division
    w_floor = torch.floor(ratio)
    frac = (ratio - w_floor).clamp(0.0, 1.0)
    g64 = gram.detach().to(torch.float64)
    damp = config.damp * float(torch.diagonal(g64).mean())
    qmin, qmax = float(scheme.qmin), float(scheme.qmax)

    def integers(up: Tensor) -> Tensor:  # (A6) / RTN: floor + {0, 1} + zero point, clamped
        return torch.clamp(w_floor + up + z, qmin, qmax)

    def error64(q: Tensor) -> float:  # (A4) on the undampened G
        return float(reconstruction_error(w.to(torch.float64) - ((q - z) * s).to(torch.float64), g64))

    q_rtn = torch.clamp(torch.round(ratio) + z, qmin, qmax)
    error_rtn = error64(q_rtn)
    v = v_from_fraction(frac)
    if config.iterations > 0 and error_rtn > 0:
        factor = gram_factor(g64)  # (K, r)
        scale_loss = error_rtn + damp * float(((q_rtn - z) * s - w).to(torch.float64).pow(2).sum())
        v = _optimize(w, w_floor, v, s, z, factor, damp, scale_loss, (qmin, qmax), config)
    q = integers((v >= 0).to(torch.float32))
    return RoundedWeight(q.to(scheme.dtype), scale, zero_point, scheme, tuple(weight.shape), error_rtn, error64(q))


def gram_factor(gram: Tensor, rtol: float = 1e-10) -> Tensor:
    """``L`` (K, r) float32 with ``L L^T = G`` (eigenvalues below ``rtol * max`` dropped), so that
    (A4) is the sum of squares ``||delta L||^2`` and costs ``N K r`` with ``r <= min(n, K)``.

    Numerics: ``torch.linalg.eigh`` in float64, ``L = U sqrt(lambda)`` rounded to float32 once.
    """
    evals, evecs = torch.linalg.eigh(gram.to(torch.float64))  # ascending
    keep = evals > rtol * max(float(evals.max()), 0.0)
    return (evecs[:, keep] * evals[keep].sqrt()).to(torch.float32)  # (K, r)


def _optimize(w: Tensor, w_floor: Tensor, v0: Tensor, s: Tensor, z: Tensor, factor: Tensor, damp: float,
              scale_loss: float, qrange: tuple[float, float], config: AdaRoundConfig) -> Tensor:
    """Adam on (A5) with (A4) as ``||delta L||^2 (+ damp ||delta||^2)``; returns the final ``V`` (N, K) float32."""
    threads = torch.get_num_threads()
    if w.numel() * factor.shape[1] < SMALL_LAYER_MACS:
        torch.set_num_threads(1)  # small products: threads only add synchronization (and contention)
    try:
        return _adam_loop(w, w_floor, v0, s, z, factor, damp, scale_loss, qrange, config)
    finally:
        torch.set_num_threads(threads)


def _adam_loop(w: Tensor, w_floor: Tensor, v0: Tensor, s: Tensor, z: Tensor, factor: Tensor, damp: float,
               scale_loss: float, qrange: tuple[float, float], config: AdaRoundConfig) -> Tensor:
    v = v0.clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=config.lr)
    for step in range(config.iterations):
        opt.zero_grad()
        h = rectified_sigmoid(v)
        q_soft = torch.clamp(w_floor + h + z, *qrange)  # (A2)
        delta = w - (q_soft - z) * s  # (A3): (N, K)
        rec = (delta @ factor).pow(2).sum()  # (N, K) @ (K, r) -> (N, r): (A4)
        if damp > 0:
            rec = rec + damp * delta.pow(2).sum()
        loss = rec / scale_loss
        beta = beta_at(step, config)
        if beta is not None and config.reg_weight > 0:
            loss = loss + config.reg_weight * rounding_regularizer(h, beta)
        loss.backward()
        opt.step()
    return v.detach()


# ----- layers and models ----------------------------------------------------------------------------


def layer_rows(module: nn.Module, x: Tensor, name: str = "layer") -> Tensor:
    """The rows (M, K) the layer's weight (N, K) multiplies: a Linear's inputs, a Conv2d's patches.

    Conv2d (groups 1, zero padding): ``F.unfold`` with the layer's kernel, dilation, padding
    and stride, ``(n, C*kh*kw, L) -> (n*L, C*kh*kw)``, columns in the order of
    ``weight.reshape(O, -1)`` (channel, then kernel row, then kernel column).
    """
    if isinstance(module, nn.Linear):
        return x.detach().reshape(-1, module.in_features)  # (M, K)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(f"{name}: AdaRound handles Conv2d with groups=1, numeric zero padding only")
        cols = nn.functional.unfold(x.detach(), module.kernel_size, module.dilation, module.padding,
                                    module.stride)  # (n, C*kh*kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (n*L, C*kh*kw)
    raise TypeError(f"{name}: AdaRound handles nn.Linear and nn.Conv2d, got {type(module).__name__}")


def collect_grams(model: nn.Module, batches: Iterable[Any], run: Callable[[nn.Module, Any], Any] | None = None,
                  include: Sequence[str] | None = None,
                  types: tuple[type[nn.Module], ...] = (nn.Linear,)) -> dict[str, Tensor]:
    """(A4)'s ``G`` float64 (K, K) of every layer of ``types`` (names matching ``include`` globs).

    One pass of the float model over ``batches`` (``run(model, batch)``, default ``model(batch)``,
    ``model(*batch)`` for tuples, ``model(**batch)`` for dicts) with forward pre-hooks that add
    :func:`layer_rows` of each layer's input. GPTQ's Hessian (G1) is ``2 G``.
    """
    layers = {n: m for n, m in model.named_modules() if type(m) in types
              and (include is None or any(fnmatch.fnmatchcase(n, p) for p in include))}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layer of types {[t.__name__ for t in types]} to AdaRound")
    accs = {n: HessianAccumulator(m.weight[0].numel(), f"layer {n!r}") for n, m in layers.items()}
    handles = [m.register_forward_pre_hook(lambda mod, a, n=n: accs[n].add(layer_rows(mod, a[0], n)))
               for n, m in layers.items()]
    if run_batches(model, batches, handles, run=run) == 0:
        raise ValueError("AdaRound needs calibration data: batches is empty")
    return {n: acc.hessian() / 2.0 for n, acc in accs.items()}


def adaround_model(model: nn.Module, batches: Iterable[Any] | None, scheme: QScheme,
                   config: AdaRoundConfig = AdaRoundConfig(), run: Callable[[nn.Module, Any], Any] | None = None,
                   include: Sequence[str] | None = None, types: tuple[type[nn.Module], ...] = (nn.Linear,),
                   grams: dict[str, Tensor] | None = None) -> dict[str, RoundedWeight]:
    """AdaRound every layer of ``types`` (names matching ``include`` globs); ``{name: RoundedWeight}``.

    ``grams`` (from :func:`collect_grams`) skips the calibration pass. Each layer is rounded
    alone, from its inputs in the float model. The model is not modified: build layers with
    :func:`weight_only_linear` (grids glassquant's layers hold) or :func:`dequantized_module`.
    """
    if grams is None:
        if batches is None:
            raise ValueError("AdaRound needs calibration data: give batches or precomputed grams")
        grams = collect_grams(model, batches, run, include, types)
    out: dict[str, RoundedWeight] = {}
    for n, g in grams.items():
        w = model.get_submodule(n).weight
        assert isinstance(w, Tensor)
        r = adaround_weight(w.detach().reshape(w.shape[0], -1), g, scheme, config, f"{n}.weight")  # (N, K)
        r.shape = tuple(w.shape)  # a conv's (O, C, kh, kw); its rows are (O, C*kh*kw)
        out[n] = r
    return out


def weight_only_linear(linear: nn.Linear, rounded: RoundedWeight, name: str = "WeightOnlyLinear") -> nn.Module:
    """A weight-only layer holding ``rounded``'s integers, scales and zero points unchanged:

    - ``WeightOnlyLinear`` for the grids it stores: int4 (``QScheme(bits=4, signed=False,
      symmetric=False, group_size=g)``, g in 32/64/128, two per byte; or ``axis=0`` when K is one
      of those sizes) and int8 per output channel (``QScheme(bits=8, signed=True, symmetric=True,
      axis=0)``, scale (N, 1));
    - ``PackedWeightOnlyLinear`` for any other asymmetric unsigned b-bit grid, 2 <= b <= 8, per
      tensor, per output channel or per group of 32/64/128 along K (codes and zero points packed
      b bits each; ``nn.weight_only.packed_scheme``).

    Other grids raise ``ValueError`` naming them (use :func:`dequantized_module`).
    """
    from .kernels.int4 import pack_bits, pack_int4
    from .nn.weight_only import (
        INT4_GROUP_SIZES,
        INT8_PER_ROW,
        PACKED_BITS,
        PackedWeightOnlyLinear,
        WeightOnlyLinear,
        int4_scheme,
        packed_scheme,
    )

    sch = rounded.scheme
    bias = None if linear.bias is None else linear.bias.detach()
    n, k = rounded.w_q.shape
    group = k if sch.granularity == "per_channel" and sch.axis == 0 else sch.group_size  # a row = one group of K
    if group in INT4_GROUP_SIZES and sch == replace(int4_scheme(1), axis=sch.axis, group_size=sch.group_size):
        return WeightOnlyLinear(pack_int4(rounded.w_q, f"{name}.weight"), rounded.scale.reshape(-1, k // group),
                                rounded.zero_point.to(torch.uint8).reshape(-1, k // group), bias, bits=4,
                                group_size=group, name=name)
    if sch == INT8_PER_ROW:
        return WeightOnlyLinear(rounded.w_q, rounded.scale.reshape(-1, 1), None, bias, bits=8, group_size=k,
                                name=name)
    granularity = "per_channel" if sch.granularity == "per_channel" and sch.axis == 0 else sch.granularity
    packed = None
    if sch.bits in PACKED_BITS and not sch.signed and not sch.symmetric and granularity in (
            "per_tensor", "per_channel", "per_group") and (granularity != "per_group" or group in INT4_GROUP_SIZES):
        packed = packed_scheme(sch.bits, granularity, sch.group_size if granularity == "per_group" else None)
    if packed is None or sch != packed:
        raise ValueError(f"{name}: weight-only layers store int4 per group, int8 per row (symmetric) or an "
                         f"asymmetric unsigned 2-8-bit grid per tensor / channel / group of 32, 64 or 128; {sch} "
                         "has no weight-only layer here — use dequantized_module")
    groups = 1 if granularity == "per_tensor" else (n if granularity == "per_channel" else n * (k // int(group or k)))
    scale = rounded.scale.reshape(groups).reshape((1, 1) if granularity == "per_tensor" else (n, groups // n))
    codes = rounded.w_q.to(torch.uint8).reshape(-1)
    zero_point = rounded.zero_point.reshape(-1).to(torch.uint8)
    return PackedWeightOnlyLinear(pack_bits(codes, sch.bits, f"{name}.weight"), scale,
                                  pack_bits(zero_point, sch.bits, f"{name}.zero_point"), bias, bits=sch.bits,
                                  granularity=granularity, group_size=sch.group_size if granularity == "per_group"
                                  else None, in_features=k, out_features=n, name=name)


def dequantized_module(module: nn.Module, rounded: RoundedWeight) -> nn.Module:
    """A copy of the float layer whose weight is eq. 1 of the integers (float32): the arithmetic of a
    weight-only layer up to the matmul's summation order."""
    import copy

    out = copy.deepcopy(module)
    weight = out.weight
    if not isinstance(weight, Tensor) or weight.numel() != rounded.w_q.numel():
        raise ValueError(f"{type(module).__name__}: weight does not match the rounded shape {rounded.shape}")
    with torch.no_grad():
        weight.copy_(rounded.dequantize().reshape(weight.shape))
    return out


