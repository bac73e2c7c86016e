"""Quantization-aware training: fake quantization with learned step sizes (LSQ), then integer layers.

Esser, McKinstry, Bablani, Appuswamy, Modha (2020), "Learned Step Size Quantization", with the
zero point learned too for affine grids (Bhalgat et al. 2020, "LSQ+"). A fake quantizer on a
``QScheme`` grid computes, with a learnable ``scale`` and (affine grids) a learnable float
``zero_point`` rounded on the way,

    z   = clamp(rne(zero_point), qmin, qmax)                                          (Q1)
    q   = clamp(rne(x / scale) + z, qmin, qmax)                                       (Q2, eq. 3)
    out = (q - z) * scale                                                             (Q3, eq. 1)

— exactly ``glassquant.affine.dequantize(quantize(x, scale, z))`` in float32, bit for bit.
Backward: ``rne`` passes gradients straight through (STE), so the scale's gradient is LSQ's
``rne(x/s) - x/s`` inside the grid and ``qmin - z`` / ``qmax - z`` where the clamp saturates;
``x`` gets the gradient only inside the grid; the zero point only where the clamp saturates.
The scale's and zero point's gradients are multiplied by LSQ's

    g = 1 / sqrt(N * Qp)                                                              (Q4)

``N`` the values sharing one scale (per-channel weights: ``K``; per-tensor activations: the
features of one example), ``Qp = qmax`` (3 for signed 3-bit, 255 for uint8).

``prepare_qat`` swaps each ``nn.Linear`` (fused with a following ``nn.ReLU`` in an
``nn.Sequential``) for a :class:`QATLinear` (weight per channel, input and output per tensor),
calibrates the activation quantizers with min/max (eq. 2) and initializes the weight scales.
``convert_qat`` turns every ``QATLinear`` into a static ``QuantLinear``: int8 storage of the
b-bit integers (all in ``[qmin, qmax]`` of the weight grid), the learned scales and zero
points, the engine's integer arithmetic — the normal file format and verification apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .affine import expand_param
from .convert import run_batches
from .observers import MinMaxObserver
from .qparams import SCALE_EPS, choose_qparams, observe_range
from .scheme import QScheme

__all__ = ["LSQFakeQuantize", "QATLinear", "act_scheme", "convert_qat", "grad_scale", "lsq_grad_factor",
           "prepare_qat", "round_ste", "train_classifier", "weight_scheme"]


def weight_scheme(bits: int) -> QScheme:
    """Weights: signed ``bits``-bit, symmetric (zero point 0), one scale per output channel (3 bits: [-4, 3])."""
    return QScheme(bits=bits, signed=True, symmetric=True, axis=0)


def act_scheme(bits: int) -> QScheme:
    """Activations: unsigned ``bits``-bit affine, one (scale, zero point) per tensor (8 bits: [0, 255])."""
    return QScheme(bits=bits, signed=False, symmetric=False)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad * ctx.factor, None


def round_ste(x: Tensor) -> Tensor:
    """Round half to even forward (exact), identity gradient (straight-through estimator)."""
    return _RoundSTE.apply(x)


def grad_scale(x: Tensor, factor: float) -> Tensor:
    """``x`` unchanged forward (the same bits), gradient multiplied by ``factor`` (Q4)."""
    return _GradScale.apply(x, factor)


def lsq_grad_factor(values_per_scale: int, qmax: int) -> float:
    """(Q4) ``1 / sqrt(N * Qp)``. Example: a 3-bit weight row of K = 64: 1 / sqrt(64 * 3) = 0.0722."""
    if values_per_scale < 1 or qmax < 1:
        raise ValueError(f"lsq_grad_factor: need N >= 1 and Qp >= 1, got {values_per_scale}, {qmax}")
    return 1.0 / math.sqrt(values_per_scale * qmax)


class LSQFakeQuantize(nn.Module):
    """(Q1)-(Q3) with a learnable scale (and zero point, for affine grids), on ``scheme``'s grid.

    ``scale`` (C,) for per-channel schemes along axis 0, (1,) per tensor. While ``observing`` is
    True (after construction, for activations), ``forward`` returns ``x`` unchanged and feeds a
    min/max observer; :meth:`finish_calibration` then sets the qparams by eq. 2.

    Numerics of ``forward``: ``x`` computed in float32; ``scale`` float32 clamped to
    ``>= SCALE_EPS``; one float32 division, round half to even, the (integer-valued) zero point
    added in float32 (exact below 2**24), clamp to ``[qmin, qmax]``, ``(q - z)`` exact, one float32
    multiply; output in ``x``'s dtype. Equal to ``affine.dequantize(affine.quantize(x, *qparams()))``.
    """

    def __init__(self, scheme: QScheme, channels: int = 1, name: str = "fake_quantize",
                 learn_zero_point: bool = True) -> None:
        super().__init__()
        if scheme.granularity == "per_group":
            raise ValueError(f"{name}: LSQFakeQuantize handles per-tensor and per-channel (axis 0) grids")
        if scheme.granularity == "per_channel" and scheme.axis not in (0,):
            raise ValueError(f"{name}: per-channel fake quantization needs axis 0, got {scheme.axis}")
        self.scheme, self.name = scheme, name
        c = channels if scheme.granularity == "per_channel" else 1
        self.scale = nn.Parameter(torch.ones(c))
        midpoint = (scheme.qmin + scheme.qmax + 1) // 2 if scheme.symmetric and not scheme.signed else 0
        zp = torch.full((c,), float(midpoint))  # eq. 2's symmetric zero point; affine: learned from calibration
        self.learn_zero_point = learn_zero_point and not scheme.symmetric
        if self.learn_zero_point:
            self.zero_point = nn.Parameter(zp)
        else:
            self.register_buffer("zero_point", zp)
        self.observing = False
        self._observer: MinMaxObserver | None = None

    # ---- initialization
    def start_calibration(self) -> None:
        """Observe min/max on the following forwards (identity outputs)."""
        self.observing, self._observer = True, MinMaxObserver(self.scheme, self.name)

    def finish_calibration(self) -> None:
        """Set scale and zero point from the observed range by eq. 2; stop observing."""
        if self._observer is None or self._observer.batches == 0:
            raise ValueError(f"{self.name}: no calibration input was seen; the layer was never called")
        scale, zp = self._observer.qparams()
        self.set_qparams(scale, zp)
        self.observing, self._observer = False, None

    def set_qparams(self, scale: Tensor, zero_point: Tensor) -> None:
        """Overwrite the learnable values (float32 scale > 0, integer zero point), broadcast to the shape."""
        with torch.no_grad():
            self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32).reshape(-1).expand_as(self.scale))
            self.zero_point.copy_(torch.as_tensor(zero_point).to(torch.float32).reshape(-1)
                                  .expand_as(self.zero_point))

    def init_weight(self, weight: Tensor, rule: str = "mse", candidates: int = 100) -> None:
        """Weight scales: ``"minmax"`` (eq. 2 on each channel's range: round-to-nearest PTQ) or
        ``"mse"`` (per channel, the min/max scale times the factor in ``{0.2 + 0.8 i / candidates}``,
        i = 1..candidates, with the smallest ``||w - fq(w)||^2``, float32)."""
        scale, zp = choose_qparams(*observe_range(weight, self.scheme, self.name), self.scheme)
        if rule == "mse":
            w = weight.detach().to(torch.float32)
            best, best_err = scale.clone(), torch.full_like(scale, float("inf"))
            for i in range(1, candidates + 1):
                s = torch.clamp(scale * (0.2 + 0.8 * i / candidates), min=SCALE_EPS)
                sq = (self._fq(w, s, zp.to(torch.float32)) - w).pow(2)
                err = sq.reshape(w.shape[0], -1).sum(dim=1) if s.numel() > 1 else sq.sum().reshape(1)
                better = err < best_err
                best, best_err = torch.where(better, s, best), torch.where(better, err, best_err)
            scale = best
        elif rule != "minmax":
            raise ValueError(f"{self.name}: weight init must be 'minmax' or 'mse', got {rule!r}")
        self.set_qparams(scale, zp)

    # ---- forward
    def _fq(self, x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
        """(Q1)-(Q3) with given float32 scale and float zero point (already gradient-scaled)."""
        sch = self.scheme
        s = expand_param(scale, x, sch) if sch.granularity == "per_channel" else scale.reshape(())
        zf = expand_param(zero_point, x, sch) if sch.granularity == "per_channel" else zero_point.reshape(())
        z = torch.clamp(round_ste(zf), sch.qmin, sch.qmax)  # (Q1)
        q = torch.clamp(round_ste(x.to(torch.float32) / s) + z, sch.qmin, sch.qmax)  # (Q2)
        return (q - z) * s  # (Q3)

    def values_per_scale(self, x: Tensor) -> int:
        """(Q4)'s ``N``: a channel's values (per channel), one example's values (per tensor)."""
        if self.scheme.granularity == "per_channel":
            return max(1, x[0].numel())
        return max(1, x.numel() // max(1, x.shape[0])) if x.dim() > 1 else max(1, x.numel())

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            assert self._observer is not None
            self._observer.update(x.detach())
            return x
        factor = lsq_grad_factor(self.values_per_scale(x), self.scheme.qmax)
        scale = torch.clamp(grad_scale(self.scale, factor), min=SCALE_EPS)
        zp = grad_scale(self.zero_point, factor) if self.learn_zero_point else self.zero_point
        return self._fq(x, scale, zp).to(x.dtype)

    def qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale float32, zero_point int32)`` as the integer layers take them ((C,) or (1,))."""
        scale = torch.clamp(self.scale.detach().to(torch.float32), min=SCALE_EPS)
        zp = torch.clamp(torch.round(self.zero_point.detach()), self.scheme.qmin, self.scheme.qmax)
        return scale.clone(), zp.to(torch.int32)

    def extra_repr(self) -> str:
        return f"{self.scheme}, observing={self.observing}"


class QATLinear(nn.Module):
    """A float Linear trained through fake quantization: ``y = fq_out(relu?(fq_in(x) @ fq_w(W)^T + b))``.

    ``weight_fq`` per output channel; ``input_fq`` and ``output_fq`` per tensor. ``input_shared``:
    ``input_fq`` is the previous layer's ``output_fq`` (consecutive layers of an ``nn.Sequential``),
    whose output is already on the grid, so it is not applied twice; after conversion both
    layers then hold the same qparams, as torch.ao's converted models do.
    """

    def __init__(self, linear: nn.Linear, weight: QScheme, activation: QScheme, relu: bool = False,
                 name: str = "QATLinear") -> None:
        super().__init__()
        self.in_features, self.out_features, self.relu, self.name = linear.in_features, linear.out_features, relu, name
        self.weight = nn.Parameter(linear.weight.detach().to(torch.float32).clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.float32).clone())
        self.weight_fq = LSQFakeQuantize(weight, linear.out_features, f"{name}: weight")
        self.input_fq = LSQFakeQuantize(activation, 1, f"{name}: input")
        self.output_fq = LSQFakeQuantize(activation, 1, f"{name}: output")
        self.input_shared = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.input_shared:
            x = self.input_fq(x)
        w = self.weight if self.input_fq.observing else self.weight_fq(self.weight)
        y = nn.functional.linear(x, w, self.bias)  # (..., K) @ (K, N) -> (..., N) float32
        if self.relu:
            y = torch.relu(y)
        return self.output_fq(y)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, relu={self.relu}, "
                f"input_shared={self.input_shared}")


def _linear_relu_pairs(model: nn.Module) -> dict[str, str]:
    from .convert import linear_relu_pairs

    return {k: v for k, v in linear_relu_pairs(model).items() if type(model.get_submodule(k)) is nn.Linear}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _share_consecutive(model: nn.Module) -> None:
    """In each ``nn.Sequential``, a QATLinear directly after another (Identity between) reads its output grid."""
    for mod in model.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        prev: QATLinear | None = None
        for child in mod.children():
            if isinstance(child, QATLinear):
                if prev is not None:
                    child.input_fq, child.input_shared = prev.output_fq, True
                prev = child
            elif not isinstance(child, nn.Identity):
                prev = None


def prepare_qat(model: nn.Module, weight_bits: int = 3, act_bits: int = 8, *,
                calibration: Iterable[Any] | None = None, weight: QScheme | None = None,
                activation: QScheme | None = None, weight_init: str = "mse") -> nn.Module:
    """Swap every ``nn.Linear`` (a following ``nn.ReLU`` in an ``nn.Sequential`` fused into it)
    for a :class:`QATLinear`; calibrate the activation grids on ``calibration``. Returns ``model``.

    ``weight`` / ``activation`` default to :func:`weight_scheme` (``weight_bits``) and
    :func:`act_scheme` (``act_bits``). Activation qparams: min/max over the calibration batches
    (eq. 2, the float model's ranges); weight scales by ``weight_init`` (``"mse"`` or
    ``"minmax"``, see :meth:`LSQFakeQuantize.init_weight`). The model is left in train mode.
    """
    w_sch = weight or weight_scheme(weight_bits)
    a_sch = activation or act_scheme(act_bits)
    if a_sch.signed or a_sch.bits > 8 or a_sch.granularity != "per_tensor" or a_sch.symmetric:
        raise ValueError(f"prepare_qat: activations must be unsigned affine per tensor <= 8 bits, got {a_sch}")
    if not w_sch.signed or w_sch.bits > 8 or w_sch.granularity == "per_group":
        raise ValueError(f"prepare_qat: weights must be signed <= 8 bits, per tensor or per channel, got {w_sch}")
    if calibration is None:
        raise ValueError("prepare_qat needs calibration batches to initialize the activation grids")
    relu_of = _linear_relu_pairs(model)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear to prepare for QAT")
    for n in linears:
        lin = model.get_submodule(n)
        assert isinstance(lin, nn.Linear)
        _set_module(model, n, QATLinear(lin, w_sch, a_sch, relu=n in relu_of, name=n))
        if n in relu_of:
            _set_module(model, relu_of[n], nn.Identity())
    _share_consecutive(model)
    layers = [m for m in model.modules() if isinstance(m, QATLinear)]
    for m in layers:
        m.weight_fq.init_weight(m.weight, weight_init)
        m.input_fq.start_calibration()
        m.output_fq.start_calibration()
    model.eval()
    run_batches(model, calibration)
    for m in layers:
        m.output_fq.finish_calibration()
        if not m.input_shared:
            m.input_fq.finish_calibration()
    return model.train()


def convert_qat(model: nn.Module, engine: str = "x86") -> nn.Module:
    """Replace every :class:`QATLinear` by a static ``QuantLinear`` with its learned integers; returns ``model``.

    ``w_q`` = eq. 3 of the weight with the learned per-channel scale (``affine.quantize``: one
    float32 division, half to even, clamp to the b-bit grid), stored as int8; ``w_scale``
    float32 (N,), ``w_zero_point`` int32 (N,); input / output qparams from the activation
    quantizers (scale as a Python float of the float32 value, zero point an int in [0, 255]).
    """
    from .affine import quantize
    from .nn.linear import QuantLinear

    names = [n for n, m in model.named_modules() if isinstance(m, QATLinear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no QATLinear; call prepare_qat first")
    new: dict[str, nn.Module] = {}
    for n in names:
        m = model.get_submodule(n)
        assert isinstance(m, QATLinear)
        w_scale, w_zp = m.weight_fq.qparams()
        w_q = quantize(m.weight.detach(), w_scale if w_scale.numel() > 1 else w_scale.reshape(()),
                       w_zp if w_zp.numel() > 1 else w_zp.reshape(()), m.weight_fq.scheme).to(torch.int8)
        (x_scale, x_zp), (y_scale, y_zp) = m.input_fq.qparams(), m.output_fq.qparams()
        bias = None if m.bias is None else m.bias.detach()
        new[n] = QuantLinear(w_q, w_scale, w_zp, bias, float(x_scale), int(x_zp), float(y_scale), int(y_zp),
                             relu=m.relu, engine=engine, name=n)
    for n, layer in new.items():
        _set_module(model, n, layer)
    return model.eval()


def train_classifier(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int = 10, lr: float = 1e-3,
                     batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Adam on cross-entropy, fixed seed and batch order, one thread: the same weights on every run.

    Every parameter (weights, biases, scales, zero points) shares ``lr``; LSQ's (Q4) scales the
    quantizer gradients. Returns ``model`` in eval mode.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


