"""ONNX Runtime bridge: glassquant layers and chain models as ONNX graphs, run on ORT's CPU provider.

Graphs are built with ``onnx.helper`` (no ``torch.onnx``), opset 21 plus ``com.microsoft``, in
two forms:

- ``"qoperator"``: integer operators. A static ``QuantLinear`` with a bias becomes ``QGemm``
  (com.microsoft; int32 bias ``dialects.onnx.quantize_bias``), without a bias
  ``QLinearMatMul``; ``QuantConv2d`` becomes ``QLinearConv``; ``DynamicQuantLinear`` becomes
  ``quantize_dynamic``'s graph (DynamicQuantizeLinear, MatMulInteger, Cast, Mul, Add).
- ``"qdq"``: float operators between DequantizeLinear / QuantizeLinear (``DQ -> Gemm/Conv -> Q``).
  ORT fuses each group into the QOperator kernel at ``ORT_ENABLE_EXTENDED`` and above (the
  default is ``ORT_ENABLE_ALL``), so both forms compute the same integers. At ``basic`` or
  ``disable`` the QDQ graph runs in float32 (sgemm) and is *not* the onnx dialect.

A fused ReLU with output zero point 0 is a no-op on uint8 (QDQ: a float Relu that ORT folds
into the Q); with another zero point it is an integer ``Clip(y_q, zy, 255)``. The integers
equal ``glassquant.dialects.onnx`` (not the layer's own engine: ORT rounds differently).
Proven in tests/equivalence/test_onnxruntime.py and tests/unit/test_onnx_export.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..dialects import onnx as dialect
from ..floatops import f32
from ..nn.conv import QuantConv2d
from ..nn.linear import DynamicQuantLinear, QuantLinear

FORMS = ("qoperator", "qdq")
OPSET, IR_VERSION = 21, 10
LEVELS = ("disable", "basic", "extended", "all")
LAYER_PREFIX = "layer:"  #: graph outputs holding each static layer's uint8 output (``layer_outputs=True``)


def available() -> tuple[bool, str]:
    """Whether ``onnx`` and ``onnxruntime`` import, and why not."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:  # pragma: no cover - both are dev dependencies
        return False, f"onnx/onnxruntime not installed: {e}"
    return True, ""


def session(model: Any, level: str = "all", threads: int = 1, optimized_path: str | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU provider for a ModelProto or a path.

    ``level``: graph optimization, one of ``LEVELS`` (ORT's default is ``"all"``); ``threads``:
    intra-op threads; ``optimized_path``: where ORT writes the graph it actually runs.
    """
    import onnxruntime as ort

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path is not None:
        opts.optimized_model_filepath = optimized_path
    data = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class _T:
    """A tensor of the graph being built: float (``scale is None``) or uint8 with its qparams."""

    name: str
    shape: tuple[int | str, ...]
    scale: float | None = None
    zero_point: int = 0


class _Graph:
    """Nodes and initializers under construction, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._count = 0

    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem: str, value: Any, dtype: Any) -> str:
        from onnx import numpy_helper

        name = self.fresh(stem)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype=dtype)), name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str, attrs: dict[str, Any] | None = None,
           domain: str = "", n_out: int = 1) -> list[str]:
        """Append one node; returns its ``n_out`` fresh output names."""
        from onnx import helper

        outs = [self.fresh(stem) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, domain=domain or None, **(attrs or {})))
        return outs


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _scale(g: _Graph, s: Tensor | float) -> str:
    """A float32 scale initializer: scalar for one value, else 1-D."""
    s = torch.as_tensor(s, dtype=torch.float32).reshape(-1)
    return g.const("scale", _np(s[0]) if s.numel() == 1 else _np(s), np.float32)


def _zp(g: _Graph, z: Tensor | int, dtype: Any) -> str:
    z = torch.as_tensor(z).reshape(-1)
    return g.const("zero_point", _np(z[0]) if z.numel() == 1 else _np(z), dtype)


def _to_uint8(g: _Graph, t: _T, scale: float, zero_point: int) -> _T:
    """Bring ``t`` to uint8 with these qparams: QuantizeLinear, nothing, or DQ then Q."""
    if t.scale is not None and float(f32(t.scale)) == float(f32(scale)) and t.zero_point == zero_point:
        return t
    x = _to_float(g, t)
    (q,) = g.op("QuantizeLinear", [x.name, _scale(g, scale), _zp(g, zero_point, np.uint8)], "q")
    return _T(q, t.shape, scale, zero_point)


def _to_float(g: _Graph, t: _T) -> _T:
    if t.scale is None:
        return t
    (x,) = g.op("DequantizeLinear", [t.name, _scale(g, t.scale), _zp(g, t.zero_point, np.uint8)], "dq")
    return _T(x, t.shape)


def _output(g: _Graph, y_float: str, layer: Any, shape: tuple[int | str, ...], form: str) -> _T:
    """QDQ tail ``[Relu] -> Q`` or the uint8 output of a QOperator node, then the ReLU clamp."""
    zy = layer.y_zero_point
    name = y_float
    if form == "qdq":
        if layer.relu and zy == 0:
            (name,) = g.op("Relu", [name], "relu")
        (name,) = g.op("QuantizeLinear", [name, _scale(g, layer.y_scale), _zp(g, zy, np.uint8)], "y_q")
    if layer.relu and zy > 0:
        (name,) = g.op("Clip", [name, g.const("relu_min", zy, np.uint8)], "relu_clip")
    return _T(name, shape, layer.y_scale, zy)


def _weight_dq(g: _Graph, layer: Any, w: Tensor, axis: int) -> str:
    attrs = {"axis": axis} if layer.w_scale.numel() > 1 else {}
    (wf,) = g.op("DequantizeLinear", [g.const("w_q", _np(w), np.int8), _scale(g, layer.w_scale),
                                      _zp(g, layer.w_zero_point, np.int8)], "w", attrs)
    return wf


def _bias_q(g: _Graph, layer: Any, form: str) -> str:
    """The int32 bias initializer (QDQ: behind a DequantizeLinear with scale ``f32(sx*sw)``)."""
    bias_q = dialect.quantize_bias(layer.bias, layer.x_scale, layer.w_scale, f"{layer.name}: bias")
    name = g.const("bias_q", _np(bias_q), np.int32)
    if form == "qoperator":
        return name
    bias_scale = f32(layer.x_scale) * layer.w_scale.to(torch.float32)
    attrs = {"axis": 0} if bias_scale.numel() > 1 else {}
    (bf,) = g.op("DequantizeLinear", [name, _scale(g, bias_scale)], "b", attrs)
    return bf


def _linear(g: _Graph, layer: QuantLinear, t: _T, form: str) -> _T:
    if len(t.shape) != 2 or (isinstance(t.shape[1], int) and t.shape[1] != layer.in_features):
        raise ValueError(f"{layer.name}: expects input (N, {layer.in_features}), gets shape {t.shape}")
    x = _to_uint8(g, t, layer.x_scale, layer.x_zero_point)
    shape = (t.shape[0], layer.out_features)
    sx, zx = _scale(g, layer.x_scale), _zp(g, layer.x_zero_point, np.uint8)
    if form == "qoperator":
        w_args = [_scale(g, layer.w_scale), _zp(g, layer.w_zero_point, np.int8)]
        y_args = [_scale(g, layer.y_scale), _zp(g, layer.y_zero_point, np.uint8)]
        if layer.bias is None:  # (M, K) @ (K, N)
            w_t = g.const("w_q_t", _np(layer.w_q.T), np.int8)
            (y,) = g.op("QLinearMatMul", [x.name, sx, zx, w_t, *w_args, *y_args], "y_q")
        else:
            w = g.const("w_q", _np(layer.w_q), np.int8)
            (y,) = g.op("QGemm", [x.name, sx, zx, w, *w_args, _bias_q(g, layer, form), *y_args], "y_q",
                        {"transB": 1}, domain="com.microsoft")
        return _output(g, y, layer, shape, form)
    (xf,) = g.op("DequantizeLinear", [x.name, sx, zx], "x")
    inputs = [xf, _weight_dq(g, layer, layer.w_q, 0)] + ([] if layer.bias is None else [_bias_q(g, layer, form)])
    (yf,) = g.op("Gemm", inputs, "y", {"transB": 1})  # (M, K) @ (N, K)^T -> (M, N)
    return _output(g, yf, layer, shape, form)


def _dynamic(g: _Graph, layer: DynamicQuantLinear, t: _T, form: str) -> _T:
    if form != "qoperator":
        raise ValueError(f"{layer.name}: ONNX has no QDQ form of a dynamic Linear; use form='qoperator'")
    if len(t.shape) != 2 or (isinstance(t.shape[1], int) and t.shape[1] != layer.in_features):
        raise ValueError(f"{layer.name}: expects input (N, {layer.in_features}), gets shape {t.shape}")
    x = _to_float(g, t)
    x_q, sx, zx = g.op("DynamicQuantizeLinear", [x.name], "x_q", n_out=3)  # ORT: always [0, 255]
    (s,) = g.op("Mul", [sx, _scale(g, layer.w_scale)], "sx_sw")
    w_t = g.const("w_q_t", _np(layer.w_q.T), np.int8)  # (K, N)
    (acc,) = g.op("MatMulInteger", [x_q, w_t, zx, _zp(g, layer.w_zero_point, np.int8)], "acc")
    (accf,) = g.op("Cast", [acc], "acc_f", {"to": 1})  # int32 -> float32
    (y,) = g.op("Mul", [accf, s], "y")
    if layer.bias is not None:
        (y,) = g.op("Add", [y, g.const("bias", _np(layer.bias), np.float32)], "y")
    if layer.relu:
        (y,) = g.op("Relu", [y], "y")
    return _T(y, (t.shape[0], layer.out_features))


def _conv(g: _Graph, layer: QuantConv2d, t: _T, form: str) -> _T:
    if len(t.shape) != 4 or (isinstance(t.shape[1], int) and t.shape[1] != layer.in_channels):
        raise ValueError(f"{layer.name}: expects input (N, {layer.in_channels}, H, W), gets shape {t.shape}")
    x = _to_uint8(g, t, layer.x_scale, layer.x_zero_point)
    (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
    attrs: dict[str, Any] = {"kernel_shape": [kh, kw], "strides": list(layer.stride), "pads": [ph, pw, ph, pw],
             "dilations": list(layer.dilation), "group": layer.groups}
    geometry = zip(t.shape[2:], layer.padding, layer.dilation, layer.kernel_size, layer.stride, strict=True)
    spatial = [d if not isinstance(d, int) else (d + 2 * p - dl * (k - 1) - 1) // s + 1 for d, p, dl, k, s in geometry]
    if any(isinstance(d, int) and d < 1 for d in spatial):
        raise ValueError(f"{layer.name}: input {t.shape} is smaller than the (dilated) kernel")
    shape = (t.shape[0], layer.out_channels, *spatial)
    sx, zx = _scale(g, layer.x_scale), _zp(g, layer.x_zero_point, np.uint8)
    bias = [] if layer.bias is None else [_bias_q(g, layer, form)]
    if form == "qoperator":
        w = g.const("w_q", _np(layer.w_q), np.int8)
        inputs = [x.name, sx, zx, w, _scale(g, layer.w_scale), _zp(g, layer.w_zero_point, np.int8),
                  _scale(g, layer.y_scale), _zp(g, layer.y_zero_point, np.uint8), *bias]
        (y,) = g.op("QLinearConv", inputs, "y_q", attrs)
        return _output(g, y, layer, shape, form)
    (xf,) = g.op("DequantizeLinear", [x.name, sx, zx], "x")
    (yf,) = g.op("Conv", [xf, _weight_dq(g, layer, layer.w_q, 0), *bias], "y", attrs)
    return _output(g, yf, layer, shape, form)


def _flatten(g: _Graph, module: nn.Flatten, t: _T, name: str) -> _T:
    if module.start_dim != 1 or module.end_dim != -1:
        raise ValueError(f"{name}: only Flatten(start_dim=1, end_dim=-1) is supported")
    rest = [d for d in t.shape[1:] if isinstance(d, int)]
    size: int | str = math.prod(rest) if len(rest) == len(t.shape) - 1 else "F"
    (y,) = g.op("Flatten", [t.name], "flat", {"axis": 1})
    return replace(t, name=y, shape=(t.shape[0], size))


def _relu(g: _Graph, t: _T) -> _T:
    if t.scale is None:
        (y,) = g.op("Relu", [t.name], "relu")
        return replace(t, name=y)
    if t.zero_point == 0:  # max(q, 0) on uint8: nothing to do
        return t
    (y,) = g.op("Clip", [t.name, g.const("relu_min", t.zero_point, np.uint8)], "relu_clip")
    return replace(t, name=y)


_SUPPORTED = (QuantLinear, DynamicQuantLinear, QuantConv2d, nn.ReLU, nn.Flatten, nn.Identity)


def chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` steps of a chain model (nested ``nn.Sequential`` flattened), checked:
    ValueError naming the first layer that cannot be exported."""
    children = (model.named_children() if isinstance(model, nn.Sequential)
                else [(str(getattr(model, "name", type(model).__name__)), model)])
    steps: list[tuple[str, nn.Module]] = []
    for name, m in children:
        if isinstance(m, nn.Sequential):
            steps += [(f"{name}.{n}", s) for n, s in chain(m)]
        elif isinstance(m, _SUPPORTED):
            steps.append((name, m))
        else:
            raise ValueError(f"layer {name!r} ({type(m).__name__}) cannot be exported to ONNX: supported are "
                             "QuantLinear, DynamicQuantLinear, QuantConv2d, nn.ReLU, nn.Flatten, nn.Identity")
    if not steps:
        raise ValueError("empty model: nothing to export")
    return steps


def _graph(model: nn.Module, form: str, input_shape: tuple[int | str, ...], layer_outputs: bool,
           input_uint8: bool = False) -> Any:
    """Build the ModelProto of a chain (float in, float out unless ``input_uint8`` for one layer)."""
    from onnx import TensorProto, helper

    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    g = _Graph()
    steps = chain(model)
    first: Any = steps[0][1]
    t = _T("x_q", input_shape, first.x_scale, first.x_zero_point) if input_uint8 else _T("x", input_shape)
    extra = []
    for name, m in steps:
        try:
            if isinstance(m, QuantLinear):
                t = _linear(g, m, t, form)
            elif isinstance(m, DynamicQuantLinear):
                t = _dynamic(g, m, t, form)
            elif isinstance(m, QuantConv2d):
                t = _conv(g, m, t, form)
            elif isinstance(m, nn.Flatten):
                t = _flatten(g, m, t, name)
            elif isinstance(m, nn.ReLU):
                t = _relu(g, t)
        except ValueError as e:
            raise ValueError(f"layer {name!r} ({type(m).__name__}): {e}") from e
        if layer_outputs and isinstance(m, (QuantLinear, QuantConv2d)):
            g.nodes.append(helper.make_node("Identity", [t.name], [LAYER_PREFIX + name]))
            extra.append(helper.make_tensor_value_info(LAYER_PREFIX + name, TensorProto.UINT8, list(t.shape)))
    last = t if input_uint8 else _to_float(g, t)
    y_type = TensorProto.UINT8 if last.scale is not None else TensorProto.FLOAT
    y_name = "y_q" if y_type == TensorProto.UINT8 else "y"
    g.nodes.append(helper.make_node("Identity", [last.name], [y_name]))
    x_type = TensorProto.UINT8 if input_uint8 else TensorProto.FLOAT
    graph = helper.make_graph(g.nodes, "glassquant", [helper.make_tensor_value_info(
        "x_q" if input_uint8 else "x", x_type, list(input_shape))],
        [helper.make_tensor_value_info(y_name, y_type, list(last.shape)), *extra], initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="glassquant")
    proto.ir_version = IR_VERSION
    return proto


def layer_to_onnx(layer: nn.Module, form: str = "qoperator", input_shape: tuple[int | str, ...] | None = None
                  ) -> Any:
    """One glassquant layer as an ONNX model.

    ``QuantLinear`` / ``QuantConv2d``: input ``x_q`` uint8 (N, K) or (N, C, H, W) with the layer's
    input qparams, output ``y_q`` uint8. ``DynamicQuantLinear`` (``form="qoperator"`` only): input
    ``x`` float32 (N, K), output ``y`` float32. ``input_shape`` defaults to a symbolic batch (and
    symbolic H, W for a conv).
    """
    if isinstance(layer, QuantLinear):
        shape = input_shape or ("N", layer.in_features)
    elif isinstance(layer, QuantConv2d):
        shape = input_shape or ("N", layer.in_channels, "H", "W")
    elif isinstance(layer, DynamicQuantLinear):
        return _graph(layer, form, input_shape or ("N", layer.in_features), False)
    else:
        raise ValueError(f"layer {getattr(layer, 'name', type(layer).__name__)!r} ({type(layer).__name__}): "
                         "layer_to_onnx takes QuantLinear, QuantConv2d or DynamicQuantLinear")
    return _graph(layer, form, shape, False, input_uint8=True)


def run_layer(layer: nn.Module, x: Tensor, form: str = "qoperator", level: str = "all") -> Tensor:
    """Run one layer in ORT: uint8 ``x_q`` -> uint8 (static layers) or float32 -> float32 (dynamic)."""
    proto = layer_to_onnx(layer, form, input_shape=tuple(x.shape))
    sess = session(proto, level)
    name = sess.get_inputs()[0].name
    want = torch.uint8 if name == "x_q" else torch.float32
    if x.dtype != want:
        raise ValueError(f"{getattr(layer, 'name', 'layer')}: input must be {want}, got {x.dtype}")
    return torch.from_numpy(sess.run(None, {name: np.ascontiguousarray(_np(x))})[0])


def export_onnx(model: nn.Module, path: str | Path | None = None, form: str = "qoperator",
                input_shape: tuple[int | str, ...] | None = None, layer_outputs: bool = False) -> Any:
    """A glassquant chain model (``nn.Sequential`` of QuantLinear / DynamicQuantLinear / QuantConv2d /
    nn.ReLU / nn.Flatten / nn.Identity) as ONNX: float32 input ``x``, QuantizeLinear with the first
    layer's input qparams, integer layers, DequantizeLinear at the end, float32 output ``y``.

    ``input_shape``: one sample's shape, e.g. ``(64,)`` or ``(1, 8, 8)`` (default: the first layer's
    features / channels with symbolic H, W); the batch is symbolic. Shapes are checked layer by
    layer (ValueError naming the layer). ``layer_outputs``: also output every static layer's uint8
    result as ``"layer:<name>"``. Writes ``path`` when given; returns the ModelProto.
    """
    ok, why = available()
    if not ok:
        raise RuntimeError(why)
    first = chain(model)[0][1]
    if input_shape is None:
        if isinstance(first, QuantConv2d):
            input_shape = (first.in_channels, "H", "W")
        elif isinstance(first, (QuantLinear, DynamicQuantLinear)):
            input_shape = (first.in_features,)
        else:
            raise ValueError(f"{type(first).__name__} first: give input_shape")
    proto = _graph(model, form, ("N", *input_shape), layer_outputs)
    if path is not None:
        import onnx

        onnx.save(proto, str(path))
    return proto


def run_onnx_outputs(model: Any, x: Tensor, level: str = "all") -> dict[str, Tensor]:
    """Every output of an exported model (a path or ModelProto) on float32 ``x``, by output name."""
    sess = session(model, level)
    (inp,) = sess.get_inputs()
    dims = inp.shape
    if x.dim() != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, x.shape, strict=True)):
        raise ValueError(f"input {inp.name!r}: model expects shape {dims}, got {tuple(x.shape)}")
    want = torch.uint8 if inp.type == "tensor(uint8)" else torch.float32
    if x.dtype != want:
        raise ValueError(f"input {inp.name!r}: model expects {want}, got {x.dtype}")
    outs = sess.run(None, {inp.name: np.ascontiguousarray(_np(x))})
    return {o.name: torch.from_numpy(v) for o, v in zip(sess.get_outputs(), outs, strict=True)}


def run_onnx_model(model: Any, x: Tensor, level: str = "all") -> Tensor:
    """The float32 output ``y`` of an exported model (a path or ModelProto) on float32 ``x``."""
    return next(iter(run_onnx_outputs(model, x, level).values()))


def dialect_outputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """What ORT computes for ``export_onnx(model, layer_outputs=True)``, by the onnx dialect.

    Same chain semantics as the exported graph: QuantizeLinear / DequantizeLinear where a layer's
    input qparams differ from the tensor's, each static layer's integers from ``dialects.onnx``
    (exact accumulator, ``requantize``), integer ReLU on uint8, dynamic layers by
    ``dialects.onnx.linear_dynamic``. Returns ``{"y": float32, "layer:<name>": uint8, ...}``.
    """
    out: dict[str, Tensor] = {}
    v, qp = x, None  # qp: (scale, zero_point) while v holds uint8
    for name, m in chain(model):
        if isinstance(m, (QuantLinear, QuantConv2d)):
            if qp is None or float(f32(qp[0])) != float(f32(m.x_scale)) or qp[1] != m.x_zero_point:
                v = v if qp is None else dialect.dequantize(v, qp[0], qp[1])
                v = dialect.quantize(v, m.x_scale, m.x_zero_point, torch.uint8)
            v = onnx_integers(m, v)
            qp = (m.y_scale, m.y_zero_point)
            out[LAYER_PREFIX + name] = v
        elif isinstance(m, DynamicQuantLinear):
            v = v if qp is None else dialect.dequantize(v, qp[0], qp[1])
            qp = None
            w_scale = m.w_scale if m.w_scale.numel() > 1 else float(m.w_scale)
            v = dialect.linear_dynamic(v, m.w_q, w_scale, m.w_zero_point, m.bias, relu=m.relu)
        elif isinstance(m, nn.Flatten):
            v = v.flatten(1)
        elif isinstance(m, nn.ReLU):
            v = v.clamp_min(0.0) if qp is None else v.clamp_min(qp[1])
    out["y"] = v if qp is None else dialect.dequantize(v, qp[0], qp[1])
    return out


def onnx_integers(layer: QuantLinear | QuantConv2d, x_q: Tensor) -> Tensor:
    """A static layer's uint8 output as ORT computes it (QGemm / QLinearMatMul / QLinearConv): the
    layer's exact accumulator (eq. 4, zero-point padding for a conv), then ``dialects.onnx.requantize``.

    Numerics: x_q uint8 (N, K) or (N, C_in, H, W); returns uint8 (N, N_out) or (N, C_out, OH, OW).
    """
    w_scale = layer.w_scale if layer.w_scale.numel() > 1 else float(layer.w_scale)
    args = (layer.x_scale, w_scale, layer.bias, layer.y_scale, layer.y_zero_point, layer.relu)
    if isinstance(layer, QuantLinear):
        return dialect.requantize(layer.accumulate(x_q, fast=False), *args)
    acc = layer.accumulate(x_q, fast=False)  # (N * OH * OW, C_out)
    y_q = dialect.requantize(acc, *args)
    n = x_q.shape[0]
    oh, ow = ((x_q.shape[2 + i] + 2 * layer.padding[i] - layer.dilation[i] * (layer.kernel_size[i] - 1) - 1)
              // layer.stride[i] + 1 for i in range(2))
    return y_q.reshape(n, oh, ow, layer.out_channels).permute(0, 3, 1, 2).contiguous()  # (N, C_out, OH, OW)


def optimized_op_types(model: Any, level: str = "all") -> list[str]:
    """The operator types ORT runs for ``model`` after graph optimization at ``level``, in order."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "optimized.onnx")
        session(model, level, optimized_path=path)
        return [n.op_type for n in onnx.load(path).graph.node]
