"""Command line: ``glassquant demo | quantize | report | verify | explain | certify | export | bench | allocate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from . import __version__


def _add_quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a local Hugging Face / sentence-transformers directory, or "
                   "package.module:factory (a function returning an nn.Module)")
    p.add_argument("--preset", default="w8a8-dynamic", help="configuration preset (default: w8a8-dynamic)")
    p.add_argument("--calibration", type=Path, help="text file (one sentence per line) or .npy/.pt/.safetensors "
                   "tensor of inputs; needed by static presets and by the report")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--include", action="append", help="glob of layer names to quantize (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of layer names to keep in float (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="output directory")


def _add_layer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", action="append", help="only this layer (dotted name; repeatable)")
    p.add_argument("--rows", type=int, default=64, help="input rows per layer (default 64)")
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glassquant", description="int8 quantization with every integer "
                                     "accounted for, proven against real runtimes")
    parser.add_argument("--version", action="version", version=f"glassquant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the guided tour: the seed post computed, then an int8 MLP "
                          "proven equal to PyTorch's")
    demo.add_argument("--engine", default="x86", choices=["x86", "fbgemm", "qnnpack", "onednn"],
                      help="PyTorch quantized engine to match (default: x86)")
    q = sub.add_parser("quantize", help="quantize a model, save it (safetensors + JSON) and write a report")
    _add_quantize_args(q)
    q.add_argument("--no-report", action="store_true", help="skip the per-layer report")
    r = sub.add_parser("report", help="per-layer error report (Markdown + PNG plots) for a preset")
    _add_quantize_args(r)
    r.add_argument("--sensitivity", action="store_true", help="also quantize one layer at a time")
    v = sub.add_parser("verify", help="run each layer of a saved model on a real runtime and count mismatching "
                       "integers against glassquant's dialect of it")
    v.add_argument("saved", type=Path, help="a model saved by glassquant (model.safetensors)")
    v.add_argument("--against", required=True, help="fbgemm, x86, qnnpack, onednn, torchao, onnxruntime, litert, c")
    _add_layer_args(v)
    e = sub.add_parser("explain", help="name the cause of every output that differs between two dialects")
    e.add_argument("saved", type=Path, help="a model saved by glassquant (model.safetensors)")
    e.add_argument("--a", default="x86", help="first dialect (default x86)")
    e.add_argument("--b", default="onednn", help="second dialect (default onednn)")
    e.add_argument("--input", type=Path, help="the layer's input: .npy/.pt/.safetensors, float (quantized by each "
                   "dialect) or uint8 integers; default: seeded random integers")
    e.add_argument("--limit", type=int, default=20, help="rows of differences to print per layer")
    _add_layer_args(e)
    c = sub.add_parser("certify", help="overflow certificates: worst-case accumulators against int32 / int16 pairs")
    c.add_argument("saved", type=Path, help="a model saved by glassquant (model.safetensors)")
    c.add_argument("--layer", action="append", help="only this layer (repeatable)")
    x = sub.add_parser("export", help="export a saved static model to C (integer-only), ONNX or TFLite")
    x.add_argument("format", choices=["c", "onnx", "tflite"])
    x.add_argument("saved", type=Path, help="a model saved by glassquant (model.safetensors)")
    x.add_argument("--out", type=Path, required=True, help="output directory")
    x.add_argument("--name", default="model", help="base name of the written files (a C identifier for c)")
    x.add_argument("--form", default="qdq", choices=["qdq", "qoperator"], help="ONNX form (default qdq)")
    b = sub.add_parser("bench", help="which layers of a model take a slow path, and what to change "
                       "(the timing suite is `make bench`)")
    b.add_argument("--explain", metavar="MODEL", required=True, help="a model.safetensors saved by glassquant, "
                   "or a model spec as in `glassquant quantize` (directory or package.module:factory)")
    b.add_argument("--preset", default="w8a8-dynamic", help="preset to quantize a float MODEL with")
    b.add_argument("--calibration", type=Path, help="calibration data (static presets); its first batch is "
                   "the example input that gives each layer's rows")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--rows", type=int, help="rows M per call to judge layers at without an example input (default 1)")
    al = sub.add_parser("allocate", help="per-layer weight bit widths (2-8) by rate-distortion: save the mixed model, "
                        "a Markdown table and the Pareto plot")
    al.add_argument("model", help="a local Hugging Face / sentence-transformers directory, or package.module:factory "
                    "(e.g. glassquant.demo.digits:digits_mlp)")
    goal = al.add_mutually_exclusive_group(required=True)
    goal.add_argument("--budget-bytes", type=int, help="most weight bytes (packed codes + scales + zero points)")
    goal.add_argument("--max-drop", type=float, help="largest drop of the metric below the float model")
    al.add_argument("--calibration", type=Path, help="text (one sentence per line) or .npy/.pt/.safetensors inputs "
                    "(optional for the digits demo)")
    al.add_argument("--batch-size", type=int, default=32)
    al.add_argument("--bits", default="2,3,4,5,6,7,8", help="candidate bit widths, comma-separated")
    al.add_argument("--pareto-points", type=int, default=12, help="Lagrangian solutions to run for the curve")
    al.add_argument("--distortion", default="auto", choices=["auto", "output", "model", "layer"])
    al.add_argument("--max-rows", type=int, default=1024, help="calibration rows per layer for its output error")
    al.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    console = Console()
    if args.command == "demo":
        from .demo import tour

        result = tour.run(console, engine=args.engine)
        return 1 if result.get("mismatches", 0) else 0
    from . import cli_tools, workflow

    try:
        if args.command == "allocate":
            from .analysis.allocate import allocate_command

            return int(allocate_command(args, console))
        if args.command == "bench":
            from .analysis.slowpath import bench_explain_command

            return int(bench_explain_command(args, console))
        if args.command in ("verify", "explain", "certify", "export"):
            return int(getattr(cli_tools, f"{args.command}_command")(args, console))
        if args.command == "quantize":
            workflow.quantize_command(args, console, report=not args.no_report)
        else:
            workflow.report_command(args, console)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as e:
        from rich.markup import escape

        console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
