"""``glassquant verify | explain | certify | export``: look inside a saved model (layers only;
no architecture needed), or export it to another runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from .export.format import load_layers


def _layers(path: Path, only: list[str] | None) -> dict[str, Any]:
    layers = load_layers(path)
    if not layers:
        raise ValueError(f"{path}: the saved model has no glassquant layers")
    if only:
        missing = [n for n in only if n not in layers]
        if missing:
            raise ValueError(f"{path}: no layer {missing[0]!r}; layers: {', '.join(list(layers)[:12])}")
        layers = {n: layers[n] for n in only}
    return layers


def _input(path: Path | None, layer: Any, rows: int, seed: int) -> torch.Tensor:
    from .analysis.verify import layer_inputs
    from .workflow import _tensor_file

    if path is None:
        return layer_inputs(layer, rows, seed)
    x = _tensor_file(path)
    if x.shape[-1] != layer.in_features:
        raise ValueError(f"{path}: input has {x.shape[-1]} features, layer {layer.name} expects {layer.in_features}")
    if x.is_floating_point():
        return x.to(torch.float32).reshape(-1, layer.in_features)
    if int(x.min()) < 0 or int(x.max()) > 255:
        raise ValueError(f"{path}: integer input outside uint8 [0, 255]")
    return x.to(torch.uint8).reshape(-1, layer.in_features)


def verify_command(args: Any, console: Console) -> int:
    """Print mismatches per layer against a real runtime; exit 1 if glassquant's dialect of it mismatches."""
    from .analysis.verify import verify, verify_markdown

    layers = _layers(args.saved, args.layer)
    checks = verify(layers, args.against, rows=args.rows, seed=args.seed)
    console.print(escape(verify_markdown(checks)), soft_wrap=True)
    total = sum(c.compared for c in checks)
    bad = sum(c.mismatches for c in checks)
    console.print(f"{args.against}: {bad} mismatching values of {total:,} compared over {len(checks)} layers "
                  f"(glassquant's {args.against} dialect vs the real runtime)")
    bounded = all("bounded" in c.note for c in checks if c.mismatches)
    return 0 if bad == 0 or bounded else 1


def explain_command(args: Any, console: Console) -> int:
    """Name the cause of every differing output between two dialects, per static Linear layer."""
    from .analysis.explain import explain_linear

    layers = _layers(args.saved, args.layer)
    static = {n: m for n, m in layers.items() if m.kind == "QuantLinear"}
    if not static:
        raise ValueError(f"{args.saved}: explain needs static QuantLinear layers; this model has "
                         f"{sorted({m.kind for m in layers.values()})}")
    for i, (name, layer) in enumerate(static.items()):
        x = _input(args.input, layer, args.rows, args.seed + i)
        e = explain_linear(layer, x, args.a, args.b, name=name)
        console.print(escape(e.to_markdown(limit=args.limit)), soft_wrap=True)
        console.print()
    return 0


def certify_command(args: Any, console: Console) -> int:
    """Overflow certificates of every integer layer; exit 1 if any can overflow int32."""
    from .analysis.overflow import certificates_markdown, certify_layer

    certs = [c for n, m in _layers(args.saved, args.layer).items() if (c := certify_layer(n, m)) is not None]
    console.print(escape(certificates_markdown(certs)), soft_wrap=True)
    return 1 if any(c.verdict == "wider accumulator" for c in certs) else 0


def export_command(args: Any, console: Console) -> int:
    """Export a saved static model: ``c`` (header + C99 runtime sources + example main),
    ``onnx`` (QDQ or QOperator) or ``tflite``. The model must rebuild from the file alone
    (an nn.Sequential chain such as the digits MLP)."""
    from .export.format import load

    model = load(args.saved)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.format == "c":
        from .export.c import export_c
        from .nn.integer import to_integer_only
        from .nn.linear import QuantLinear

        if any(isinstance(m, QuantLinear) for m in model.modules()):
            model = to_integer_only(model)
        paths = export_c(model, args.out, name=args.name)
    elif args.format == "onnx":
        from .interop.onnxruntime import export_onnx

        path = args.out / f"{args.name}.onnx"
        export_onnx(model, path, form=args.form)
        paths = [path]
    else:
        from .interop.litert import export_tflite

        path = args.out / f"{args.name}.tflite"
        export_tflite(model, path)
        paths = [path]
    for p in paths:
        console.print(f"wrote {p}")
    return 0
