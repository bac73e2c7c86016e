"""Verify a quantized model layer by layer against a real runtime.

For each glassquant integer layer, the same inputs (random integers on the layer's input
grid, or float activations for dynamic layers; seeded) go to the real runtime and to
glassquant's dialect of that runtime; the integers (floats for dynamic layers) are
compared element by element with no tolerance. Two counts per layer: ``mismatches``
(runtime vs glassquant's model of it: 0 means proven on these inputs) and
``own_differences`` (runtime vs the layer's own dialect — expected where the runtimes
differ; ``glassquant explain`` names the cause of each).

Runtimes: the PyTorch engines ``fbgemm``, ``x86``, ``qnnpack``, ``onednn`` (torch.ao's
quantized ops, while the pinned torch has them), ``torchao`` (torchao 0.18), and those
registered in :data:`RUNNERS` by the interop modules (ONNX Runtime, LiteRT, the C runtime).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["RUNNERS", "LayerCheck", "layer_inputs", "verify", "verify_markdown"]


@dataclass(frozen=True)
class LayerCheck:
    """One layer against one runtime."""

    layer: str
    kind: str
    runtime: str
    compared: int
    mismatches: int
    own_dialect: str
    own_differences: int
    note: str = ""


#: runtime name -> ``run(layer, x) -> (runtime output, glassquant's dialect of it, note)``;
#: raises ``NotImplementedError`` for a layer kind it cannot run
Runner = Callable[[Any, Tensor], tuple[Tensor, Tensor, str]]
RUNNERS: dict[str, Runner] = {}


def layer_inputs(layer: Any, rows: int, seed: int) -> Tensor:
    """Seeded test inputs for a layer: uint8 integers (static layers; (rows, K) or
    (2, C, 12, 12) for convs), or float32 activations of spread magnitudes (dynamic)."""
    g = torch.Generator().manual_seed(seed)
    kind = layer.kind
    if kind == "QuantLinear":
        return torch.randint(0, 256, (rows, layer.in_features), generator=g, dtype=torch.uint8)
    if kind in ("QuantConv1d", "QuantConv2d"):
        spatial = (12,) if kind == "QuantConv1d" else (12, 12)
        return torch.randint(0, 256, (2, layer.in_channels, *spatial), generator=g, dtype=torch.uint8)
    if kind == "DynamicQuantLinear":
        mag = torch.pow(10.0, torch.randint(-2, 3, (rows, 1), generator=g).to(torch.float32))
        return torch.randn((rows, layer.in_features), generator=g) * mag
    if kind == "IntLinear":
        return torch.randint(-128, 128, (rows, layer.in_features), generator=g, dtype=torch.int8)
    raise NotImplementedError(kind)


def _own_output(layer: Any, x: Tensor) -> Tensor:
    if layer.kind == "DynamicQuantLinear":
        return layer(x, fast=False)
    if layer.kind == "IntLinear":
        return layer.forward_int(x)
    return layer.forward_int(x, fast=False)


def _with_engine(layer: Any, engine: str) -> Any:
    """A copy of ``layer`` computing in another PyTorch engine's dialect (same integers and qparams)."""
    tensors, meta = layer.record()
    meta = {**meta, "engine": engine}
    return type(layer).from_record(tensors, meta)


def _torch_ao_runner(engine: str) -> Runner:
    def run(layer: Any, x: Tensor) -> tuple[Tensor, Tensor, str]:
        from ..interop import torch_ao

        ok, why = torch_ao.available()
        if not ok:
            raise RuntimeError(f"torch.ao is not available: {why}")
        if layer.kind not in ("QuantLinear", "QuantConv1d", "QuantConv2d", "DynamicQuantLinear"):
            raise NotImplementedError(layer.kind)
        if layer.kind == "DynamicQuantLinear" and layer.engine == "torchao":
            raise NotImplementedError("per-token torchao layers have no torch.ao counterpart")
        if layer.kind == "DynamicQuantLinear" and layer.relu:
            raise NotImplementedError("torch.ao has no dynamic Linear with a fused ReLU")
        twin = _with_engine(layer, engine)
        ours = _own_output(twin, x)
        ao = twin.to_torch_ao()
        with torch_ao.engine(engine):
            if layer.kind == "DynamicQuantLinear":
                real = ao(x)
            else:
                xq = torch._make_per_tensor_quantized_tensor(x, layer.x_scale, layer.x_zero_point)
                real = ao(xq).int_repr()
        note = "onednn's dynamic Linear is bounded, not bit-exact (docs/dialects.md)" \
            if engine == "onednn" and layer.kind == "DynamicQuantLinear" else ""
        return real, ours, note

    return run


def _torchao_runner(layer: Any, x: Tensor) -> tuple[Tensor, Tensor, str]:
    from ..interop import torchao_runtime

    ok, why = torchao_runtime.available()
    if not ok:
        raise RuntimeError(f"torchao is not available: {why}")
    if layer.kind != "DynamicQuantLinear" or layer.engine != "torchao":
        raise NotImplementedError(f"{layer.kind} (engine {getattr(layer, 'engine', '?')})")
    lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(layer.w_q.to(torch.float32) * layer.w_scale.reshape(-1, 1))
        if layer.bias is not None:
            lin.bias.copy_(layer.bias)
    module = torchao_runtime.torchao_linear(lin, "w8a8-dynamic")
    w: Any = module.weight  # torchao's Int8Tensor: put the layer's own integers and scales in it
    w.qdata.copy_(layer.w_q)
    w.scale.copy_(layer.w_scale.reshape(w.scale.shape))
    with torch.no_grad():
        real = torchao_runtime.run(module, x)
    if layer.relu:
        real = real.clamp_min(0.0)
    return real, layer(x, fast=False), ""


def _c_runner(layer: Any, x: Tensor) -> tuple[Tensor, Tensor, str]:
    """The compiled C runtime against glassquant's integer-only dialect; a static QuantLinear
    runs as its integer-only twin (uint8 <-> int8 by 128), outputs in the layer's own domain."""
    from ..interop.c_runtime import run_c
    from ..nn.integer import IntLinear

    if layer.kind == "IntLinear":
        twin, x_int, shift = layer, x, 0
    elif layer.kind == "QuantLinear":
        twin, x_int, shift = IntLinear.from_quant_linear(layer), (x.to(torch.int16) - 128).to(torch.int8), 128
    else:
        raise NotImplementedError(layer.kind)
    real = run_c(twin, x_int)[0].to(torch.int64) + shift
    ours = twin.forward_int(x_int).to(torch.int64) + shift
    return real, ours, "" if shift == 0 else "QuantLinear run as its integer-only (glassquant dialect) twin"


def _onnxruntime_runner(layer: Any, x: Tensor) -> tuple[Tensor, Tensor, str]:
    """ONNX Runtime (QOperator graph of the layer) against glassquant's ``onnx`` dialect twin."""
    from ..interop import onnxruntime as gox

    if layer.kind not in ("QuantLinear", "QuantConv2d", "DynamicQuantLinear"):
        raise NotImplementedError(layer.kind)
    twin = _with_engine(layer, "onnx")
    return gox.run_layer(twin, x, form="qoperator"), _own_output(twin, x), ""


def _litert_runner(kernel: str) -> Runner:
    def run(layer: Any, x: Tensor) -> tuple[Tensor, Tensor, str]:
        """LiteRT (one FULLY_CONNECTED / CONV_2D model of the layer, run with ``kernel``'s resolver)
        against the ``tflite`` dialect; uint8 <-> int8 by 128, outputs in the layer's domain."""
        from ..dialects import tflite
        from ..interop import litert

        if layer.kind != "QuantLinear":
            raise NotImplementedError(layer.kind)
        real = litert.run_layer(layer, x, kernel=kernel)
        w_scale = layer.w_scale if layer.w_scale.numel() > 1 else float(layer.w_scale)
        y8 = tflite.linear((x.to(torch.int16) - 128).to(torch.int8), layer.x_scale, layer.x_zero_point - 128,
                           layer.w_q, w_scale, layer.bias, layer.y_scale, layer.y_zero_point - 128, layer.relu,
                           kernel=kernel, name=layer.name)
        return real, (y8.to(torch.int16) + 128).to(torch.uint8), ""

    return run


for _engine in ("fbgemm", "x86", "qnnpack", "onednn"):
    RUNNERS[_engine] = _torch_ao_runner(_engine)
RUNNERS["torchao"] = _torchao_runner
RUNNERS["c"] = _c_runner
RUNNERS["onnxruntime"] = _onnxruntime_runner
RUNNERS["litert"] = _litert_runner("xnnpack")  # LiteRT's default resolver (XNNPACK delegate)
RUNNERS["litert-reference"] = _litert_runner("reference")
RUNNERS["litert-optimized"] = _litert_runner("optimized")


def _layers(model: nn.Module | dict[str, Any]) -> dict[str, Any]:
    if isinstance(model, dict):
        return model
    from ..export.format import quant_layers

    return dict(quant_layers(model))


def verify(model: nn.Module | dict[str, Any], against: str, rows: int = 64, seed: int = 0) -> list[LayerCheck]:
    """Run every integer layer of ``model`` (or a ``{name: layer}`` dict) on the runtime
    ``against`` and on glassquant's dialect of it; one :class:`LayerCheck` per layer.

    Layers the runtime cannot run are listed with a note and ``compared = 0``.
    """
    if against not in RUNNERS:
        raise ValueError(f"unknown runtime {against!r}; choose one of {sorted(RUNNERS)}")
    run = RUNNERS[against]
    out = []
    for i, (name, layer) in enumerate(_layers(model).items()):
        own = str(getattr(layer, "engine", "glassquant"))
        try:
            x = layer_inputs(layer, rows, seed + i)
            real, ours, note = run(layer, x)
        except NotImplementedError as e:
            out.append(LayerCheck(name, layer.kind, against, 0, 0, own, 0, f"not run: {e}"))
            continue
        if real.shape != ours.shape:
            raise RuntimeError(f"{name}: runtime output {tuple(real.shape)} vs dialect {tuple(ours.shape)}")
        mine = _own_output(layer, x)
        mism = int((real.to(torch.float64) != ours.to(torch.float64)).sum())
        own_diff = int((real.to(torch.float64) != mine.to(torch.float64)).sum()) if mine.shape == real.shape else -1
        out.append(LayerCheck(name, layer.kind, against, real.numel(), mism, own, own_diff, note))
    return out


def verify_markdown(checks: list[LayerCheck]) -> str:
    """One row per layer: compared values, mismatches against the runtime's dialect, and
    differences from the layer's own dialect."""
    rows = ["| layer | kind | runtime | compared | mismatches vs its dialect | differences vs own dialect | note |",
            "|---|---|---|---|---|---|---|"]
    for c in checks:
        rows.append(f"| {c.layer} | {c.kind} | {c.runtime} | {c.compared:,} | {c.mismatches} | "
                    f"{c.own_differences} ({c.own_dialect}) | {c.note} |")
    return "\n".join(rows)
