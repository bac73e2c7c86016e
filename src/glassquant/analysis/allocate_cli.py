"""``glassquant allocate``: per-layer bit widths for a model, saved, with a Markdown table and a Pareto plot;
and the seed post's price tags redrawn as a distortion-levels curve (for the demo).

The command's task metric: for ``glassquant.demo.digits:digits_mlp`` without ``--calibration``, the test
accuracy of the bundled digits (calibration: the first 512 training images); otherwise the mean cosine
similarity between the quantized and the float model's output rows on the calibration data (sentence
embeddings for a sentence-transformers model), so ``--max-drop 0.005`` keeps it >= 0.995.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .allocate import DISTORTIONS, Allocation, Candidate, Metric, allocate, apply_allocation, candidate_space
from .allocate import output_tensor as out
from .report import default_run

#: Uniform settings every run is compared with (a group that does not fit a layer falls back to per channel).
UNIFORM = (*(Candidate(b, "per_channel") for b in (8, 4, 3, 2)), *(Candidate(b, "per_group", 128) for b in (4, 3, 2)))


def allocation_markdown(a: Allocation, title: str = "glassquant bit allocation", metric_name: str = "metric") -> str:
    """The per-layer table, the totals and the measured curves, as Markdown."""
    fm = "–" if a.float_metric is None else f"{a.float_metric:.4f}"
    mm = "–" if a.metric is None else f"{a.metric:.4f}"
    lines = [f"# {title}", "",
             f"Counted bytes: the packed codes, float32 scales and packed zero points of the {len(a.choices)} "
             f"allocated Linear weights. Biases and every other tensor ({a.other_bytes:,} bytes) are unchanged "
             "and not counted.", "",
             f"- weight bytes: **{a.weight_bytes:,}** of {a.float_weight_bytes:,} float ({100 * a.ratio:.1f} %)",
             f"- {metric_name}: **{mm}** (float model {fm})",
             f"- lambda: {a.lam:.4g} (distortion per byte; distortion = {a.distortion} SSE)", "",
             "| layer | shape (N, K) | bits | granularity | clip | bytes | bits/weight | distortion |",
             "|---|---|---|---|---|---|---|---|"]
    for n, c in a.choices.items():
        out_f, in_f = a.shapes[n]
        g = c.granularity if c.granularity != "per_group" else f"group {c.group_size}"
        lines.append(f"| {n} | ({out_f}, {in_f}) | {c.bits} | {g} | {c.clip} | {a.layer_bytes[n]:,} | "
                     f"{8 * a.layer_bytes[n] / (out_f * in_f):.3f} | {a.layer_distortion[n]:.4g} |")
    for heading, points in (("Pareto curve (Lagrangian sweep, every model run)", a.pareto),
                            ("Uniform settings", a.uniform)):
        if points:
            lines += ["", f"## {heading}", "", f"| model | weight bytes | % of float | {metric_name} |",
                      "|---|---|---|---|"]
            lines += [f"| {p.label} | {p.weight_bytes:,} | {100 * p.weight_bytes / a.float_weight_bytes:.1f} | "
                      f"{'–' if p.metric is None else f'{p.metric:.4f}'} |" for p in points]
    return "\n".join(lines) + "\n"


def plot_pareto(a: Allocation, path: str | Path, metric_name: str = "metric") -> Path:
    """Model weight bytes against the measured metric: the Lagrangian sweep, the uniform settings (8- and
    4-bit labelled in bold), the chosen allocation (star) and the float model (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = sorted((p.weight_bytes, p.metric) for p in a.pareto if p.metric is not None)
    if pts:
        ax.plot([b for b, _ in pts], [m for _, m in pts], "o-", color="tab:blue", label="Lagrangian allocation")
    for i, p in enumerate(a.uniform):
        if p.metric is None:
            continue
        bold = p.label.startswith(("uniform 8b", "uniform 4b"))
        ax.plot(p.weight_bytes, p.metric, "s", color="tab:red" if bold else "tab:orange", ms=8 if bold else 6)
        ax.annotate(p.label.removeprefix("uniform "), (p.weight_bytes, p.metric), textcoords="offset points",
                    xytext=(4, -12 - 9 * (i % 3)), fontsize=8, fontweight="bold" if bold else "normal")
    if a.metric is not None:
        ax.plot(a.weight_bytes, a.metric, "*", color="black", ms=14, label="chosen")
    if a.float_metric is not None:
        ax.axhline(a.float_metric, ls="--", color="gray", label="float")
    ax.set_xscale("log")
    ax.set_xlabel("weight bytes (codes + scales + zero points)")
    ax.set_ylabel(metric_name)
    ax.set_title("size vs measured metric")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# ---- the seed post's price tags as a rate-distortion curve -----------------------------------------------

#: Tag grids (dollars) of the price-tag curve: the post's 0.20, 1 and 10 and others between and around.
PRICETAG_GRIDS = tuple(Decimal(g) for g in ("0.01", "0.02", "0.05", "0.1", "0.2", "0.25", "0.5", "1", "2", "2.5",
                                            "5", "10", "20"))


@dataclass(frozen=True)
class PriceTagPoint:
    """One grid: distinct tags (the post's ``|phi(X)|``), squared error ``sum (tag - price)^2``, and, for a
    point on the lower convex hull, the range of ``lam`` for which it minimizes ``distortion + lam * levels``."""

    grid: Decimal
    levels: int
    distortion: Decimal
    lam_range: tuple[Fraction, Fraction | None] | None  # (low, high); high None = up to infinity


def pricetag_distortion_curve(grids: Sequence[Decimal] = PRICETAG_GRIDS) -> tuple[PriceTagPoint, ...]:
    """The post's objective ``L = sum (f(x) - x)^2 + lam |phi(X)|`` over tag grids, solved for every ``lam``.

    Numerics: exact (Decimal / Fraction), floor rounding (a tag never shows more than the price), as
    ``demo.pricetag.distortion_levels``. A grid lies on the hull when some ``lam >= 0`` makes it the
    minimizer (for the same number of tags, the least distortion). Result for the six prices: the hull
    is $20 (1 tag, 312.6683 $^2), $2.50 (3), $2 (4), $0.50 (5 tags, 0.5783) and $0.01 (6 tags, 0); the
    post's own grids lie above it: $1 (5 tags, 2.6483) loses to $0.50 with the same 5 tags, and $10
    (2 tags, 166.6683) is never the best trade for any ``lam``.
    """
    from ..demo.pricetag import PRICES, distortion_levels

    raw = sorted({(lv, d, g) for g in grids for d, lv in [distortion_levels(PRICES, g)]},
                 key=lambda t: (t[0], t[1]))
    best: dict[int, tuple[Decimal, Decimal]] = {}
    for lv, d, g in raw:
        best.setdefault(lv, (d, g))  # fewest-distortion grid per level count
    hull: list[int] = []
    for lv in sorted(best):
        if hull and best[lv][0] >= best[hull[-1]][0]:
            continue  # more tags and no less distortion: never chosen
        while len(hull) >= 2:
            (l0, d0), (l1, d1) = ((h, best[h][0]) for h in hull[-2:])
            if (d1 - d0) * (lv - l0) >= (best[lv][0] - d0) * (l1 - l0):
                hull.pop()
            else:
                break
        hull.append(lv)
    slopes = [Fraction(best[a][0] - best[b][0]) / (b - a) for a, b in itertools.pairwise(hull)]
    ranges = {lv: (slopes[i] if i < len(slopes) else Fraction(0), slopes[i - 1] if i else None)
              for i, lv in enumerate(hull)}
    return tuple(PriceTagPoint(g, lv, d, ranges.get(lv) if best[lv][1] == g else None) for lv, d, g in raw)


def plot_pricetag_curve(path: str | Path, points: Sequence[PriceTagPoint] | None = None) -> Path:
    """Distinct tags against squared error for every grid, the hull a Lagrangian can reach, the post's grids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = tuple(points) if points is not None else pricetag_distortion_curve()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p.levels for p in pts], [float(p.distortion) for p in pts], "o", color="tab:gray", label="tag grid")
    hull = sorted((p.levels, float(p.distortion)) for p in pts if p.lam_range is not None)
    ax.plot([h[0] for h in hull], [h[1] for h in hull], "-", color="tab:blue", label="reachable by lambda")
    for p in pts:  # label the hull and the post's three grids (bold)
        post = p.grid in (Decimal("0.2"), Decimal(1), Decimal(10))
        if post or p.lam_range is not None:
            ax.annotate(f"${p.grid}", (p.levels, float(p.distortion)), textcoords="offset points",
                        xytext=(5, -10 if p.grid == Decimal("0.01") else 4), fontsize=8,
                        fontweight="bold" if post else "normal")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("distinct tags |phi(X)| (memory)")
    ax.set_ylabel("sum (tag - price)^2 (distortion, symlog)")
    ax.set_title("price tags: distortion vs levels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# ---- the command ----------------------------------------------------------------------------------------

def output_agreement(model: nn.Module, batches: Sequence[Any]) -> Metric:
    """Metric: mean cosine similarity of each output row (last axis) with the float model's, on ``batches``."""
    with torch.no_grad():
        reference = [out(default_run(model, b)).double() for b in batches]

    def metric(m: nn.Module) -> float:
        with torch.no_grad():
            cos = [torch.nn.functional.cosine_similarity(out(default_run(m, b)).double().reshape(-1, r.shape[-1]),
                                                         r.reshape(-1, r.shape[-1]), dim=1)  # (rows,)
                   for b, r in zip(batches, reference, strict=True)]
        return float(torch.cat(cos).mean())
    return metric


def _task(args: Any, model: nn.Module, kind: str) -> tuple[list[Any], Metric, str]:
    """Calibration batches, metric and its name for the command (module docstring)."""
    from .. import workflow

    if args.calibration is None:
        if args.model.split(":")[0] != "glassquant.demo.digits":
            raise ValueError("allocate needs --calibration data for this model (only the digits demo has a default)")
        from ..demo import digits

        data = digits.load_digits_split()
        return (list(data.x_train[:512].split(128)),
                lambda m: digits.accuracy(m(data.x_test), data.y_test), "digits test accuracy")
    text = args.calibration.suffix.lower() == ".txt" and kind != "python"
    batches = workflow.load_calibration(args.calibration, model, kind, 1 if text else args.batch_size)
    return batches, output_agreement(model, batches), "mean cosine to float outputs (calibration data)"


def allocate_command(args: Any, console: Any) -> int:
    """Allocate, apply, save ``<out>/model.safetensors`` and write ``allocation.md``, ``allocation.json`` and
    ``pareto.png``. ``args``: model, budget_bytes, max_drop, calibration, out, batch_size, bits, pareto_points,
    distortion, max_rows (docs/allocation.md, "Command")."""
    from .. import workflow
    from ..export.format import save

    if (args.budget_bytes is None) == (args.max_drop is None):
        raise ValueError("give exactly one of --budget-bytes or --max-drop")
    if args.distortion not in ("auto", *DISTORTIONS):
        raise ValueError(f"--distortion must be auto or one of {DISTORTIONS}, got {args.distortion!r}")
    model, kind = workflow.load_model(args.model)
    batches, metric, metric_name = _task(args, model, kind)
    bits = tuple(int(b) for b in str(args.bits).split(","))
    a = allocate(model, batches, metric, args.budget_bytes, args.max_drop, candidates=candidate_space(bits),
                 max_rows=args.max_rows, distortion=args.distortion, pareto_points=args.pareto_points,
                 uniform=UNIFORM, progress=lambda line: console.print(f"  measured {line}"))
    apply_allocation(model, a)
    args.out.mkdir(parents=True, exist_ok=True)
    save(model, args.out / "model.safetensors")
    (args.out / "allocation.md").write_text(allocation_markdown(a, f"glassquant allocate: {args.model}", metric_name))
    (args.out / "allocation.json").write_text(json.dumps(
        {"choices": {n: asdict(c) for n, c in a.choices.items()}, "weight_bytes": a.weight_bytes,
         "float_weight_bytes": a.float_weight_bytes, "metric": a.metric, "float_metric": a.float_metric}, indent=1))
    plot_pareto(a, args.out / "pareto.png", metric_name)
    console.print(f"{len(a.choices)} layers: {a.weight_bytes:,} weight bytes ({100 * a.ratio:.1f} % of float), "
                  f"{metric_name} {a.metric:.4f} (float {a.float_metric:.4f}); wrote {args.out}/model.safetensors, "
                  "allocation.md, allocation.json, pareto.png")
    return 0
