"""Benchmark: glassquant's static int8 Linear (fast path and reference) beside fp32 and
PyTorch's quantized Linear (x86 engine), interleaved in one run.

Writes benchmarks/results/<machine>-<date>.json and prints a Markdown table. Speed is
claimed here only, never in unit tests. Usage: python benchmarks/linear.py [--reps N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

from glassquant.interop import torch_ao
from glassquant.nn import QuantLinear

warnings.filterwarnings("ignore", message=".*deprecated.*")
SHAPES = [(1, 768, 768), (8, 768, 768), (64, 768, 3072), (512, 768, 768)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_seconds(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    for m, k, n in SHAPES:
        lin = torch.nn.Linear(k, n)
        x = torch.randn(m, k, generator=g)
        layer = QuantLinear.from_float(lin, 0.02, 128, 0.05, 128, engine="x86")
        x_q = layer.quantize_input(x)
        fns = {
            "fp32 nn.Linear": lambda lin=lin, x=x: lin(x),
            "glassquant forward_int (fast)": lambda layer=layer, x_q=x_q: layer.forward_int(x_q, fast=True),
            "glassquant forward_int (reference)": lambda layer=layer, x_q=x_q: layer.forward_int(x_q, fast=False),
        }
        ok, _ = torch_ao.available()
        if ok:
            ao = layer.to_torch_ao()
            xq_t = torch._make_per_tensor_quantized_tensor(x_q, layer.x_scale, layer.x_zero_point)
            fns["torch.ao quantized Linear (x86)"] = lambda ao=ao, xq_t=xq_t: ao(xq_t)
            assert torch.equal(ao(xq_t).int_repr(), layer.forward_int(x_q))  # same integers
        with torch.no_grad(), torch_ao.engine("x86"):
            times = {name: 0.0 for name in fns}
            samples: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(3):  # interleave rounds so drift hits every variant alike
                for name, fn in fns.items():
                    samples[name].append(median_seconds(fn, args.reps))
            times = {name: statistics.median(v) for name, v in samples.items()}
        base = times["fp32 nn.Linear"]
        for name, t in times.items():
            rows.append({"M": m, "K": k, "N": n, "variant": name, "median_us": round(t * 1e6, 1),
                         "speedup_vs_fp32": round(base / t, 3),
                         "gops": round(2 * m * k * n / t / 1e9, 2)})
    meta = {"date": dt.date.today().isoformat(), "machine": platform.node(), "cpu": cpu_model(),
            "cores": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "reps": args.reps}
    out = Path(__file__).parent / "results" / f"{platform.node() or 'machine'}-{meta['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"{meta['cpu']}, {meta['cores']} thread(s), torch {meta['torch']} ({meta['cpu_capability']}), "
          f"{meta['date']}\n")
    print("| M | K | N | variant | median µs | × fp32 | GOP/s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['M']} | {r['K']} | {r['N']} | {r['variant']} | {r['median_us']} | "
              f"{r['speedup_vs_fp32']} | {r['gops']} |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
