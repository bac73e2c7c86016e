"""What the ``quantize`` and ``report`` commands do: load a model and calibration data,
quantize, save, report. Kept apart from ``cli.py`` so it can be called from Python too."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from .analysis.overflow import certificates_markdown, certify
from .analysis.report import LayerReport, default_run, layer_report, sensitivity, sqnr_db, write_report
from .config import StaticConfig, resolve
from .convert import quantize
from .errors import check_finite


def load_model(spec: str) -> tuple[nn.Module, str]:
    """``(model, kind)`` from a directory or ``package.module:factory``.

    kind is ``"sentence-transformers"`` (a directory with modules.json), ``"transformers"``
    (a directory with config.json) or ``"python"``. Nothing is downloaded.
    """
    p = Path(spec)
    if ":" in spec and not p.exists():
        mod_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot import model factory {spec!r}: {e}") from e
        model = factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"{spec} returned {type(model).__name__}, not an nn.Module")
        return model.eval(), "python"
    if not p.is_dir():
        raise FileNotFoundError(f"model directory {p} does not exist")
    if (p / "modules.json").exists():
        from .models import minilm

        return minilm.load(p), "sentence-transformers"
    if (p / "config.json").exists():
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        return AutoModel.from_pretrained(str(p), local_files_only=True).eval(), "transformers"
    raise ValueError(f"{p} is not a Hugging Face or sentence-transformers model directory "
                     "(no config.json or modules.json)")


def _tensor_file(path: Path) -> Tensor:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path, allow_pickle=False))
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if len(tensors) != 1:
            raise ValueError(f"{path}: expected one tensor, found {sorted(tensors)}")
        return next(iter(tensors.values()))
    if suffix == ".pt":
        t = torch.load(path, weights_only=True, map_location="cpu")  # restricted loader: tensors only
        if not isinstance(t, Tensor):
            raise ValueError(f"{path}: expected a tensor, found {type(t).__name__}")
        return t
    raise ValueError(f"{path}: calibration data must be .txt, .npy, .pt or .safetensors")


def load_calibration(path: Path, model: nn.Module, kind: str, batch_size: int = 32) -> list[Any]:
    """Calibration batches for ``model``: sentences (one per line) or a tensor of inputs."""
    return _load_calibration(path, model, kind, batch_size)


def report_batches(path: Path | None, model: nn.Module, kind: str, batches: list[Any], limit: int = 32) -> list[Any]:
    """Batches to report on. Text is fed one sentence at a time, so no padding token enters
    the per-layer comparison (padded positions are masked by the model but not by SQNR)."""
    if path is not None and path.suffix.lower() == ".txt" and kind != "python":
        return _load_calibration(path, model, kind, 1)[:limit]
    return batches[: max(1, limit // 4)]


def _load_calibration(path: Path, model: nn.Module, kind: str, batch_size: int = 32) -> list[Any]:
    """See :func:`load_calibration`."""
    if not path.exists():
        raise FileNotFoundError(f"calibration file {path} does not exist")
    if path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if not lines:
            raise ValueError(f"{path}: no sentences (calibration data is empty)")
        chunks = [lines[i:i + batch_size] for i in range(0, len(lines), batch_size)]
        if kind == "sentence-transformers":
            return [(model.tokenize(c),) for c in chunks]  # type: ignore[operator]
        if kind == "transformers":
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model.name_or_path, local_files_only=True)
            return [dict(tok(c, padding=True, truncation=True, return_tensors="pt")) for c in chunks]
        raise ValueError(f"{path}: text calibration needs a Hugging Face model, not a Python model")
    x = _tensor_file(path)
    if x.numel() == 0:
        raise ValueError(f"{path}: calibration data is empty")
    if x.is_floating_point():
        x = x.to(torch.float32)
        check_finite(x, f"calibration data {path.name}")
    batches = list(x.split(batch_size))
    try:
        with torch.no_grad():
            model(batches[0])
    except (RuntimeError, ValueError, IndexError) as e:
        raise ValueError(f"calibration data of shape {tuple(x.shape)} does not fit the model: {e}") from e
    return batches


def _run_quantize(args: Any, console: Console) -> tuple[nn.Module, nn.Module, list[Any] | None, str]:
    model, kind = load_model(args.model)
    cfg = resolve(args.preset)
    batches = load_calibration(args.calibration, model, kind, args.batch_size) if args.calibration else None
    if isinstance(cfg, StaticConfig) and batches is None:
        raise ValueError(f"preset {args.preset!r} is static: give --calibration data")
    float_model = copy.deepcopy(model)
    qmodel = quantize(model, cfg, batches, include=args.include, exclude=args.exclude, progress=True)
    return float_model, qmodel, batches, kind


def _summary(console: Console, qmodel: nn.Module, reports: list[LayerReport] | None) -> None:
    res: Any = qmodel.glassquant_conversion
    certs = certify(qmodel)
    unsafe = [c for c in certs if c.verdict != "safe"]
    console.print(f"overflow certificates: {len(certs) - len(unsafe)} of {len(certs)} integer layers safe for "
                  f"every input" + "".join(f"\n  {c.layer}: {c.verdict} ({c.advice})" for c in unsafe[:8]))
    console.print(f"converted {len(res.converted)} layers, fused {len(res.fused_relu)} ReLUs, "
                  f"folded {len(res.folded_bn)} BatchNorms")
    if res.skipped:
        t = Table(title="left in float")
        t.add_column("layer")
        t.add_column("reason")
        for n, why in res.skipped.items():
            t.add_row(n, why)
        console.print(t)
    if reports:
        worst = sorted(reports, key=lambda r: r.sqnr_db)[:5]
        t = Table(title="lowest SQNR layers")
        for c in ("layer", "SQNR dB", "isolated dB", "clipped %"):
            t.add_column(c)
        for r in worst:
            t.add_row(r.name, f"{r.sqnr_db:.1f}", f"{r.sqnr_isolated_db:.1f}",
                      "–" if r.clipped_percent is None else f"{r.clipped_percent:.3f}")
        console.print(t)


def model_output(model: nn.Module, batches: list[Any]) -> Tensor:
    """The model's outputs on ``batches``, flattened and concatenated (a sentence-transformers
    output dict contributes its ``sentence_embedding``)."""
    outs = []
    with torch.no_grad():
        for b in batches:
            y = default_run(model, b)
            if isinstance(y, dict):
                y = y.get("sentence_embedding", y.get("last_hidden_state"))
            elif isinstance(y, (tuple, list)):
                y = y[0]
            if hasattr(y, "last_hidden_state"):
                y = y.last_hidden_state
            outs.append(torch.as_tensor(y).reshape(-1).to(torch.float32))
    return torch.cat(outs)


def worst_layer_histograms(float_model: nn.Module, qmodel: nn.Module, reports: list[LayerReport],
                           batches: list[Any], count: int = 3) -> dict[str, tuple[Tensor, Any]]:
    """Float outputs of the ``count`` lowest-SQNR layers, with each layer's output grid (static
    layers) to draw on their histogram."""
    from .analysis.report import _capture, _output_grid

    worst = [r.name for r in sorted(reports, key=lambda r: r.sqnr_db)[:count]]
    outs, _ = _capture(float_model, worst, batches, default_run, keep_inputs=False)
    return {n: (torch.cat([t.reshape(-1) for t in outs[n]]), _output_grid(qmodel.get_submodule(n))) for n in worst}


def quantize_command(args: Any, console: Console, report: bool = True) -> Path:
    """Quantize, save ``<out>/model.safetensors`` and (with calibration data) ``<out>/report.md``."""
    from .export.format import save

    float_model, qmodel, batches, kind = _run_quantize(args, console)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "model.safetensors"
    save(qmodel, path)
    reports = None
    if report and batches:
        rb = report_batches(args.calibration, float_model, kind, batches)
        reports = layer_report(float_model, qmodel, rb)
        write_report(reports, args.out, title=f"glassquant {args.preset}: {args.model}",
                     histograms=worst_layer_histograms(float_model, qmodel, reports, rb),
                     certificates=certificates_markdown(certify(qmodel)))
    _summary(console, qmodel, reports)
    console.print(f"saved {path}" + (f" and {args.out / 'report.md'}" if reports else ""))
    return path


def report_command(args: Any, console: Console) -> Path:
    """Write the per-layer report (and, optionally, one-layer-at-a-time sensitivity)."""
    float_model, qmodel, batches, kind = _run_quantize(args, console)
    if not batches:
        raise ValueError("a report needs --calibration data to run the models on")
    rb = report_batches(args.calibration, float_model, kind, batches)
    reports = layer_report(float_model, qmodel, rb)
    sens = None
    if args.sensitivity:
        reference = model_output(float_model, batches[:4])
        cfg = resolve(args.preset)
        sens = sensitivity(float_model, lambda m, n: quantize(m, cfg, batches, include=[n], progress=False),
                           lambda m: sqnr_db(reference, model_output(m, batches[:4])), [r.name for r in reports])
    path = write_report(reports, args.out, title=f"glassquant {args.preset}: {args.model}", sens=sens,
                        sens_metric="output SQNR dB",
                        histograms=worst_layer_histograms(float_model, qmodel, reports, rb),
                        certificates=certificates_markdown(certify(qmodel)))
    _summary(console, qmodel, reports)
    console.print(f"wrote {path}")
    return path
