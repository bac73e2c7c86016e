"""Benchmark: glassquant's W8A8 Linear layers (whole forward) against PyTorch's fbgemm (x86 engine).

Per shape (M in {1, 8, 64, 512} x (K, N) in {(768, 768), (768, 3072), (4096, 4096),
(4096, 11008)}) and thread count (1 and 2), interleaved in random order within each round:

* ``gq static``: ``QuantLinear(engine="x86")`` float -> float (quantize, integer layer, dequantize)
  vs ``fbgemm static``: ``quantize_per_tensor`` + ``torch.ao`` quantized Linear + ``dequantize``;
* ``gq static int``: ``forward_int`` uint8 -> uint8 vs ``fbgemm static int``: the quantized Linear alone;
* ``gq dynamic``: ``DynamicQuantLinear(engine="x86")`` (per-tensor uint8, reduce_range) and
  ``gq per-token``: ``DynamicQuantLinear(engine="torchao")`` vs ``fbgemm dynamic``
  (``torch.ao`` dynamic quantized Linear);
* ``fp32``: ``nn.Linear``; ``_int_mm``: ``torch._int_mm`` on int8 (M, K) x (K, N) alone.

Each glassquant layer is first checked against the same torch.ao module (equal integers /
floats). Times are medians (and minima) of all timed calls; ratios ``x fbgemm`` compare
medians measured in the same run. M = 512 rows also report int8 Gop/s as a share of the
machine's peak (VPDPBUSD throughput measured here, and the nominal figure given by
``--nominal-peak``). ``--cold`` adds M = 1 with the weights evicted from every cache before each
call (a read of twice the last-level cache), against weight bytes / measured read bandwidth.

Writes benchmarks/results/kernels-<machine>-<date>.json and prints Markdown tables. Numbers on
a shared machine are noisy: compare ratios from one run, not absolute times across runs.
Usage: python benchmarks/linear_kernels.py [--threads 1 2] [--rounds 5] [--quick] [--cold]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from glassquant.config import WEIGHT_PER_CHANNEL
from glassquant.interop import torch_ao
from glassquant.kernels import vnni
from glassquant.nn import DynamicQuantLinear, QuantLinear

warnings.filterwarnings("ignore", message=".*deprecated.*")
M_VALUES = (1, 8, 64, 512)
KN_VALUES = ((768, 768), (768, 3072), (4096, 4096), (4096, 11008))
BASELINE = {"gq static": "fbgemm static", "gq static int": "fbgemm static int", "gq dynamic": "fbgemm dynamic",
            "gq per-token": "fbgemm dynamic", "_int_mm": "fbgemm dynamic", "fp32": "fbgemm dynamic"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def llc_bytes() -> int:
    """The last-level cache size from sysfs (256 MiB when unknown)."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]]
    except (OSError, ValueError, KeyError):
        return 256 << 20


def read_bandwidth(buf: torch.Tensor, tries: int = 5) -> float:
    """Bytes/s of one streaming read of ``buf`` (best of ``tries``)."""
    best = 0.0
    for _ in range(tries):
        t = time.perf_counter()
        buf.view(torch.int64).sum()
        best = max(best, buf.numel() / (time.perf_counter() - t))
    return best


def time_variants(fns: dict[str, Callable[[], object]], rounds: int, calls: int,
                  before: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """Wall seconds of every timed call: each round runs the variants in a new random order, each
    variant one untimed warm-up call then ``calls`` timed calls (``before`` runs untimed before each)."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(fns)
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            if before is None:
                fn()
            for _ in range(calls):
                if before is not None:
                    before()
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    return samples


def build(m: int, k: int, n: int, g: torch.Generator) -> dict[str, Callable[[], object]]:
    """The variants for one shape, each checked against torch.ao first."""
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.normal_(0, k**-0.5, generator=g)
    x = torch.randn(m, k, generator=g)
    y = lin(x).detach()
    x_scale, y_scale = float(x.abs().max()) / 127, float(y.abs().max()) / 127
    static = QuantLinear.from_float(lin, x_scale, 128, y_scale, 128, engine="x86")
    dynamic = DynamicQuantLinear.from_float(lin, engine="x86")
    token = DynamicQuantLinear.from_float(lin, weight_scheme=WEIGHT_PER_CHANNEL, engine="torchao")
    x_q = static.quantize_input(x)
    x_s8 = (x_q.to(torch.int16) - 128).to(torch.int8)
    w_t = static.w_q.t()  # (K, N) view, no copy
    fns: dict[str, Callable[[], object]] = {
        "gq static": lambda: static(x), "gq static int": lambda: static.forward_int(x_q),
        "gq dynamic": lambda: dynamic(x), "gq per-token": lambda: token(x),
        "fp32": lambda: lin(x), "_int_mm": lambda: torch._int_mm(x_s8, w_t),
    }
    ok, _ = torch_ao.available()
    if ok:
        ao_static, ao_dynamic = static.to_torch_ao(), dynamic.to_torch_ao()
        xs, xz = static.x_scale, static.x_zero_point
        x_qt = torch._make_per_tensor_quantized_tensor(x_q, xs, xz)
        fns["fbgemm static"] = lambda: ao_static(torch.quantize_per_tensor(x, xs, xz, torch.quint8)).dequantize()
        fns["fbgemm static int"] = lambda: ao_static(x_qt)
        fns["fbgemm dynamic"] = lambda: ao_dynamic(x)
        assert torch.equal(ao_static(x_qt).int_repr(), static.forward_int(x_q))  # same integers
        assert torch.equal(ao_dynamic(x), dynamic(x))  # same floats
    assert torch.equal(static(x), static(x, fast=False)) and torch.equal(token(x), token(x, fast=False))
    return fns


def summarize(samples: dict[str, list[float]], m: int, k: int, n: int, threads: int, peak: float,
              nominal: float, cold: bool = False) -> list[dict[str, object]]:
    med = {name: statistics.median(v) for name, v in samples.items()}
    rows = []
    for name, v in samples.items():
        base = BASELINE.get(name)
        row: dict[str, object] = {
            "M": m, "K": k, "N": n, "threads": threads, "variant": name, "cold": cold,
            "median_us": round(med[name] * 1e6, 2), "min_us": round(min(v) * 1e6, 2), "calls": len(v),
            "gops": round(2 * m * k * n / med[name] / 1e9, 1),
        }
        if base in med:
            row["vs"] = base
            row["x_baseline"] = round(med[base] / med[name], 3)  # > 1: faster than the baseline
            row["x_baseline_min"] = round(min(samples[base]) / min(v), 3)
        if m >= 512:
            row["pct_measured_peak"] = round(100 * 2 * m * k * n / med[name] / peak, 1)
            row["pct_nominal_peak"] = round(100 * 2 * m * k * n / med[name] / nominal, 1)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="M in {1, 512} and the two smaller (K, N) only")
    ap.add_argument("--cold", action="store_true", help="also M = 1 with cold weights")
    ap.add_argument("--nominal-peak", type=float, default=1.05e12,
                    help="nominal int8 ops/s per thread (the issue's 2.1 Tops/s on 2 cores)")
    args = ap.parse_args()
    if not vnni.available():
        print("note: the AVX512-VNNI kernels are not available here; glassquant runs its other paths")
    shapes = [(m, k, n) for k, n in KN_VALUES for m in M_VALUES]
    if args.quick:
        shapes = [(m, k, n) for m, k, n in shapes if m in (1, 512) and k == 768]
    g = torch.Generator().manual_seed(0)
    rows: list[dict[str, object]] = []
    peaks: dict[int, float] = {}
    bandwidth: dict[int, float] = {}
    flush = torch.ones(2 * llc_bytes(), dtype=torch.uint8) if args.cold else None
    with torch.no_grad(), torch_ao.engine("x86"):
        for threads in args.threads:
            torch.set_num_threads(threads)
            peaks[threads] = vnni.peak_ops_per_second(threads) if vnni.available() else float("nan")
            for m, k, n in shapes:
                fns = build(m, k, n, g)
                calls = max(3, min(40, int(4e8 / (2 * m * k * n))))
                samples = time_variants(fns, args.rounds, calls)
                rows += summarize(samples, m, k, n, threads, peaks[threads], args.nominal_peak * threads)
                print(f"  {threads} thread(s) M={m} K={k} N={n}: " + ", ".join(
                    f"{r['variant']} {r['median_us']}us" for r in rows[-len(fns):]), flush=True)
            if flush is not None:
                bandwidth[threads] = read_bandwidth(flush)
                evict = lambda: flush.view(torch.int64).sum()  # noqa: E731
                names = ("gq static", "fbgemm static", "gq dynamic", "gq per-token", "fbgemm dynamic")
                # the fixed cost of a call after the eviction (Python, torch, code: all cold), per variant
                tiny = build(1, 16, 16, g)
                fixed = {name: statistics.median(v) for name, v in
                         time_variants({nm: tiny[nm] for nm in names if nm in tiny}, args.rounds, 2, evict).items()}
                for k, n in KN_VALUES:
                    fns = build(1, k, n, g)
                    samples = time_variants({name: fns[name] for name in names if name in fns}, args.rounds, 2, evict)
                    for r in summarize(samples, 1, k, n, threads, peaks[threads], args.nominal_peak, cold=True):
                        bound = k * n / bandwidth[threads]
                        r["cold_fixed_us"] = round(fixed[str(r["variant"])] * 1e6, 1)
                        r["x_bandwidth_bound"] = round(float(r["median_us"]) * 1e-6 / bound, 2)
                        r["x_bandwidth_bound_less_fixed"] = round(
                            (float(r["median_us"]) * 1e-6 - fixed[str(r["variant"])]) / bound, 2)
                        rows.append(r)
    meta = {"date": dt.date.today().isoformat(), "machine": platform.node(), "cpu": cpu_model(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "vnni_kernels": vnni.available(), "rounds": args.rounds,
            "measured_peak_ops": {str(t): p for t, p in peaks.items()},
            "nominal_peak_ops_per_thread": args.nominal_peak,
            "read_bandwidth_bytes_per_s": {str(t): b for t, b in bandwidth.items()}}
    out = Path(__file__).parent / "results" / f"kernels-{platform.node() or 'machine'}-{meta['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print_tables(meta, rows)
    print(f"\nwritten to {out}")


def print_tables(meta: dict[str, object], rows: list[dict[str, object]]) -> None:
    print(f"\n{meta['cpu']}, torch {meta['torch']} ({meta['cpu_capability']}), {meta['date']}; measured "
          f"VPDPBUSD peak (Gop/s) by threads: "
          + ", ".join(f"{t}: {p / 1e9:.0f}" for t, p in meta["measured_peak_ops"].items()))  # type: ignore[union-attr]
    print("\n| threads | M | K | N | variant | median µs | min µs | × baseline (median) | × baseline (min) "
          "| baseline | GOP/s | % peak (measured / nominal) |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["cold"]:
            continue
        pct = f"{r['pct_measured_peak']} / {r['pct_nominal_peak']}" if "pct_measured_peak" in r else ""
        print(f"| {r['threads']} | {r['M']} | {r['K']} | {r['N']} | {r['variant']} | {r['median_us']} "
              f"| {r['min_us']} | {r.get('x_baseline', '')} | {r.get('x_baseline_min', '')} | {r.get('vs', '')} "
              f"| {r['gops']} | {pct} |")
    cold = [r for r in rows if r["cold"]]
    if cold:
        print("\nM = 1, caches evicted before each call. × bound = time / (N K bytes / read bandwidth); the last "
              "column first subtracts the same variant's cold time on a 16 x 16 layer (Python, torch, code: cold):\n")
        print("| threads | K | N | variant | median µs | × baseline | cold 16x16 µs | × bound | × bound less fixed |\n"
              "|---|---|---|---|---|---|---|---|---|")
        for r in cold:
            print(f"| {r['threads']} | {r['K']} | {r['N']} | {r['variant']} | {r['median_us']} "
                  f"| {r.get('x_baseline', '')} | {r['cold_fixed_us']} | {r['x_bandwidth_bound']} "
                  f"| {r['x_bandwidth_bound_less_fixed']} |")


if __name__ == "__main__":
    main()
