"""Which layer hurts: per-layer error tables, one-layer-at-a-time sensitivity, plots.

``layer_report`` runs the float model and the quantized model on the same inputs and, for
every glassquant layer, compares its output with the float layer of the same name:
SQNR (dB) end to end (errors of earlier layers included) and in isolation (the quantized
layer fed the float model's input), the largest absolute error, the output grid's scale
and zero point, the range the float outputs span against the range the grid represents,
and the share of float outputs the grid clips.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.base import QuantModule


def sqnr_db(reference: Tensor, candidate: Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum(ref^2) / sum((ref - q)^2))`` in dB.

    Numerics: float64 sums; ``inf`` when the two are identical; ``-inf`` for a zero reference
    with nonzero error.
    """
    r = reference.detach().to(torch.float64)
    e = (r - candidate.detach().to(torch.float64)).pow(2).sum()
    s = r.pow(2).sum()
    if float(e) == 0.0:
        return math.inf
    if float(s) == 0.0:
        return -math.inf
    return float(10 * torch.log10(s / e))


@dataclass(frozen=True)
class LayerReport:
    """One layer's numbers (``None`` where a number does not apply to the layer kind)."""

    name: str
    kind: str
    sqnr_db: float
    sqnr_isolated_db: float
    max_abs_error: float
    scale: float | None
    zero_point: int | None
    observed_min: float
    observed_max: float
    representable_min: float | None
    representable_max: float | None
    clipped_percent: float | None
    outputs: int


def _output_grid(layer: Any) -> tuple[float, int, float, float] | None:
    """``(scale, zero_point, lo, hi)`` of a static layer's output grid (uint8), else None."""
    if hasattr(layer, "y_scale") and hasattr(layer, "y_zero_point"):
        s, z = float(layer.y_scale), int(layer.y_zero_point)
        lo = 0 if not getattr(layer, "relu", False) else z
        return s, z, (lo - z) * s, (255 - z) * s
    return None


def _capture(model: nn.Module, names: Sequence[str], batches: Iterable[Any], run: Callable[[nn.Module, Any], Any],
             keep_inputs: bool) -> tuple[dict[str, list[Tensor]], dict[str, list[Any]]]:
    outs: dict[str, list[Tensor]] = {n: [] for n in names}
    ins: dict[str, list[Any]] = {n: [] for n in names}
    handles = []
    for n in names:
        mod = model.get_submodule(n)

        def hook(m: nn.Module, a: Any, y: Any, n: str = n) -> None:
            outs[n].append(y.detach().reshape(-1, y.shape[-1]) if y.dim() > 1 else y.detach())
            if keep_inputs:
                ins[n].append(a)
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for b in batches:
                run(model, b)
    finally:
        for h in handles:
            h.remove()
    return outs, ins


def default_run(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on a batch: a tensor, a tuple of positional inputs or a dict of keywords."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def layer_report(float_model: nn.Module, qmodel: nn.Module, batches: Sequence[Any],
                 run: Callable[[nn.Module, Any], Any] = default_run) -> list[LayerReport]:
    """Per-layer error of ``qmodel`` against ``float_model`` on ``batches`` (see module docstring)."""
    names = [n for n, m in qmodel.named_modules() if isinstance(m, QuantModule)]
    if not names:
        raise ValueError("the quantized model has no glassquant layer to report on")
    f_out, f_in = _capture(float_model, names, batches, run, keep_inputs=True)
    q_out, _ = _capture(qmodel, names, batches, run, keep_inputs=False)
    reports = []
    for n in names:
        layer = qmodel.get_submodule(n)
        ref = torch.cat([t.reshape(-1) for t in f_out[n]]).to(torch.float32)
        if getattr(layer, "relu", False):
            ref = ref.clamp_min(0)  # the fused ReLU is part of the quantized layer
        got = torch.cat([t.reshape(-1) for t in q_out[n]]).to(torch.float32)
        with torch.no_grad():
            iso = torch.cat([layer(*a).reshape(-1) for a in f_in[n]]).to(torch.float32)
        grid = _output_grid(layer)
        clipped = None
        if grid is not None:
            clipped = float(((ref < grid[2]) | (ref > grid[3])).double().mean() * 100)
        reports.append(LayerReport(
            name=n, kind=type(layer).__name__, sqnr_db=sqnr_db(ref, got), sqnr_isolated_db=sqnr_db(ref, iso),
            max_abs_error=float((ref - got).abs().max()), scale=None if grid is None else grid[0],
            zero_point=None if grid is None else grid[1], observed_min=float(ref.min()), observed_max=float(ref.max()),
            representable_min=None if grid is None else grid[2], representable_max=None if grid is None else grid[3],
            clipped_percent=clipped, outputs=ref.numel()))
    return reports


def sensitivity(float_model: nn.Module, quantize_one: Callable[[nn.Module, str], nn.Module],
                evaluate: Callable[[nn.Module], float], layers: Sequence[str]) -> list[tuple[str, float]]:
    """Quantize one layer at a time and measure the model-level metric.

    ``quantize_one(model_copy, layer_name)`` returns the copy with only that layer quantized
    (e.g. ``glassquant.quantize(m, cfg, cal, include=[name])``); ``evaluate(model)`` returns a
    number (higher is better). Returns ``[(layer, metric)]`` sorted worst first.
    """
    out = []
    for n in layers:
        m = quantize_one(copy.deepcopy(float_model), n)
        out.append((n, float(evaluate(m))))
    return sorted(out, key=lambda t: t[1])


def markdown_table(reports: Sequence[LayerReport]) -> str:
    """The per-layer table as Markdown."""
    def f(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    lines = ["| layer | kind | SQNR dB | isolated dB | max abs err | scale | zp | observed | representable "
             "| clipped % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        rep = "–" if r.representable_min is None else f"[{r.representable_min:.3g}, {r.representable_max:.3g}]"
        lines.append(f"| {r.name} | {r.kind} | {r.sqnr_db:.1f} | {r.sqnr_isolated_db:.1f} | {r.max_abs_error:.3g} | "
                     f"{f(r.scale, '.4g')} | {'–' if r.zero_point is None else r.zero_point} | "
                     f"[{r.observed_min:.3g}, {r.observed_max:.3g}] | {rep} | {f(r.clipped_percent, '.3f')} |")
    return "\n".join(lines)


def plot_sqnr(reports: Sequence[LayerReport], path: str | Path) -> Path:
    """Bar chart of per-layer SQNR (end to end and isolated), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(reports) + 2), 4))
    xs = range(len(reports))
    cap = 80.0
    ax.bar([x - 0.2 for x in xs], [min(r.sqnr_db, cap) for r in reports], width=0.4, label="end to end")
    ax.bar([x + 0.2 for x in xs], [min(r.sqnr_isolated_db, cap) for r in reports], width=0.4, label="isolated")
    ax.set_xticks(list(xs), [r.name for r in reports], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_histogram(values: Tensor, path: str | Path, grid: tuple[float, int, float, float] | None = None,
                   title: str = "") -> Path:
    """Histogram of a layer's float values with the quantization grid's clip range (and, when
    the grid is coarse enough to see, its levels) drawn on it, PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = values.detach().reshape(-1).to(torch.float32)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(v.numpy(), bins=200, color="0.4")
    ax.set_yscale("log")
    if grid is not None:
        scale, _, lo, hi = grid
        ax.axvline(lo, color="red", lw=1, label=f"clip [{lo:.3g}, {hi:.3g}]")
        ax.axvline(hi, color="red", lw=1)
        if (hi - lo) / scale <= 64:
            for q in range(round(lo / scale), round(hi / scale) + 1):
                ax.axvline(q * scale, color="tab:blue", lw=0.3, alpha=0.6)
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(reports: Sequence[LayerReport], outdir: str | Path, *, title: str = "glassquant report",
                 sens: Sequence[tuple[str, float]] | None = None, sens_metric: str = "metric",
                 histograms: dict[str, tuple[Tensor, tuple[float, int, float, float] | None]] | None = None,
                 extra: str = "", certificates: str | None = None) -> Path:
    """Write ``report.md`` (+ ``sqnr.png``, histogram PNGs, ``layers.json``) into ``outdir``;
    ``certificates`` is the overflow-certificate table (``analysis.overflow.certificates_markdown``)."""
    import json

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    plot_sqnr(reports, out / "sqnr.png")
    parts = [f"# {title}", "", extra, "", "## Per-layer error", "", markdown_table(reports), "",
             "![per-layer SQNR](sqnr.png)", ""]
    if sens:
        parts += ["## Sensitivity (one layer quantized at a time)", "", f"| layer | {sens_metric} |", "|---|---|"]
        parts += [f"| {n} | {v:.5f} |" for n, v in sens] + [""]
    if certificates:
        parts += ["## Overflow certificates (every input on the integer grid)", "", certificates, ""]
    for n, (values, grid) in (histograms or {}).items():
        fname = f"hist-{n.replace('.', '_')}.png"
        plot_histogram(values, out / fname, grid, title=n)
        parts += [f"![{n}]({fname})", ""]
    (out / "layers.json").write_text(json.dumps([asdict(r) for r in reports], indent=1, default=str))
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
