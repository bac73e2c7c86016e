"""Benchmark: all-MiniLM-L6-v2 sentence embeddings, fp32 vs glassquant presets vs PyTorch's
quantize_dynamic, batch of 32 sentences, interleaved in one run; accuracy beside speed.

Writes benchmarks/results/minilm-<machine>-<date>.json and prints a Markdown table.
Usage: python benchmarks/minilm.py [--reps N] [--threads T]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import glassquant as gq
from glassquant.models import minilm

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
SENTENCES = (ROOT / "tests/models/data/sentences.txt").read_text().splitlines()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = minilm.load()
    batch = SENTENCES[:32]
    features = model.tokenize(batch)
    variants: dict[str, nn.Module] = {"fp32": model}
    variants["glassquant w8a8-dynamic (per token)"] = gq.quantize(copy.deepcopy(model), "w8a8-dynamic")
    variants["glassquant w8a8-dynamic-per-tensor"] = gq.quantize(copy.deepcopy(model), "w8a8-dynamic-per-tensor")
    calibration_lines = (ROOT / "tests/models/data/calibration.txt").read_text().splitlines()
    calibration = [(model.tokenize(calibration_lines[i:i + 16]),) for i in range(0, len(calibration_lines), 16)]
    variants["glassquant w8a8-static (SmoothQuant)"] = gq.quantize(copy.deepcopy(model), "w8a8-static",
                                                                   calibration, progress=False)
    variants["glassquant w8-weight-only"] = gq.quantize(copy.deepcopy(model), "w8-weight-only")
    variants["glassquant w4g128-weight-only (GPTQ)"] = gq.quantize(copy.deepcopy(model), "w4g128-weight-only",
                                                                   calibration, progress=False)
    try:
        variants["PyTorch quantize_dynamic (x86)"] = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without torch.ao
        pass
    ref = minilm.encode(model, SENTENCES)
    samples: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for m in variants.values():
            m(dict(features))  # warm up
        for _ in range(args.reps):  # interleaved: drift hits every variant alike
            for name, m in variants.items():
                t0 = time.perf_counter()
                m(dict(features))
                samples[name].append(time.perf_counter() - t0)
    base = statistics.median(samples["fp32"])
    rows = []
    for name, m in variants.items():
        t = statistics.median(samples[name])
        a = minilm.agreement(ref, minilm.encode(m, SENTENCES))
        rows.append({"variant": name, "median_ms": round(t * 1e3, 1), "speedup_vs_fp32": round(base / t, 2),
                     "mean_cosine": round(a.mean_cosine, 5), "min_cosine": round(a.min_cosine, 4),
                     "top1_agreement": round(a.top1_agreement, 3)})
    meta = {"date": dt.date.today().isoformat(), "machine": platform.node(), "cpu": cpu_model(),
            "threads": args.threads, "torch": torch.__version__, "reps": args.reps, "batch": 32,
            "sentences_for_accuracy": len(SENTENCES)}
    out = ROOT / "benchmarks" / "results" / f"minilm-{platform.node() or 'machine'}-{meta['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"{meta['cpu']}, {args.threads} threads, torch {meta['torch']}, {meta['date']}; batch of 32 sentences; "
          f"accuracy over {len(SENTENCES)} sentences (calibration on 64 others)\n")
    print("| variant | median ms | × fp32 | mean cos | min cos | top-1 |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['median_ms']} | {r['speedup_vs_fp32']} | {r['mean_cosine']} | "
              f"{r['min_cosine']} | {r['top1_agreement']} |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
