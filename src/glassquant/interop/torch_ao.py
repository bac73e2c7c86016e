"""To and from torch.ao's (deprecated) quantized modules — a test reference and interop target.

Nothing in glassquant's core imports this module; layers call it lazily from
``from_torch_ao`` / ``to_torch_ao``. On a torch without ``torch.ao.quantization`` these
raise ``RuntimeError`` with the reason.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor


def available() -> tuple[bool, str]:
    """Whether this torch still ships torch.ao quantized Linear and its engines, and why not."""
    try:
        import torch.ao.nn.quantized
        import torch.ao.nn.quantized.dynamic
        import torch.ao.quantization
    except ImportError as e:  # pragma: no cover - depends on the torch release
        return False, f"torch {torch.__version__} has no torch.ao quantization ({e})"
    if not hasattr(torch, "quint8") or not hasattr(torch.ops.quantized, "linear"):
        return False, f"torch {torch.__version__} has no quantized dtypes or quantized::linear"  # pragma: no cover
    return True, ""


def _require() -> None:
    ok, why = available()
    if not ok:
        raise RuntimeError(why)


@contextlib.contextmanager
def engine(name: str) -> Iterator[None]:
    """Temporarily select a PyTorch quantized engine (``x86``, ``fbgemm``, ``qnnpack``, ``onednn``)."""
    if name not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"quantized engine {name!r} is not supported by this torch build")
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*deprecated.*")
            yield
    finally:
        torch.backends.quantized.engine = old


def qtensor_parts(qt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(int values, scale float32 (C,) or (1,), zero_point int32)`` of a torch quantized tensor."""
    values = qt.int_repr()
    if qt.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        if qt.q_per_channel_axis() != 0:
            raise ValueError("only per-channel weights along axis 0 are supported")
        return (values, qt.q_per_channel_scales().to(torch.float32),
                qt.q_per_channel_zero_points().to(torch.int32))
    return values, torch.tensor([qt.q_scale()], dtype=torch.float32), torch.tensor([qt.q_zero_point()],
                                                                                   dtype=torch.int32)


def make_qweight(w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor) -> Tensor:
    """A torch ``qint8`` tensor holding exactly these integers and qparams."""
    if w_scale.numel() > 1:
        return torch._make_per_channel_quantized_tensor(w_q, w_scale.to(torch.float64),
                                                        w_zero_point.to(torch.int64), 0)
    return torch._make_per_tensor_quantized_tensor(w_q, float(w_scale), int(w_zero_point))


def static_linear_from_ao(cls: Any, module: Any, x_scale: float, x_zero_point: int, engine: str) -> Any:
    """A ``QuantLinear`` holding the integers of a torch.ao quantized (fused ReLU) Linear."""
    _require()
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    if not isinstance(module, nnq.Linear):
        raise TypeError(f"expected torch.ao.nn.quantized.Linear, got {type(module).__name__}")
    with engine_ctx(engine):
        w_q, w_scale, w_zp = qtensor_parts(module.weight())
        bias = module.bias()
    return cls(w_q, w_scale, w_zp, bias, x_scale, x_zero_point, float(module.scale), int(module.zero_point),
               relu=isinstance(module, nniq.LinearReLU), engine=engine)


def static_linear_to_ao(layer: Any) -> Any:
    """A torch.ao quantized ``Linear`` (or ``LinearReLU``) with the layer's integers and qparams."""
    _require()
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    kind = nniq.LinearReLU if layer.relu else nnq.Linear
    with engine_ctx(layer.engine):
        m = kind(layer.in_features, layer.out_features, layer.bias is not None)
        m.set_weight_bias(make_qweight(layer.w_q, layer.w_scale, layer.w_zero_point), layer.bias)
        m.scale, m.zero_point = layer.y_scale, layer.y_zero_point
    return m


def dynamic_linear_from_ao(cls: Any, module: Any, engine: str) -> Any:
    """A ``DynamicQuantLinear`` holding the integers of a torch.ao dynamic Linear."""
    _require()
    import torch.ao.nn.quantized.dynamic as nnqd

    if not isinstance(module, nnqd.Linear):
        raise TypeError(f"expected torch.ao.nn.quantized.dynamic.Linear, got {type(module).__name__}")
    with engine_ctx(engine):
        w_q, w_scale, w_zp = qtensor_parts(module.weight())
        bias = module.bias()
    return cls(w_q, w_scale, w_zp, bias, engine=engine, reduce_range=True)


def dynamic_linear_to_ao(layer: Any) -> Any:
    """A torch.ao dynamic ``Linear`` with the layer's integer weights."""
    _require()
    import torch.ao.nn.quantized.dynamic as nnqd

    if layer.relu:
        raise ValueError(f"{layer.name}: torch.ao has no dynamic Linear with fused ReLU module")
    with engine_ctx(layer.engine):
        m = nnqd.Linear(layer.in_features, layer.out_features, bias_=layer.bias is not None)
        m.set_weight_bias(make_qweight(layer.w_q, layer.w_scale, layer.w_zero_point), layer.bias)
    return m


engine_ctx = engine


def minmax_qconfig(engine_name: str, per_channel: bool, reduce_range: bool) -> Any:
    """torch.ao QConfig with min/max observers matching a glassquant ``StaticConfig``."""
    _require()
    import torch.ao.quantization as tq

    weight = (tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
              if per_channel else
              tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))
    act = tq.MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=reduce_range)
    return tq.QConfig(activation=act, weight=weight)


def eager_ptq(model: torch.nn.Sequential, calibration: list[Tensor], engine_name: str, *,
              per_channel: bool = True, reduce_range: bool = True, default_qconfig: bool = False) -> torch.nn.Module:
    """torch.ao eager post-training quantization of a float ``nn.Sequential`` (a copy):
    QuantStub / DeQuantStub around it, Conv+BN(+ReLU) and Linear/Conv+ReLU fused, then either
    min/max observers or torch.ao's default qconfig for the engine (HistogramObserver)."""
    _require()
    import copy

    import torch.ao.quantization as tq

    from ..convert import sequential_patterns

    with engine_ctx(engine_name):
        body = copy.deepcopy(model).eval()
        m = torch.nn.Sequential(tq.QuantStub(), body, tq.DeQuantStub()).eval()
        groups = [[f"1.{n}" for n in g] for g in sequential_patterns(body)]
        if groups:
            tq.fuse_modules(m, groups, inplace=True)
        m.qconfig = (tq.get_default_qconfig(engine_name) if default_qconfig
                     else minmax_qconfig(engine_name, per_channel, reduce_range))
        tq.prepare(m, inplace=True)
        with torch.no_grad():
            for b in calibration:
                m(b)
        tq.convert(m, inplace=True)
    return m


def integer_outputs(model: torch.nn.Module, x: Tensor, engine_name: str) -> dict[str, Tensor]:
    """Each quantized Linear's output integers, keyed by the float model's layer name."""
    outs: dict[str, Tensor] = {}
    handles = []
    for n, mod in model.named_modules():
        if hasattr(mod, "_packed_params") and n.startswith("1."):
            handles.append(mod.register_forward_hook(
                lambda m, a, y, n=n[2:]: outs.__setitem__(n, y.int_repr())))
    try:
        with engine_ctx(engine_name), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outs
