"""LiteRT (TFLite) flatbuffers written without TensorFlow, and run in ``ai_edge_litert``.

Models are built with the ``tflite`` PyPI package's generated builder functions (``flatbuffers``
underneath): one FULLY_CONNECTED or CONV_2D with int8 input/output, int8 symmetric weights (per
tensor or per output channel) and an int32 bias, or a whole glassquant chain model (QUANTIZE,
layers, DEQUANTIZE). ``kernel`` names the interpreter's op resolver:

==============  =====================================  ==========================================
kernel          ``OpResolverType``                      what runs
==============  =====================================  ==========================================
``xnnpack``     ``AUTO``                                XNNPACK delegate (the default)
``reference``   ``BUILTIN_REF``                         TFLite reference kernels
``optimized``   ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``   builtin optimized kernels (ruy GEMM)
==============  =====================================  ==========================================

glassquant's static layers hold uint8 activations; a uint8 ``q`` with zero point ``z`` is the
int8 ``q - 128`` with zero point ``z - 128`` (same real values, exactly). Float biases become
int32 by :func:`glassquant.dialects.tflite.quantize_bias`. The arithmetic LiteRT then performs is
:mod:`glassquant.dialects.tflite` (proven in tests/equivalence/test_litert.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..dialects import tflite as dialect

KERNELS = ("xnnpack", "reference", "optimized")
_RESOLVER = {"xnnpack": "AUTO", "reference": "BUILTIN_REF", "optimized": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}
_TYPES = {np.dtype(np.float32): 0, np.dtype(np.int32): 2, np.dtype(np.int8): 9}  # tflite.TensorType


def available() -> tuple[bool, str]:
    """Whether ``ai_edge_litert`` and the ``tflite`` flatbuffer package import here (and why not)."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import flatbuffers  # noqa: F401
        import tflite  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        return False, str(e)
    return True, ""


# ----------------------------------------------------------------------------- flatbuffer writer


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    buffer: int = 0
    scale: list[float] | None = None
    zero_point: list[int] | None = None
    axis: int = 0


@dataclass
class _Op:
    code: int  # tflite.BuiltinOperator
    version: int
    inputs: list[int]
    outputs: list[int]
    options: str | None = None  # "fc", "conv", "reshape" (others take no options)
    args: dict[str, Any] = field(default_factory=dict)


class Graph:
    """One subgraph under construction: tensors, constant buffers and operators, then ``finish()``."""

    def __init__(self) -> None:
        self.tensors: list[_Tensor] = []
        self.buffers: list[bytes] = [b""]  # buffer 0: the empty sentinel every model starts with
        self.ops: list[_Op] = []

    def tensor(self, name: str, shape: tuple[int, ...], dtype: Any, data: np.ndarray | None = None,
               scale: Any = None, zero_point: Any = None, axis: int = 0) -> int:
        """Add a tensor (constant when ``data`` is given; quantized when ``scale`` is); returns its index."""
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data, dtype=dtype).tobytes())
            buffer = len(self.buffers) - 1
        sc = None if scale is None else [float(s) for s in np.atleast_1d(np.asarray(scale, dtype=np.float32))]
        zp = None if zero_point is None else [int(z) for z in np.atleast_1d(np.asarray(zero_point))]
        self.tensors.append(_Tensor(name, tuple(int(d) for d in shape), np.dtype(dtype), buffer, sc, zp, axis))
        return len(self.tensors) - 1

    def op(self, code: int, version: int, inputs: list[int], outputs: list[int], options: str | None = None,
           **args: Any) -> None:
        self.ops.append(_Op(code, version, inputs, outputs, options, args))

    def finish(self, inputs: list[int], outputs: list[int], description: str = "glassquant") -> bytes:
        """Serialize the model (schema version 3, file identifier ``TFL3``); children before parents."""
        import flatbuffers

        b = flatbuffers.Builder(1024)

        def ivec(values: list[int]) -> int:
            return b.CreateNumpyVector(np.asarray(values, dtype=np.int32))

        def offsets(offs: list[int]) -> int:
            b.StartVector(4, len(offs), 4)
            for o in reversed(offs):
                b.PrependUOffsetTRelative(o)
            return b.EndVector()

        buffers = []
        for data in self.buffers:
            vec = None
            if data:
                b.StartVector(1, len(data), 16)  # constant data 16-byte aligned, as TFLite's writer does
                b.head -= len(data)
                b.Bytes[b.head:b.head + len(data)] = data
                vec = b.EndVector()
            buffers.append(_table(b, "Buffer", Data=vec))
        tensors = []
        for t in self.tensors:
            quant = None if t.scale is None else _table(
                b, "QuantizationParameters", Scale=b.CreateNumpyVector(np.asarray(t.scale, dtype=np.float32)),
                ZeroPoint=b.CreateNumpyVector(np.asarray(t.zero_point or [0] * len(t.scale), dtype=np.int64)),
                QuantizedDimension=t.axis)
            tensors.append(_table(b, "Tensor", Shape=ivec(list(t.shape)), Type=_TYPES[t.dtype], Buffer=t.buffer,
                                  Name=b.CreateString(t.name), Quantization=quant))
        codes = sorted({(o.code, o.version) for o in self.ops})
        ops = []
        for o in self.ops:
            ins, outs = ivec(o.inputs), ivec(o.outputs)
            opt_type, opt = _options(b, o)
            ops.append(_table(b, "Operator", OpcodeIndex=codes.index((o.code, o.version)), Inputs=ins, Outputs=outs,
                              BuiltinOptionsType=opt_type if opt is not None else None, BuiltinOptions=opt))
        op_codes = [_table(b, "OperatorCode", DeprecatedBuiltinCode=min(c, 127), BuiltinCode=c, Version=v)
                    for c, v in codes]
        subgraph = _table(b, "SubGraph", Tensors=offsets(tensors), Inputs=ivec(inputs), Outputs=ivec(outputs),
                          Operators=offsets(ops), Name=b.CreateString("main"))
        model = _table(b, "Model", Version=3, OperatorCodes=offsets(op_codes), Subgraphs=offsets([subgraph]),
                       Description=b.CreateString(description), Buffers=offsets(buffers))
        b.Finish(model, file_identifier=b"TFL3")
        return bytes(b.Output())


def _table(b: Any, name: str, **fields: Any) -> int:
    """One flatbuffer table with the ``tflite`` package's builders: ``<name>Start``, ``<name>Add<Field>``
    for every field that is not None (children must already be built), ``<name>End``."""
    import tflite

    getattr(tflite, f"{name}Start")(b)
    for field_name, value in fields.items():
        if value is not None:
            getattr(tflite, f"{name}Add{field_name}")(b, value)
    return int(getattr(tflite, f"{name}End")(b))


def _options(b: Any, o: _Op) -> tuple[int, int | None]:
    """The builtin-options table of one operator: ``(BuiltinOptions type, offset or None)``."""
    import tflite

    act = tflite.ActivationFunctionType.RELU if o.args.get("relu") else tflite.ActivationFunctionType.NONE
    if o.options == "fc":
        return tflite.BuiltinOptions.FullyConnectedOptions, _table(b, "FullyConnectedOptions",
                                                                   FusedActivationFunction=act)
    if o.options == "conv":
        (sh, sw), (dh, dw) = o.args["stride"], o.args["dilation"]
        padding = tflite.Padding.SAME if o.args["padding"] == "same" else tflite.Padding.VALID
        return tflite.BuiltinOptions.Conv2DOptions, _table(
            b, "Conv2DOptions", Padding=padding, StrideH=sh, StrideW=sw, DilationHFactor=dh, DilationWFactor=dw,
            FusedActivationFunction=act)
    if o.options == "reshape":
        shape = b.CreateNumpyVector(np.asarray(o.args["shape"], dtype=np.int32))
        return tflite.BuiltinOptions.ReshapeOptions, _table(b, "ReshapeOptions", NewShape=shape)
    return 0, None


_FC, _CONV, _PAD, _RESHAPE, _QUANTIZE, _DEQUANTIZE = 9, 3, 34, 22, 114, 6  # tflite.BuiltinOperator


# ----------------------------------------------------------------------------- steps: one int8 op each


@dataclass
class Step:
    """One LiteRT op, with everything both the flatbuffer writer and the dialect need.

    ``kind``: ``"fc"`` (w_q int8 (N, K)), ``"conv"`` (w_q int8 OHWI), ``"pad"``, ``"reshape"``,
    ``"quantize"``, ``"dequantize"``. Scales are float32 values, zero points int8-side integers;
    ``x_zero_point`` is the zero point of the tensor the step reads.
    """

    kind: str
    name: str
    y_scale: float
    y_zero_point: int
    w_q: Tensor | None = None
    w_scale: Tensor | float = 1.0
    bias_q: Tensor | None = None
    x_scale: float = 1.0
    x_zero_point: int = 0
    relu: bool = False
    stride: tuple[int, int] = (1, 1)
    padding: str = "valid"
    dilation: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # PAD: (top, bottom, left, right)
    shape: tuple[int, ...] = ()  # output shape without the batch dimension


def _write_layer(g: Graph, x: int, s: Step) -> int:
    """A FULLY_CONNECTED or CONV_2D reading tensor ``x``: constant weights (quantized along axis 0,
    zero points 0) and an int32 bias with scales ``f32(sx * sw)`` (a zero bias for a CONV_2D without
    one: its builtin kernels require it). Returns the output tensor."""
    assert s.w_q is not None
    if s.w_q.dtype != torch.int8:
        raise ValueError(f"{s.name}: weights must be int8, got {s.w_q.dtype}")
    n = int(s.w_q.shape[0])
    bias_q = torch.zeros(n, dtype=torch.int32) if s.bias_q is None and s.kind == "conv" else s.bias_q
    if bias_q is not None and (bias_q.dtype != torch.int32 or bias_q.shape != (n,)):
        raise ValueError(f"{s.name}: bias must be int32 of shape ({n},), got {bias_q.dtype} {tuple(bias_q.shape)}")
    sw = torch.as_tensor(s.w_scale, dtype=torch.float32).reshape(-1).numpy()
    zeros = [0] * sw.size
    inputs = [x, g.tensor(f"{s.name}/weights", tuple(s.w_q.shape), np.int8, s.w_q.numpy(), sw, zeros, axis=0), -1]
    if bias_q is not None:
        inputs[2] = g.tensor(f"{s.name}/bias", (n,), np.int32, bias_q.numpy(), np.float32(s.x_scale) * sw, zeros)
    batch = g.tensors[x].shape[0]
    y = g.tensor(f"{s.name}/output", (batch, *s.shape), np.int8, scale=s.y_scale, zero_point=s.y_zero_point)
    if s.kind == "fc":
        g.op(_FC, 9 if sw.size > 1 else 4, inputs, [y], "fc", relu=s.relu)
    else:
        g.op(_CONV, 3, inputs, [y], "conv", relu=s.relu, stride=s.stride, padding=s.padding, dilation=s.dilation)
    return y


def _write_steps(g: Graph, x: int, steps: list[Step]) -> int:
    """Append every step to ``g``, starting from tensor ``x``; returns the last output tensor."""
    for s in steps:
        if s.kind in ("fc", "conv"):
            x = _write_layer(g, x, s)
            continue
        shape = (g.tensors[x].shape[0], *s.shape)
        y = (g.tensor(f"{s.name}/output", shape, np.float32) if s.kind == "dequantize"
             else g.tensor(f"{s.name}/output", shape, np.int8, scale=s.y_scale, zero_point=s.y_zero_point))
        if s.kind == "pad":  # PAD of an int8 tensor fills with its zero point (real 0)
            t, b, lft, r = s.pads
            pads = g.tensor(f"{s.name}/paddings", (4, 2), np.int32, np.array([[0, 0], [t, b], [lft, r], [0, 0]]))
            g.op(_PAD, 2, [x, pads], [y])
        elif s.kind == "reshape":
            new_shape = g.tensor(f"{s.name}/shape", (2,), np.int32, np.array([-1, s.shape[0]]))
            g.op(_RESHAPE, 1, [x, new_shape], [y], "reshape", shape=[-1, s.shape[0]])
        else:
            g.op(_QUANTIZE if s.kind == "quantize" else _DEQUANTIZE, 2, [x], [y])
        x = y
    return x


def _single_op(s: Step, in_shape: tuple[int, ...], batch: int) -> bytes:
    g = Graph()
    x = g.tensor(f"{s.name}/input", (batch, *in_shape), np.int8, scale=s.x_scale, zero_point=s.x_zero_point)
    return g.finish([x], [_write_steps(g, x, [s])])


def fully_connected_model(w_q: Tensor, w_scale: Any, bias_q: Tensor | None, x_scale: float, x_zero_point: int,
                          y_scale: float, y_zero_point: int, relu: bool = False, batch: int = 1,
                          name: str = "fc") -> bytes:
    """A model with one FULLY_CONNECTED: int8 (batch, K) -> int8 (batch, N); ``w_q`` int8 (N, K),
    symmetric, one or N float32 scales; ``bias_q`` int32 (N,) or None."""
    s = Step("fc", name, y_scale, y_zero_point, w_q, w_scale, bias_q, x_scale, x_zero_point, relu,
             shape=(int(w_q.shape[0]),))
    return _single_op(s, (int(w_q.shape[1]),), batch)


def conv2d_model(w_q: Tensor, w_scale: Any, bias_q: Tensor | None, x_scale: float, x_zero_point: int,
                 y_scale: float, y_zero_point: int, input_hw: tuple[int, int], stride: tuple[int, int] = (1, 1),
                 padding: str = "valid", dilation: tuple[int, int] = (1, 1), relu: bool = False, batch: int = 1,
                 name: str = "conv") -> bytes:
    """A model with one CONV_2D: int8 NHWC (batch, H, W, C) -> int8 NHWC; ``w_q`` int8 OHWI;
    ``padding`` TFLite's ``"same"``/``"valid"``."""
    oh, ow = dialect.conv_output_size(input_hw, (int(w_q.shape[1]), int(w_q.shape[2])), stride, padding, dilation)
    s = Step("conv", name, y_scale, y_zero_point, w_q, w_scale, bias_q, x_scale, x_zero_point, relu, stride,
             padding, dilation, shape=(oh, ow, int(w_q.shape[0])))
    return _single_op(s, (*input_hw, int(w_q.shape[3])), batch)


def run(model: bytes, inputs: list[np.ndarray], kernel: str = "xnnpack") -> list[np.ndarray]:
    """Run a model once in LiteRT with the named op resolver (one thread); inputs resized to their shapes.

    With ``kernel="xnnpack"`` the model must actually be delegated (RuntimeError otherwise: the
    builtin kernels would run and round differently). Returns a copy of every output.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if kernel not in _RESOLVER:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
    interp = Interpreter(model_content=model, num_threads=1,
                         experimental_op_resolver_type=getattr(OpResolverType, _RESOLVER[kernel]))
    details = interp.get_input_details()
    if len(details) != len(inputs):
        raise ValueError(f"model takes {len(details)} input(s), got {len(inputs)}")
    for d, x in zip(details, inputs, strict=True):
        if x.dtype != d["dtype"]:
            raise ValueError(f"input {d['name']!r} wants {np.dtype(d['dtype'])}, got {x.dtype}")
        if tuple(d["shape"]) != x.shape:
            interp.resize_tensor_input(d["index"], list(x.shape))
    interp.allocate_tensors()
    ops = getattr(interp, "_get_ops_details", None)  # private, but the only view of the delegation
    if kernel == "xnnpack" and ops is not None and not any(o["op_name"] == "DELEGATE" for o in ops()):
        raise RuntimeError("XNNPACK did not take this model; LiteRT would run its builtin kernels instead")
    for d, x in zip(details, inputs, strict=True):
        interp.set_tensor(d["index"], np.ascontiguousarray(x))
    interp.invoke()
    return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]


# ----------------------------------------------------------------------------- glassquant layers and models


def _weights(layer: Any, on_weight_min: str) -> Tensor:
    """The layer's int8 weights, checked for TFLite: symmetric, and -128 handled by ``on_weight_min``."""
    if bool(layer.w_zero_point.ne(0).any()):
        raise ValueError(f"{layer.name}: TFLite int8 weights are symmetric; weight zero point(s) must be 0, "
                         f"got {sorted(set(layer.w_zero_point.tolist()))[:4]}")
    w_q = layer.w_q
    n_min = int((w_q == -128).sum())
    if n_min and on_weight_min == "error":
        raise ValueError(f"{layer.name}: {n_min} weight(s) are -128; TFLite's int8 spec wants [-127, 127]")
    if on_weight_min == "clamp":
        w_q = w_q.clamp(min=-127)
    elif on_weight_min != "keep":
        raise ValueError(f"on_weight_min must be 'keep', 'clamp' or 'error', got {on_weight_min!r}")
    return w_q


def _pair(v: Any) -> tuple[int, int]:
    return int(v[0]), int(v[1])


def layer_step(layer: Any, in_shape: tuple[int, ...], on_weight_min: str = "keep") -> list[Step]:
    """The step(s) of a glassquant static layer reading an int8 tensor of ``in_shape`` (no batch).

    ``QuantLinear`` -> FULLY_CONNECTED; ``QuantConv2d`` -> CONV_2D (``"valid"`` or ``"same"`` when
    TFLite's padding equals the layer's, else a PAD op first). uint8 zero points ``z`` become ``z - 128``.
    """
    from ..dialects.tflite import conv_output_size, quantize_bias, same_padding
    from ..nn.conv import QuantConv2d
    from ..nn.linear import QuantLinear

    sw: Tensor | float = layer.w_scale if layer.w_scale.numel() > 1 else float(layer.w_scale)
    common = dict(name=layer.name, y_scale=layer.y_scale, y_zero_point=layer.y_zero_point - 128,
                  w_scale=sw, x_scale=layer.x_scale, x_zero_point=layer.x_zero_point - 128, relu=layer.relu,
                  bias_q=None if layer.bias is None else quantize_bias(layer.bias, layer.x_scale, sw,
                                                                       f"{layer.name}: bias"))
    if isinstance(layer, QuantLinear):
        if in_shape != (layer.in_features,):
            raise ValueError(f"{layer.name}: input of shape {in_shape} but the layer takes ({layer.in_features},)")
        return [Step("fc", w_q=_weights(layer, on_weight_min), shape=(layer.out_features,), **common)]
    if not isinstance(layer, QuantConv2d):
        raise ValueError(f"{getattr(layer, 'name', type(layer).__name__)}: only QuantLinear and QuantConv2d "
                         f"export to TFLite, got {type(layer).__name__}")
    if layer.groups != 1:
        raise ValueError(f"{layer.name}: grouped/depthwise convolutions (groups={layer.groups}) are not exported")
    if len(in_shape) != 3 or in_shape[2] != layer.in_channels:
        raise ValueError(f"{layer.name}: input of shape {in_shape} (H, W, C) but the layer takes "
                         f"{layer.in_channels} channels")
    hw, k = (in_shape[0], in_shape[1]), _pair(layer.kernel_size)
    stride, dilation, (ph, pw), steps = _pair(layer.stride), _pair(layer.dilation), _pair(layer.padding), []
    if (ph, pw) == (0, 0):
        padding = "valid"
    elif same_padding(hw, k, stride, dilation) == (ph, ph, pw, pw):
        padding = "same"
    else:
        padding, hw = "valid", (hw[0] + 2 * ph, hw[1] + 2 * pw)
        steps.append(Step("pad", f"{layer.name}/pad", layer.x_scale, layer.x_zero_point - 128,
                          pads=(ph, ph, pw, pw), shape=(*hw, in_shape[2])))
    oh, ow = conv_output_size(hw, k, stride, padding, dilation)
    w_q = _weights(layer, on_weight_min).permute(0, 2, 3, 1).contiguous()  # OIHW -> OHWI
    steps.append(Step("conv", w_q=w_q, stride=stride, padding=padding, dilation=dilation,
                      shape=(oh, ow, layer.out_channels), **common))
    return steps


def model_steps(model: nn.Module, input_shape: tuple[int, ...] | None = None,
                on_weight_min: str = "keep") -> tuple[tuple[int, ...], list[Step]]:
    """A glassquant chain model as LiteRT steps: ``(tflite input shape without batch, steps)``.

    ``model``: an ``nn.Sequential`` of QuantLinear / QuantConv2d / nn.ReLU / nn.Flatten / nn.Identity.
    QUANTIZE first (the first layer's input qparams), DEQUANTIZE last. Consecutive layers must share
    qparams (glassquant's calibration makes them equal); a ReLU after a layer becomes its fused RELU;
    Flatten of an NHWC map becomes RESHAPE, with the next FC's columns permuted from (C, H, W) order.
    ``input_shape``: PyTorch's (C, H, W) for a convolutional first layer (else read from the layer).
    """
    from ..nn.conv import QuantConv2d
    from ..nn.linear import QuantLinear

    if not isinstance(model, nn.Sequential):
        raise ValueError(f"export_tflite takes an nn.Sequential chain, got {type(model).__name__}")
    children = [(n, m) for n, m in model.named_children() if not isinstance(m, nn.Identity)]
    for name, m in children:
        if not isinstance(m, (QuantLinear, QuantConv2d, nn.ReLU, nn.Flatten)):
            what = "only QuantLinear and QuantConv2d export" if hasattr(m, "w_q") else \
                "supported: QuantLinear, QuantConv2d, ReLU, Flatten, Identity"
            raise ValueError(f"{getattr(m, 'name', name)}: {type(m).__name__} cannot be exported to TFLite ({what})")
    layers = [m for _, m in children if isinstance(m, (QuantLinear, QuantConv2d))]
    if not layers:
        raise ValueError("export_tflite: the model has no glassquant QuantLinear/QuantConv2d layer")
    first = layers[0]
    if isinstance(first, QuantConv2d):
        if input_shape is None or len(input_shape) != 3:
            raise ValueError(f"{first.name}: a convolutional model needs input_shape=(C, H, W), got {input_shape}")
        shape: tuple[int, ...] = (input_shape[1], input_shape[2], input_shape[0])  # NHWC
    else:
        shape = (first.in_features,)
    in_shape = shape
    steps = [Step("quantize", "input/quantize", first.x_scale, first.x_zero_point - 128, shape=shape)]
    chw: tuple[int, int, int] | None = None  # (C, H, W) of the last flattened map
    for name, m in children:
        prev = steps[-1]
        if isinstance(m, (QuantLinear, QuantConv2d)):
            if (np.float32(m.x_scale), m.x_zero_point - 128) != (np.float32(prev.y_scale), prev.y_zero_point):
                raise ValueError(f"{m.name}: input qparams ({m.x_scale}, {m.x_zero_point}) differ from the previous "
                                 f"output's ({prev.y_scale}, {prev.y_zero_point + 128}); add a requantize first")
            new = layer_step(m, shape, on_weight_min)
            if chw is not None and new[0].kind == "fc":
                c, h, w = chw  # tflite flat index (h, w, c) <- torch flat index (c, h, w)
                perm = torch.arange(c * h * w).reshape(c, h, w).permute(1, 2, 0).reshape(-1)
                assert new[0].w_q is not None
                new[0].w_q = new[0].w_q[:, perm].contiguous()
                chw = None
            steps += new
            shape = new[-1].shape
        elif isinstance(m, nn.ReLU):
            if prev.kind not in ("fc", "conv"):
                raise ValueError(f"{name}: a ReLU must follow a quantized layer to be exported")
            prev.relu = True
        elif len(shape) == 3:  # nn.Flatten of an NHWC map
            chw = (shape[2], shape[0], shape[1])
            shape = (shape[0] * shape[1] * shape[2],)
            steps.append(Step("reshape", f"{name}/reshape", prev.y_scale, prev.y_zero_point, shape=shape))
    last = steps[-1]
    steps.append(Step("dequantize", "output/dequantize", last.y_scale, last.y_zero_point, shape=shape))
    return in_shape, steps


def layer_to_tflite(layer: Any, input_hw: tuple[int, int] | None = None, batch: int = 1,
                    on_weight_min: str = "keep") -> bytes:
    """A one-op model (int8 in, int8 out) of a glassquant static ``QuantLinear`` or ``QuantConv2d``.

    ``input_hw``: (H, W) of a convolution's input. ``on_weight_min``: what to do with -128 weights
    (TFLite's spec says [-127, 127] so that ARM kernels may add two int8 products in int16):
    ``"keep"`` (LiteRT on x86 computes them exactly — tested), ``"clamp"`` (to -127, changing the
    layer), ``"error"``. Raises ValueError naming the layer for anything TFLite cannot express.
    """
    from ..nn.conv import QuantConv2d

    if isinstance(layer, QuantConv2d):
        if input_hw is None:
            raise ValueError(f"{layer.name}: layer_to_tflite needs input_hw=(H, W) for a convolution")
        shape: tuple[int, ...] = (input_hw[0], input_hw[1], layer.in_channels)
    else:
        shape = (getattr(layer, "in_features", 0),)
    steps = layer_step(layer, shape, on_weight_min)
    g = Graph()
    x = g.tensor(f"{layer.name}/input", (batch, *shape), np.int8, scale=layer.x_scale,
                 zero_point=layer.x_zero_point - 128)
    return g.finish([x], [_write_steps(g, x, steps)])


def run_layer(layer: Any, x_q: Tensor, kernel: str = "xnnpack", on_weight_min: str = "keep") -> Tensor:
    """Run one glassquant layer in LiteRT: uint8 in -> uint8 out (shifted by 128), or int8 -> int8.

    ``x_q`` in PyTorch layout: (M, K) for QuantLinear, NCHW for QuantConv2d (moved to NHWC and back).
    """
    if x_q.dtype not in (torch.uint8, torch.int8):
        raise ValueError(f"{getattr(layer, 'name', 'layer')}: x_q must be uint8 or int8, got {x_q.dtype}")
    x8 = (x_q.to(torch.int16) - 128).to(torch.int8) if x_q.dtype == torch.uint8 else x_q
    conv = x8.dim() == 4
    if conv:
        x8 = x8.permute(0, 2, 3, 1).contiguous()  # NCHW -> NHWC
    elif x8.dim() != 2:
        raise ValueError(f"{getattr(layer, 'name', 'layer')}: x_q must be (M, K) or NCHW, got {tuple(x_q.shape)}")
    model = layer_to_tflite(layer, (x8.shape[1], x8.shape[2]) if conv else None, int(x8.shape[0]), on_weight_min)
    y = torch.from_numpy(run(model, [x8.numpy()], kernel)[0])
    if conv:
        y = y.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    return (y.to(torch.int16) + 128).to(torch.uint8) if x_q.dtype == torch.uint8 else y


def export_tflite(model: nn.Module, path: str | Path | None = None, input_shape: tuple[int, ...] | None = None,
                  on_weight_min: str = "keep") -> bytes:
    """A glassquant chain model as a .tflite flatbuffer (float32 in and out); written to ``path`` if given.

    See :func:`model_steps` for what is supported. The model's input is float32 (1, K) or NHWC
    (1, H, W, C); :func:`run_tflite_model` resizes the batch.
    """
    in_shape, steps = model_steps(model, input_shape, on_weight_min)
    g = Graph()
    x = g.tensor("input", (1, *in_shape), np.float32)
    data = g.finish([x], [_write_steps(g, x, steps)], "glassquant export")
    if path is not None:
        Path(path).write_bytes(data)
    return data


def run_tflite_model(model: str | Path | bytes, x: Tensor, kernel: str = "xnnpack") -> Tensor:
    """Run an exported model on float ``x`` (PyTorch layout: (N, K), or NCHW moved to NHWC): float32 out."""
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    xs = x.detach().to(torch.float32)
    if xs.dim() == 4:
        xs = xs.permute(0, 2, 3, 1)  # NCHW -> NHWC
    return torch.from_numpy(run(data, [xs.contiguous().numpy()], kernel)[0])


def dialect_forward(model: nn.Module, x: Tensor, kernel: str = "xnnpack", input_shape: tuple[int, ...] | None = None,
                    on_weight_min: str = "keep") -> tuple[Tensor, dict[str, Tensor]]:
    """What LiteRT's ``kernel`` computes for :func:`export_tflite`'s model, by the tflite dialect.

    Returns ``(float32 output, {step name: int8 output})``; integers in NHWC / (N, K) layout.
    """
    from ..dialects import tflite as d

    _, steps = model_steps(model, input_shape, on_weight_min)
    v = x.detach().to(torch.float32)
    if v.dim() == 4:
        v = v.permute(0, 2, 3, 1)
    ints: dict[str, Tensor] = {}
    for s in steps:
        if s.kind == "quantize":
            v = d.quantize(v, s.y_scale, s.y_zero_point, kernel)
        elif s.kind == "dequantize":
            return d.dequantize(v, s.y_scale, s.y_zero_point, kernel), ints
        elif s.kind == "reshape":
            v = v.reshape(v.shape[0], -1)
        elif s.kind == "pad":
            t, b, lft, r = s.pads
            v = torch.nn.functional.pad(v.permute(0, 3, 1, 2), (lft, r, t, b), value=s.y_zero_point).permute(0, 2, 3, 1)
        elif s.kind == "fc":
            assert s.w_q is not None
            v = d.linear(v, s.x_scale, s.x_zero_point, s.w_q, s.w_scale, s.bias_q, s.y_scale,
                         s.y_zero_point, s.relu, kernel, s.name)
        else:
            assert s.w_q is not None
            v = d.conv2d(v, s.x_scale, s.x_zero_point, s.w_q, s.w_scale, s.bias_q, s.y_scale,
                         s.y_zero_point, s.stride, s.padding, s.dilation, s.relu, kernel, s.name)
        ints[s.name] = v
    raise AssertionError("model_steps always ends with a dequantize step")
