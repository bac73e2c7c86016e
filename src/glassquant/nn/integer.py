"""Integer-only layers: int8 in, int8 out, no float at run time (the ``glassquant`` dialect).

``IntLinear`` holds exactly what the C runtime needs (int8 weights, int32 bias, per-channel
Q31 multiplier and right shift, zero points, clamp range); ``to_integer_only`` turns the
``QuantLinear`` layers of a static glassquant model into ``IntLinear``; ``IntegerModel`` runs
a chain of them from an int8 input to the int8 outputs of every layer. The float scales stay
as metadata, used only at the edges (quantize the input, dequantize an output).
The maths is in ``glassquant.dialects.integer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..dialects import integer
from ..dialects._base import INT32_MAX, INT32_MIN
from ..errors import check_integer
from .base import QuantModule, register
from .linear import QuantLinear

__all__ = ["IntLinear", "IntegerModel", "to_integer_only"]

#: uint8 activations (PyTorch engines) to int8: the same real values, every code moved down by 128.
UINT8_TO_INT8 = -128


def _check_int(v: object, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ValueError(f"{name}: {v} outside [{lo}, {hi}]")
    return v


def _scaled_fits_int32(bound: int, multiplier: int, right_shift: int) -> bool:
    """Whether ``requantize(+-bound)`` before the zero point fits int32 (only multipliers >= 1 can fail)."""
    t = 31 + right_shift
    hi = (bound * multiplier + (1 << (t - 1))) >> t  # Python ints: exact, floor
    lo = (-bound * multiplier + (1 << (t - 1))) >> t
    return INT32_MIN <= lo and hi <= INT32_MAX


@register
class IntLinear(QuantModule):
    """Integer-only Linear: ``y_q = clamp(rq(bias_q + sum_k (x_q - zx) w_q) + zy, qmin, qmax)`` (eqs. 4-5).

    Buffers: ``w_q`` int8 (N, K) (symmetric, zero point 0); ``bias_q`` int32 (N,);
    ``multiplier`` int32 (N,), 0 or in [2**30, 2**31); ``right_shift`` int32 (N,) in [-30, 31].
    Meta: ``x_zero_point``/``y_zero_point`` in [-128, 127]; ``qmin <= qmax`` in [-128, 127]
    (``qmin = y_zero_point`` is a fused ReLU); ``x_scale``/``y_scale`` (float, only for the
    edges). The constructor certifies that no int32 partial sum can overflow for any int8
    input (``AccumulatorOverflowError`` otherwise) and that the requantized value fits int32.
    ``forward_int`` maps int8 (..., K) to int8 (..., N); ``forward`` takes and returns float.
    """

    kind = "IntLinear"
    meta_fields = ("x_scale", "x_zero_point", "y_scale", "y_zero_point", "qmin", "qmax", "name")
    optional_tensors = ()
    w_q: Tensor
    bias_q: Tensor
    multiplier: Tensor
    right_shift: Tensor

    def __init__(self, w_q: Tensor, bias_q: Tensor, multiplier: Tensor, right_shift: Tensor, x_scale: float,
                 x_zero_point: int, y_scale: float, y_zero_point: int, qmin: int = integer.QMIN,
                 qmax: int = integer.QMAX, *, name: str = "IntLinear") -> None:
        super().__init__()
        check_integer(w_q, f"{name}: w_q", (torch.int8,))
        if w_q.dim() != 2 or w_q.shape[0] == 0 or w_q.shape[1] == 0:
            raise ValueError(f"{name}: w_q must be a non-empty (N, K), got {tuple(w_q.shape)}")
        n = int(w_q.shape[0])
        for label, t in (("bias_q", bias_q), ("multiplier", multiplier), ("right_shift", right_shift)):
            check_integer(t, f"{name}: {label}", (torch.int32,))
            if t.shape != (n,):
                raise ValueError(f"{name}: {label} shape {tuple(t.shape)} != ({n},)")
        m_ok = (multiplier == 0) | (multiplier >= integer.MULTIPLIER_MIN)
        if not bool(m_ok.all()):
            raise ValueError(f"{name}: multiplier must be 0 or in [2**30, 2**31), got {int(multiplier[~m_ok][0])}")
        if int(right_shift.min()) < integer.RIGHT_SHIFT_MIN or int(right_shift.max()) > integer.RIGHT_SHIFT_MAX:
            raise ValueError(f"{name}: right_shift must lie in [{integer.RIGHT_SHIFT_MIN}, "
                             f"{integer.RIGHT_SHIFT_MAX}], got [{int(right_shift.min())}, {int(right_shift.max())}]")
        self.x_zero_point = _check_int(x_zero_point, f"{name}: x_zero_point", integer.QMIN, integer.QMAX)
        self.y_zero_point = _check_int(y_zero_point, f"{name}: y_zero_point", integer.QMIN, integer.QMAX)
        self.qmin = _check_int(qmin, f"{name}: qmin", integer.QMIN, integer.QMAX)
        self.qmax = _check_int(qmax, f"{name}: qmax", integer.QMIN, integer.QMAX)
        if self.qmin > self.qmax:
            raise ValueError(f"{name}: qmin {self.qmin} > qmax {self.qmax}")
        for label, s in (("x_scale", x_scale), ("y_scale", y_scale)):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < float(s) < float("inf"):
                raise ValueError(f"{name}: {label} must be a finite positive number, got {s!r}")
        self.x_scale, self.y_scale, self.name = float(x_scale), float(y_scale), name
        self.accumulator_bound = integer.check_accumulator(w_q, bias_q, self.x_zero_point, name)
        bounds = integer.accumulator_bound(w_q, bias_q, self.x_zero_point).tolist()
        for j, (b, m, r) in enumerate(zip(bounds, multiplier.tolist(), right_shift.tolist(), strict=True)):
            if not _scaled_fits_int32(b, m, r):
                raise ValueError(f"{name}: output {j}: multiplier {m} with right_shift {r} (a real multiplier >= 1) "
                                 f"can scale |acc| <= {b} past int32")
        self.register_buffer("w_q", w_q.contiguous())
        self.register_buffer("bias_q", bias_q.contiguous())
        self.register_buffer("multiplier", multiplier.contiguous())
        self.register_buffer("right_shift", right_shift.contiguous())

    @property
    def in_features(self) -> int:
        return int(self.w_q.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.w_q.shape[0])

    @property
    def relu(self) -> bool:
        """Whether the clamp includes a ReLU (nothing below the output's real zero)."""
        return self.qmin >= self.y_zero_point

    def forward_int(self, x_q: Tensor) -> Tensor:
        """int8 (..., K) -> int8 (..., N): :func:`glassquant.dialects.integer.linear`, integers only."""
        check_integer(x_q, f"{self.name}: x_q", (torch.int8,))
        if x_q.dim() == 0 or x_q.shape[-1] != self.in_features:
            raise ValueError(f"{self.name}: input has shape {tuple(x_q.shape)}, "
                             f"layer expects (..., {self.in_features})")
        lead = x_q.shape[:-1]
        y_q = integer.linear(x_q.reshape(-1, self.in_features), self.x_zero_point, self.w_q, self.bias_q,
                             self.multiplier, self.right_shift, self.y_zero_point, self.qmin, self.qmax,
                             self.name)  # (M, N)
        return y_q.reshape(*lead, self.out_features)

    def quantize_input(self, x: Tensor) -> Tensor:
        """Float input to int8 with this layer's input qparams (the edge of the integer path)."""
        return integer.quantize(x, self.x_scale, self.x_zero_point, f"{self.name}: input")

    def dequantize_output(self, y_q: Tensor) -> Tensor:
        """int8 outputs to float32 reals with this layer's output qparams."""
        return integer.dequantize(y_q, self.y_scale, self.y_zero_point)

    def forward(self, x: Tensor) -> Tensor:
        return self.dequantize_output(self.forward_int(self.quantize_input(x)))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"x=({self.x_scale:.6g}, {self.x_zero_point}), y=({self.y_scale:.6g}, {self.y_zero_point}), "
                f"clamp=[{self.qmin}, {self.qmax}]")

    @classmethod
    def from_quant_linear(cls, layer: QuantLinear) -> IntLinear:
        """The integer-only equivalent of a static ``QuantLinear`` (uint8 activations, any engine).

        Numerics: weights must be symmetric (every zero point 0; per-tensor or per-channel
        scales, a per-tensor scale repeated per channel). uint8 zero points ``z`` become int8
        ``z - 128`` (exact: same real values); ``qmin = zy - 128`` with a fused ReLU, else -128;
        ``qmax = 127``. ``bias_q`` and ``(multiplier, right_shift)`` from the float32 scales by
        :func:`~glassquant.dialects.integer.bias_to_int32` and
        :func:`~glassquant.dialects.integer.requantize_params` (float64, offline). The outputs
        can differ from the engine's float32 requantization by one step on near-ties.
        """
        if not isinstance(layer, QuantLinear):
            raise TypeError(f"from_quant_linear: expected a QuantLinear, got {type(layer).__name__}")
        name = layer.name
        if bool((layer.w_zero_point != 0).any()):
            raise ValueError(f"{name}: the integer-only dialect needs symmetric weights (zero point 0), "
                             f"got weight zero points {sorted(set(layer.w_zero_point.tolist()))[:5]}")
        n = layer.out_features
        w_scale = layer.w_scale.to(torch.float64)  # (N,) or (1,)
        bias_q = integer.bias_to_int32(layer.bias, layer.x_scale, w_scale, n, name)
        multiplier, right_shift = integer.requantize_params(layer.x_scale, w_scale, layer.y_scale, n, name)
        zy = layer.y_zero_point + UINT8_TO_INT8
        return cls(layer.w_q.clone(), bias_q, multiplier, right_shift, layer.x_scale,
                   layer.x_zero_point + UINT8_TO_INT8, layer.y_scale, zy,
                   zy if layer.relu else integer.QMIN, integer.QMAX, name=name)


def to_integer_only(model: nn.Module) -> nn.Module:
    """Replace every ``QuantLinear`` of ``model`` by its :class:`IntLinear`, in place; returns ``model``.

    A ``QuantLinear`` given as the model itself is returned converted (a new object). All
    layers are converted before any is swapped: a failure (asymmetric weights, an int32
    overflow certificate) leaves ``model`` untouched and names the layer.
    """
    if isinstance(model, QuantLinear):
        return IntLinear.from_quant_linear(model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_integer_only: expected an nn.Module, got {type(model).__name__}")
    new = {n: IntLinear.from_quant_linear(m) for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not new:
        raise ValueError(f"to_integer_only: {type(model).__name__} has no QuantLinear; quantize it with a static "
                         "config first (glassquant.quantize(model, 'x86', calibration))")
    for n, layer in new.items():
        parent_name, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return model


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules of (nested) ``nn.Sequential`` containers in execution order."""
    if type(module) is nn.Sequential:
        out: list[tuple[str, nn.Module]] = []
        for n, child in module.named_children():
            out += _leaves(child, f"{prefix}.{n}" if prefix else n)
        return out
    return [(prefix, module)]


@dataclass
class IntegerModel:
    """A chain of :class:`IntLinear` layers run from int8 input to int8 output, integers only.

    ``layers[i]`` feeds ``layers[i + 1]``: the output qparams of one must equal the input
    qparams of the next (same integers, same real values). ``clamps[i]`` is the clamp range
    actually applied: the layer's ``[qmin, qmax]``, with an ``nn.ReLU`` that follows it folded
    in (``max(y_q, zy)`` composed with the clamp). ``Identity``, ``Dropout`` (eval) and
    ``Flatten`` (to (M, features)) are no-ops on the integers.
    """

    layers: list[IntLinear]
    names: list[str]
    clamps: list[tuple[int, int]]

    @classmethod
    def from_module(cls, model: nn.Module) -> IntegerModel:
        """Read the chain from an ``IntLinear`` or an ``nn.Sequential`` of supported modules."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"IntegerModel: expected an nn.Module, got {type(model).__name__}")
        layers: list[IntLinear] = []
        names: list[str] = []
        clamps: list[tuple[int, int]] = []
        for n, m in _leaves(model):
            label = repr(n) if n else "<root>"
            if isinstance(m, IntLinear):
                if layers:
                    _check_link(layers[-1], m, names[-1], n)
                layers.append(m)
                names.append(n)
                clamps.append((m.qmin, m.qmax))
            elif isinstance(m, nn.ReLU):
                if not layers:
                    raise ValueError(f"IntegerModel: ReLU {label} comes before any IntLinear")
                zy, (lo, hi) = layers[-1].y_zero_point, clamps[-1]
                clamps[-1] = (max(lo, zy), max(hi, zy))  # relu(clamp(v, lo, hi)) = clamp(v, max(lo, zy), max(hi, zy))
            elif isinstance(m, (nn.Identity, nn.Dropout)):
                continue
            elif isinstance(m, nn.Flatten):
                if (m.start_dim, m.end_dim) != (1, -1):
                    raise ValueError(f"IntegerModel: Flatten {label} must flatten dims 1..-1")
            elif isinstance(m, QuantLinear):
                raise ValueError(f"IntegerModel: {label} is a QuantLinear; convert the model with to_integer_only")
            else:
                raise ValueError(f"IntegerModel: module {label} ({type(m).__name__}) has no integer-only form; "
                                 "supported: IntLinear, ReLU, Identity, Dropout, Flatten in nn.Sequential")
        if not layers:
            raise ValueError(f"IntegerModel: {type(model).__name__} has no IntLinear")
        return cls(layers, names, clamps)

    @property
    def input_size(self) -> int:
        return self.layers[0].in_features

    @property
    def output_size(self) -> int:
        return self.layers[-1].out_features

    def run(self, x_q: Tensor) -> list[Tensor]:
        """int8 (M, ...) -> every layer's int8 output [(M, N_0), (M, N_1), ...], integers only.

        Numerics: each layer is :func:`glassquant.dialects.integer.linear` with its clamp from
        ``clamps``; the input is flattened to (M, K). Bit-exact with the C runtime
        (``gq_model_run``).
        """
        check_integer(x_q, "IntegerModel: x_q", (torch.int8,))
        h = x_q.reshape(x_q.shape[0], -1) if x_q.dim() > 1 else x_q.reshape(1, -1)  # (M, K)
        outs = []
        for layer, name, (lo, hi) in zip(self.layers, self.names, self.clamps, strict=True):
            if h.shape[1] != layer.in_features:
                raise ValueError(f"IntegerModel: layer {name!r} expects {layer.in_features} inputs, got {h.shape[1]}")
            h = integer.linear(h, layer.x_zero_point, layer.w_q, layer.bias_q, layer.multiplier,
                               layer.right_shift, layer.y_zero_point, lo, hi, layer.name)  # (M, N)
            outs.append(h)
        return outs

    def __call__(self, x_q: Tensor) -> Tensor:
        """The final int8 output (M, N_last)."""
        return self.run(x_q)[-1]

    def quantize_input(self, x: Tensor) -> Tensor:
        """Float input (M, ...) to int8 with the first layer's input qparams (outside the integer path)."""
        return self.layers[0].quantize_input(x.reshape(x.shape[0], -1) if x.dim() > 1 else x)

    def dequantize_output(self, y_q: Tensor) -> Tensor:
        """The last layer's int8 output to float32 reals."""
        return self.layers[-1].dequantize_output(y_q)


def _check_link(prev: IntLinear, nxt: IntLinear, prev_name: str, name: str) -> None:
    """Layer ``nxt`` must read ``prev``'s integers as they are: same size, zero point and scale."""
    if prev.out_features != nxt.in_features:
        raise ValueError(f"IntegerModel: layer {name!r} takes {nxt.in_features} inputs but {prev_name!r} "
                         f"gives {prev.out_features}")
    if (prev.y_zero_point, prev.y_scale) != (nxt.x_zero_point, nxt.x_scale):
        raise ValueError(f"IntegerModel: layer {name!r} expects input qparams ({nxt.x_scale!r}, {nxt.x_zero_point}) "
                         f"but {prev_name!r} outputs ({prev.y_scale!r}, {prev.y_zero_point}); "
                         "a requantization step between them would be needed")
