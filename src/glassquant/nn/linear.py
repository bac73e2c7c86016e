"""Integer Linear layers: every step from explicit integers, in a named dialect.

``QuantLinear`` (static: input, weight and output qparams fixed) and
``DynamicQuantLinear`` (activation qparams chosen per call). Weights are plain int8
tensors, never torch's deprecated quantized dtypes. The maths is in
``glassquant.dialects``; these modules hold buffers and call it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import dialects
from ..affine import dequantize
from ..config import WEIGHT_PER_CHANNEL, WEIGHT_PER_TENSOR
from ..dialects import fbgemm, torchao
from ..dialects._base import INT32_MAX, accumulate, worst_case_accumulator
from ..errors import AccumulatorOverflowError, check_finite, check_integer
from ..kernels import fused, vnni
from ..kernels.cpu import PackedWeight, accumulate_int_mm
from ..qparams import choose_qparams, observe_range
from ..scheme import QScheme
from .base import QuantModule, quantize_static_input, register

#: engines whose layers may take the compiled AVX512-VNNI path (kernels/vnni.py); the plan
#: builders re-check the dialect, the device and the int32 bound
_VNNI_STATIC = frozenset({"x86", "fbgemm"})
_VNNI_DYNAMIC = frozenset({"x86", "fbgemm", "torchao"})


def quantize_weight(weight: Tensor, scheme: QScheme, engine: str, name: str = "weight"
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Min/max qparams for a float weight (N, K) and its int8 values, as torch.ao makes them.

    Numerics: qparams from :func:`glassquant.qparams.choose_qparams` (float32, eq. 2);
    integers by the engine dialect's ``quantize`` (per channel along axis 0, or per
    tensor). Returns ``(w_q int8 (N, K), scale float32 (N,) or (1,), zero_point int32)``.
    A dialect with its own weight rule (a ``quantize_weight(weight, scheme, name)`` function,
    e.g. ``dialects.torchao``) is used instead of the PyTorch-engine path.
    """
    own_rule = getattr(dialects.ENGINES.get(engine), "quantize_weight", None)
    if own_rule is not None:
        return own_rule(weight, scheme, name)
    if scheme.bits > 8 or not scheme.signed:
        raise ValueError(f"{name}: PyTorch engines take int8 weights; got {scheme}")
    w_min, w_max = observe_range(weight, scheme, name)
    scale, zp = choose_qparams(w_min, w_max, scheme)
    d = dialects.get(engine)
    if scheme.granularity == "per_channel":
        w_q = d.quantize(weight, scale, zp, torch.int8, axis=0)
    elif scheme.granularity == "per_tensor":
        w_q = d.quantize(weight, scale, zp, torch.int8)
        scale, zp = scale.reshape(1), zp.reshape(1)
    else:
        raise ValueError(f"{name}: PyTorch engines do not support per-group weights")
    w_q = w_q.clamp(scheme.qmin, scheme.qmax)  # narrow/reduced ranges
    return w_q, scale, zp


@register
class QuantLinear(QuantModule):
    """Static int8 Linear: ``y_q = requantize(sum_k (x_q - zx)(w_q - zw) + bias)`` (eqs. 3-5).

    Buffers: ``w_q`` int8 (N, K); ``w_scale`` float32 (N,) or (1,); ``w_zero_point`` int32;
    ``bias`` float32 (N,) or absent; input and output qparams as Python numbers.
    ``forward_int`` maps uint8 (M, K) to uint8 (M, N); ``forward`` takes and returns float
    (quantize with the engine's rule, integer layer, dequantize). ``relu=True`` is the
    fused Linear+ReLU (output clamped below at its zero point).
    """

    kind = "QuantLinear"
    meta_fields = ("x_scale", "x_zero_point", "y_scale", "y_zero_point", "relu", "engine", "name", "check_overflow")
    w_q: Tensor
    w_scale: Tensor
    w_zero_point: Tensor
    bias: Tensor | None

    def __init__(self, w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor, bias: Tensor | None,
                 x_scale: float, x_zero_point: int, y_scale: float, y_zero_point: int, *,
                 relu: bool = False, engine: str = "x86", name: str = "QuantLinear",
                 check_overflow: bool = True) -> None:
        super().__init__()
        check_integer(w_q, f"{name}: w_q", (torch.int8,))
        if w_q.dim() != 2:
            raise ValueError(f"{name}: w_q must be (N, K), got {tuple(w_q.shape)}")
        n = w_q.shape[0]
        w_scale = torch.as_tensor(w_scale, dtype=torch.float32).reshape(-1)
        w_zero_point = torch.as_tensor(w_zero_point, dtype=torch.int32).reshape(-1)
        if w_scale.numel() not in (1, n) or w_zero_point.numel() not in (1, n):
            raise ValueError(f"{name}: w_scale/w_zero_point must have 1 or {n} elements")
        if bias is not None:
            check_finite(bias, f"{name}: bias")
            if bias.shape != (n,):
                raise ValueError(f"{name}: bias shape {tuple(bias.shape)} != ({n},)")
        for label, s in (("x_scale", x_scale), ("y_scale", y_scale)):
            if not (float(s) > 0 and float(s) < float("inf")):
                raise ValueError(f"{name}: {label} must be a finite positive number, got {s}")
        for label, z in (("x_zero_point", x_zero_point), ("y_zero_point", y_zero_point)):
            if not 0 <= int(z) <= 255:
                raise ValueError(f"{name}: {label} {z} outside uint8 [0, 255]")
        dialects.get_static(engine)  # validates: a static integer path exists
        self.engine, self.relu, self.name, self.check_overflow = engine, relu, name, check_overflow
        self.x_scale, self.x_zero_point = float(x_scale), int(x_zero_point)
        self.y_scale, self.y_zero_point = float(y_scale), int(y_zero_point)
        self.register_buffer("w_q", w_q.contiguous())
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_zero_point", w_zero_point)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.accumulator_bound = int(worst_case_accumulator(w_q, w_zero_point, 0, 255, self.x_zero_point).max())
        if check_overflow and self.accumulator_bound > INT32_MAX:
            raise AccumulatorOverflowError(
                f"{name}: worst-case |accumulator| {self.accumulator_bound} > 2**31 - 1 for K = "
                f"{w_q.shape[1]}; some uint8 input would overflow int32. Use reduce_range or split K.")
        self._packed: PackedWeight | None = None
        self._vnni: vnni.PlanCache[vnni.Plan] = vnni.PlanCache()

    @property
    def in_features(self) -> int:
        return int(self.w_q.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.w_q.shape[0])

    def accumulate(self, x_q: Tensor, fast: bool = True) -> Tensor:
        """int32 accumulators (as int64) (M, N): ``_int_mm`` fast path or the exact reference."""
        if not fast:
            return accumulate(x_q, self.x_zero_point, self.w_q, self.w_zero_point, self.name)
        if self._packed is None:
            self._packed = PackedWeight.pack(self.w_q, self.w_zero_point)
        return accumulate_int_mm(x_q, self.x_zero_point, self._packed, self.name)

    def forward_int(self, x_q: Tensor, fast: bool = True) -> Tensor:
        """uint8 (..., K) -> uint8 (..., N), integers only until the dialect's requantize."""
        plan = self._vnni_plan() if fast and x_q.dtype == torch.uint8 and x_q.device.type == "cpu" else None
        if plan is not None and vnni.accepts(plan, x_q):  # one compiled call, the same integers (kernels/vnni.py)
            return vnni.run_uint8(plan, x_q)
        check_integer(x_q, f"{self.name}: x_q", (torch.uint8,))
        if x_q.shape[-1] != self.in_features:
            raise ValueError(f"{self.name}: input has {x_q.shape[-1]} features, layer expects {self.in_features}")
        lead = x_q.shape[:-1]
        acc = self.accumulate(x_q.reshape(-1, self.in_features), fast)  # (M, N)
        w_scale = self.w_scale if self.w_scale.numel() > 1 else float(self.w_scale)
        y_q = self.dialect.requantize(acc, self.x_scale, w_scale, self.bias, self.y_scale,
                                      self.y_zero_point, self.relu)
        return y_q.reshape(*lead, self.out_features)

    def quantize_input(self, x: Tensor) -> Tensor:
        """Float input to uint8 with this layer's input qparams and the engine's rule."""
        return quantize_static_input(self, x)

    def forward(self, x: Tensor, fast: bool = True) -> Tensor:
        """Float (..., K) -> float32 (..., N): quantize, ``forward_int``, dequantize (one compiled
        call on the fast path, the same numbers)."""
        plan = self._vnni_plan() if fast and x.dtype == torch.float32 and x.device.type == "cpu" else None
        if plan is not None and vnni.accepts(plan, x):
            y = vnni.run_float(plan, x)
            if y is not None:  # None: NaN/Inf in x, reported by name below
                return y
        y_q = self.forward_int(self.quantize_input(x), fast)
        return dequantize(y_q, torch.tensor(self.y_scale), torch.tensor(self.y_zero_point),
                          QScheme(bits=8, signed=False))

    def _vnni_plan(self) -> vnni.Plan | None:
        """The compiled AVX512-VNNI plan (fbgemm/x86 dialect), rebuilt when a buffer or setting
        changes; None where it does not apply (no VNNI, another dialect, an asymmetric weight, a
        weight whose worst-case accumulator could leave int32): the other paths then run."""
        if not vnni.available() or self.engine not in _VNNI_STATIC:
            return None
        b = self._buffers  # direct reads: Module.__getattr__ is slow and this runs on every call
        w_q, w_scale, w_zero_point = b["w_q"], b["w_scale"], b["w_zero_point"]
        assert w_q is not None and w_scale is not None and w_zero_point is not None
        return self._vnni.get(w_q, w_scale, w_zero_point, b["bias"],
                              (self.engine, self.relu, self.x_scale, self.x_zero_point, self.y_scale,
                               self.y_zero_point), self._build_vnni_plan)

    def _build_vnni_plan(self) -> vnni.Plan | None:
        if self.dialect is not fbgemm or self.w_q.device.type != "cpu":
            return None
        bound = int(worst_case_accumulator(self.w_q, self.w_zero_point, 0, 255, self.x_zero_point).max())
        if bound > INT32_MAX:  # only the checked paths may see an overflow
            return None
        return vnni.plan_static(self.w_q, self.w_scale, self.w_zero_point, self.bias, self.x_scale,
                                self.x_zero_point, self.y_scale, self.y_zero_point, self.relu)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, engine={self.engine}, "
                f"relu={self.relu}, x=({self.x_scale:.6g}, {self.x_zero_point}), "
                f"y=({self.y_scale:.6g}, {self.y_zero_point})")

    @classmethod
    def from_float(cls, linear: nn.Linear, x_scale: float, x_zero_point: int, y_scale: float,
                   y_zero_point: int, *, weight_scheme: QScheme = WEIGHT_PER_CHANNEL,
                   relu: bool = False, engine: str = "x86", name: str = "QuantLinear") -> QuantLinear:
        """Quantize a float ``nn.Linear``'s weight (min/max, as torch.ao) into a QuantLinear."""
        w_q, w_scale, w_zp = quantize_weight(linear.weight.detach(), weight_scheme, engine, f"{name}.weight")
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(w_q, w_scale, w_zp, bias, x_scale, x_zero_point, y_scale, y_zero_point,
                   relu=relu, engine=engine, name=name)

    @classmethod
    def from_torch_ao(cls, module: Any, x_scale: float, x_zero_point: int, engine: str = "x86"
                      ) -> QuantLinear:
        """From a ``torch.ao.nn.quantized.Linear`` (or ``intrinsic.quantized.LinearReLU``)."""
        from ..interop import torch_ao

        return torch_ao.static_linear_from_ao(cls, module, x_scale, x_zero_point, engine)

    def to_torch_ao(self) -> Any:
        """An equivalent ``torch.ao.nn.quantized.Linear`` (or ``LinearReLU``)."""
        from ..interop import torch_ao

        return torch_ao.static_linear_to_ao(self)


@register
class DynamicQuantLinear(QuantModule):
    """Dynamic int8 Linear: activations quantized per call, float32 in and out.

    Buffers: ``w_q`` int8 (N, K), ``w_scale`` float32 (N,) or (1,), ``w_zero_point`` int32,
    ``bias`` float32 (N,) or absent. Per call: the engine's ``choose_qparams`` on the input
    range (uint8; [0, 127] with ``reduce_range``), quantize, exact accumulators, the engine's
    float output rule.
    """

    kind = "DynamicQuantLinear"
    meta_fields = ("engine", "reduce_range", "relu", "name")
    w_q: Tensor
    w_scale: Tensor
    w_zero_point: Tensor
    bias: Tensor | None

    def __init__(self, w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor, bias: Tensor | None, *,
                 engine: str = "x86", reduce_range: bool = True, relu: bool = False,
                 name: str = "DynamicQuantLinear") -> None:
        super().__init__()
        check_integer(w_q, f"{name}: w_q", (torch.int8,))
        n = w_q.shape[0]
        if bias is not None:
            check_finite(bias, f"{name}: bias")
            if bias.shape != (n,):
                raise ValueError(f"{name}: bias shape {tuple(bias.shape)} != ({n},)")
        dialects.get(engine)  # validates the engine name
        self.engine, self.reduce_range, self.relu, self.name = engine, reduce_range, relu, name
        self.register_buffer("w_q", w_q.contiguous())
        self.register_buffer("w_scale", torch.as_tensor(w_scale, dtype=torch.float32).reshape(-1))
        self.register_buffer("w_zero_point", torch.as_tensor(w_zero_point, dtype=torch.int32).reshape(-1))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        bound = int(worst_case_accumulator(w_q, self.w_zero_point, 0, 255, 0).max())
        if bound > INT32_MAX:
            raise AccumulatorOverflowError(f"{name}: worst-case |accumulator| {bound} > 2**31 - 1")
        self._packed: PackedWeight | None = None
        self._vnni: vnni.PlanCache[vnni.Plan] = vnni.PlanCache()

    @property
    def in_features(self) -> int:
        return int(self.w_q.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.w_q.shape[0])

    def forward(self, x: Tensor, fast: bool = True) -> Tensor:
        plan = self._vnni_plan() if fast and x.dtype == torch.float32 and x.device.type == "cpu" else None
        if plan is not None and vnni.accepts(plan, x):  # one compiled call, the dialect's numbers (kernels/vnni.py)
            y = vnni.run_float(plan, x)
            if y is not None:  # None: NaN/Inf in x, reported by name below
                return y
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.name}: input has {x.shape[-1]} features, layer expects {self.in_features}")
        if x.numel() == 0:
            raise ValueError(f"{self.name}: empty input")
        d = self.dialect
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if fast and plan is None and self.engine == "torchao" and x2.dtype == torch.float32 \
                and x2.device.type == "cpu" and fused.available():
            y = self._forward_fused(x2)
            if y is not None:
                return y.reshape(*lead, self.out_features)
        try:
            x_q, x_scale, x_zp = d.quantize_activation(x2, self.reduce_range)  # checks NaN/Inf
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from e
        if fast:
            if self._packed is None:
                self._packed = PackedWeight.pack(self.w_q, self.w_zero_point)
            acc = accumulate_int_mm(x_q, x_zp, self._packed, self.name)
        else:
            acc = accumulate(x_q, x_zp, self.w_q, self.w_zero_point, self.name)
        w_scale = self.w_scale if self.w_scale.numel() > 1 else float(self.w_scale)
        y = d.dynamic_output(acc, x_scale, w_scale, self.bias, self.relu)
        return y.reshape(*lead, self.out_features)

    def _vnni_plan(self) -> vnni.Plan | None:
        """The compiled AVX512-VNNI plan (torchao per-token or fbgemm/x86 per-tensor dialect), rebuilt
        when a buffer or setting changes; None where it does not apply (no VNNI, another dialect, an
        asymmetric weight, a weight whose worst-case accumulator could leave int32)."""
        if not vnni.available() or self.engine not in _VNNI_DYNAMIC:
            return None
        b = self._buffers  # direct reads: Module.__getattr__ is slow and this runs on every call
        w_q, w_scale, w_zero_point = b["w_q"], b["w_scale"], b["w_zero_point"]
        assert w_q is not None and w_scale is not None and w_zero_point is not None
        return self._vnni.get(w_q, w_scale, w_zero_point, b["bias"], (self.engine, self.relu, self.reduce_range),
                              self._build_vnni_plan)

    def _build_vnni_plan(self) -> vnni.Plan | None:
        if self.dialect not in (torchao, fbgemm) or self.w_q.device.type != "cpu":
            return None
        if int(worst_case_accumulator(self.w_q, self.w_zero_point, 0, 255, 0).max()) > INT32_MAX:
            return None
        if self.dialect is torchao:
            return vnni.plan_token(self.w_q, self.w_scale, self.w_zero_point, self.bias, self.relu)
        return vnni.plan_dynamic(self.w_q, self.w_scale, self.w_zero_point, self.bias, self.relu, self.reduce_range)

    def _forward_fused(self, x2: Tensor) -> Tensor | None:
        """The torchao per-token path in two compiled passes around ``_int_mm`` (same floats as
        the dialect's; None when the input holds NaN/Inf, so the caller's path names them)."""
        if self._packed is None:
            self._packed = PackedWeight.pack(self.w_q, self.w_zero_point)
        if not self._packed.symmetric:  # pragma: no cover - torchao weights are symmetric
            return None
        x_c = x2 if x2.stride(1) == 1 else x2.contiguous()
        qx = fused.quantize_rows(x_c, torchao.QMIN, torchao.QMAX, torchao.SCALE_EPS,
                                 (torchao.QMAX - torchao.QMIN) / 2)
        if qx is None:
            return None
        acc = torch._int_mm(qx[0], self._packed.w_t)  # (M, K) @ (K, N) -> (M, N) int32, exact (K < 2**17)
        return fused.rescale_rows(acc, qx[1], self.w_scale, self.bias, self.relu, in_place=True)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, engine={self.engine}, "
                f"reduce_range={self.reduce_range}, per_channel={self.w_scale.numel() > 1}")

    @classmethod
    def from_float(cls, linear: nn.Linear, *, weight_scheme: QScheme = WEIGHT_PER_TENSOR,
                   engine: str = "x86", reduce_range: bool = True, relu: bool = False,
                   name: str = "DynamicQuantLinear") -> DynamicQuantLinear:
        """Quantize a float ``nn.Linear``'s weight (min/max, as torch.ao's default dynamic qconfig)."""
        w_q, w_scale, w_zp = quantize_weight(linear.weight.detach(), weight_scheme, engine, f"{name}.weight")
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(w_q, w_scale, w_zp, bias, engine=engine, reduce_range=reduce_range, relu=relu, name=name)

    @classmethod
    def from_torch_ao(cls, module: Any, engine: str = "x86") -> DynamicQuantLinear:
        """From a ``torch.ao.nn.quantized.dynamic.Linear``."""
        from ..interop import torch_ao

        return torch_ao.dynamic_linear_from_ao(cls, module, engine)

    def to_torch_ao(self) -> Any:
        """An equivalent ``torch.ao.nn.quantized.dynamic.Linear``."""
        from ..interop import torch_ao

        return torch_ao.dynamic_linear_to_ao(self)
