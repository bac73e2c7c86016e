"""The benchmark suite behind ``make bench``: every speed claim of glassquant, measured in one run.

Sections (each interleaves its variants and divides medians from the same rounds; see
``common.py`` for the timing rules):

1. memory bandwidth per thread count (a large copy and a large read), the floor for cold weights;
2. Linear layers (``linear.py``): M in {1, 8, 64, 512} x (K, N) in {(768, 768), (768, 3072),
   (4096, 4096), (4096, 11008)} x 1 and 2 threads, glassquant's layers beside fp32, bf16,
   torch.ao and torchao; M = 1 also with cold weights;
3. MiniLM-L6 end to end (``minilm.py``), batch 1 and 32;
4. the digits MLP and CNN: fp32 vs glassquant static (x86) vs torch.ao eager PTQ (x86), with
   test accuracy;
5. conversion time: ``glassquant.quantize`` wall time per model and preset (torch.ao's beside it);
6. crossovers: for each glassquant Linear path, the largest M*K*N measured slower than fp32 and
   the smallest measured faster (the data behind ``glassquant.analysis.slowpath.TINY_MACS``).

Writes ``benchmarks/results/<machine>-<date>.json`` (every row, with the machine) and ``.md``
(the tables); ``--quick`` (< 60 s: one shape, fewer reps) writes ``...-quick.*``.
Usage: ``python benchmarks/suite.py [--quick] [--out DIR]``. The repetition budgets are set so a full
run should take about 5-8 minutes on 2 cores (estimated from the parts; the quick run takes ~30 s).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common  # benchmarks/ is on sys.path when a script here runs
import linear
import minilm
import torch

import glassquant as gq
from glassquant.kernels import vnni


@dataclass(frozen=True)
class Plan:
    """How much of everything to run: the knobs ``--quick`` turns."""

    quick: bool
    threads: tuple[int, ...]
    linear_budget_s: float  # seconds of calls per variant and shape (adaptive repetitions)
    linear_min_reps: int
    linear_max_reps: int
    model_budget_s: float
    model_min_reps: int
    bandwidth_reps: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, (1,), 0.03, 3, 60, 0.3, 3, 3)
        return cls(False, (1, 2), 0.1, 5, 400, 2.0, 5, 7)


def digits_section(plan: Plan, notes: list[str], log: Callable[[str], None] = print
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The digits MLP and CNN: fp32, glassquant static x86 and torch.ao eager PTQ (x86).
    Returns ``(timing rows, conversion rows)``."""
    from glassquant.demo import digits, digits_cnn
    from glassquant.interop import torch_ao

    data = digits.load_digits_split()
    rows: list[dict[str, Any]] = []
    conversion: list[dict[str, Any]] = []
    nets = {"digits MLP": (digits.digits_mlp(data), lambda x: x), "digits CNN": (digits_cnn.digits_cnn(data),
                                                                              digits_cnn.as_images)}
    ok, why = torch_ao.available()
    if not ok:
        notes.append(f"digits: torch.ao baseline skipped: {why}")
    for net_name, (model, prep) in nets.items():
        calibration = [prep(data.x_train[i:i + 64]) for i in range(0, len(data.x_train), 64)]
        t0 = time.perf_counter()
        variants: dict[str, torch.nn.Module] = {"fp32": model,
                                                "gq static x86": gq.quantize(copy.deepcopy(model), "x86", calibration,
                                                                             progress=False)}
        conversion.append({"section": "conversion", "model": net_name, "tool": "glassquant.quantize", "preset": "x86",
                           "seconds": time.perf_counter() - t0})
        with torch_ao.engine("x86"), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ok:
                t0 = time.perf_counter()
                variants["torch.ao static x86 (eager PTQ)"] = torch_ao.eager_ptq(model, calibration, "x86")
                conversion.append({"section": "conversion", "model": net_name, "tool": "torch.ao eager PTQ",
                                   "preset": "x86 min/max", "seconds": time.perf_counter() - t0})
            x_test = prep(data.x_test)
            acc = {n: digits.accuracy(m(x_test), data.y_test) for n, m in variants.items()}
            for t in plan.threads:
                torch.set_num_threads(t)
                for batch in (1,) if plan.quick else (1, len(data.x_test)):
                    log(f"  {net_name} batch={batch} threads={t}")
                    x = x_test[:batch]
                    timings = common.time_interleaved({n: (lambda m=m, x=x: m(x)) for n, m in variants.items()},
                                                      budget_s=plan.model_budget_s / 4, min_reps=plan.model_min_reps,
                                                      max_reps=2000)
                    base = timings["fp32"].median
                    rows += [{"section": "digits", "model": net_name, "threads": t, "batch": batch, "variant": n,
                              "median_us": tm.median * 1e6, "reps": len(tm.samples), "x_fp32": base / tm.median,
                              "test_accuracy": acc[n]} for n, tm in timings.items()]
    return rows, conversion


def crossovers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per glassquant variant (warm, 1 thread): the largest M*K*N slower than fp32 and the
    smallest faster — where ``slowpath.TINY_MACS`` should sit if the two do not overlap."""
    out = []
    warm = [r for r in rows if r["regime"] == "warm" and r["threads"] == 1 and r["family"] == "glassquant"]
    for name in dict.fromkeys(r["variant"] for r in warm):
        mine = [(r["M"] * r["K"] * r["N"], r["x_fp32"]) for r in warm if r["variant"] == name]
        slower = [macs for macs, x in mine if x < 1]
        faster = [macs for macs, x in mine if x >= 1]
        out.append({"variant": name, "largest_slower_macs": max(slower, default=None),
                    "smallest_faster_macs": min(faster, default=None), "shapes": len(mine),
                    "overlap": bool(slower and faster and min(faster) < max(slower))})
    return out


def linear_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (threads, K, N, M) of the warm Linear runs: glassquant's W8A8 layers against PyTorch's
    (torch.ao x86/fbgemm) in the same rounds, the weight-only int4 layer against fp32, and the static
    layer's share of the measured VNNI peak (the README's table)."""
    warm = [r for r in rows if r["regime"] == "warm"]
    by = {(r["threads"], r["K"], r["N"], r["M"], r["variant"]): r for r in warm}
    out = []
    for t, k, n, m in sorted({(r["threads"], r["K"], r["N"], r["M"]) for r in warm}):
        def us(name: str, key: tuple[int, int, int, int] = (t, k, n, m)) -> float | None:
            r = by.get((*key, name))
            return None if r is None else float(r["median_us"])

        def ratio(base: str, mine: str) -> float | None:
            a, b = us(base), us(mine)
            return None if a is None or b is None else a / b
        static = by.get((t, k, n, m, "gq static x86"))
        out.append({"threads": t, "shape": f"{k}×{n}", "M": m, "fp32_us": us("fp32 nn.Linear"),
                    "static_us": us("gq static x86"),
                    "static_x_ao": ratio("torch.ao static (float in/out)", "gq static x86"),
                    "int_x_ao": ratio("torch.ao static (quint8 in/out)", "gq static x86 forward_int"),
                    "dyn_x_ao": ratio("torch.ao dynamic (x86)", "gq dynamic per-tensor (x86)"),
                    "token_x_ao": ratio("torch.ao dynamic (x86)", "gq dynamic per-token (torchao)"),
                    "static_x_fp32": ratio("fp32 nn.Linear", "gq static x86"),
                    "int4_x_fp32": ratio("fp32 nn.Linear", "gq weight-only int4 g128"),
                    "pct_peak": None if static is None else static.get("pct_measured_peak")})
    return out


SUMMARY_COLUMNS = [("threads", "thr"), ("shape", "K×N"), ("M", "M"), ("fp32_us", "fp32 µs"),
                   ("static_us", "gq static µs"), ("static_x_ao", "static × torch.ao"),
                   ("int_x_ao", "static int-only × torch.ao"), ("dyn_x_ao", "dynamic per-tensor × torch.ao"),
                   ("token_x_ao", "per-token × torch.ao dynamic"), ("static_x_fp32", "static × fp32"),
                   ("int4_x_fp32", "weight-only int4 × fp32"), ("pct_peak", "static % of measured VNNI peak")]

CONVERSION_COLUMNS = [("model", "model"), ("tool", "tool"), ("preset", "preset"), ("seconds", "seconds")]
DIGITS_COLUMNS = [("model", "model"), ("threads", "thr"), ("batch", "batch"), ("variant", "variant"),
                  ("median_us", "median µs"), ("x_fp32", "× fp32"), ("test_accuracy", "test accuracy")]
CROSSOVER_COLUMNS = [("variant", "variant"), ("largest_slower_macs", "largest M·K·N slower than fp32"),
                     ("smallest_faster_macs", "smallest M·K·N faster"), ("overlap", "ranges overlap")]


def report(machine: common.Machine, plan: Plan, sections: dict[str, Any], notes: list[str],
           bandwidth: dict[int, dict[str, float]], seconds: float, peaks: dict[int, float] | None = None) -> str:
    """The Markdown results file."""
    from glassquant.analysis.slowpath import TINY_MACS

    bw = "; ".join(f"{t} thread(s): copy {b['copy_bytes_per_s'] / 1e9:.1f} GB/s (best "
                   f"{b['best_copy_bytes_per_s'] / 1e9:.1f}), float32 sum {b['read_bytes_per_s'] / 1e9:.1f} GB/s"
                   for t, b in bandwidth.items())
    parts = [f"# glassquant benchmarks{' (quick)' if plan.quick else ''}", "",
             common.machine_markdown(machine, {"memory bandwidth": bw, "measured VNNI (vpdpbusd) peak": "; ".join(
                 f"{t} thread(s): {p / 1e12:.2f} Tops/s" for t, p in (peaks or {}).items()) or "not measured",
                                               "suite wall time": f"{seconds:.0f} s",
                                               "timing": "medians of interleaved single calls, adaptive repetitions "
                                                         "(reps in the JSON)"}), "",
             "## Linear layers", "", "### Summary (warm weights; ratios of medians from the same rounds)", "",
             common.markdown_table(linear_summary(sections["linear"]), SUMMARY_COLUMNS), "",
             linear.markdown(sections["linear"]), "",
             "### Crossovers (warm, 1 thread)", "",
             f"slowpath.TINY_MACS now: {TINY_MACS}. A path with overlapping ranges has no single M·K·N threshold "
             "(its overhead scales with M·(K+N), not M·K·N).", "",
             common.markdown_table(sections["crossovers"], CROSSOVER_COLUMNS), ""]
    if sections["minilm"]:
        parts += ["## Models", "", minilm.markdown(sections["minilm"], None if plan.quick else 214), ""]
    parts += ["### Digits MLP and CNN (test set of 450)", "", common.markdown_table(sections["digits"], DIGITS_COLUMNS),
              "", "## Conversion time", "", common.markdown_table(sections["conversion"], CONVERSION_COLUMNS)]
    if notes:
        parts += ["", "## Notes", "", *[f"- {n}" for n in dict.fromkeys(notes)]]
    return "\n".join(parts) + "\n"


def run(plan: Plan, out_dir: Path = common.RESULTS, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Run every section under ``plan``; write and return the JSON and Markdown paths."""
    start = time.perf_counter()
    threads_before = torch.get_num_threads()
    machine = common.machine_info()
    notes: list[str] = []
    bandwidth: dict[int, dict[str, float]] = {}
    peaks: dict[int, float] = {}  # VPDPBUSD throughput measured per thread count (the 100 % of "% measured peak")
    try:
        for t in plan.threads:
            torch.set_num_threads(t)
            log(f"memory bandwidth, {t} thread(s)")
            bandwidth[t] = common.memory_bandwidth(4 * max(machine.l3_bytes, 64 << 20), reps=plan.bandwidth_reps)
            if vnni.available():
                peaks[t] = vnni.peak_ops_per_second(t, tries=10 if plan.quick else 40)
        log("linear layers")
        lin_rows = linear.run_section(machine, quick=plan.quick, threads=plan.threads, budget_s=plan.linear_budget_s,
                                      min_reps=plan.linear_min_reps, max_reps=plan.linear_max_reps,
                                      bandwidth=bandwidth, notes=notes, log=log, peaks=peaks)
        log("MiniLM")
        mini_rows, conversion = minilm.run_section(
            machine, quick=plan.quick, threads=plan.threads, budget_s=plan.model_budget_s,
            min_reps=plan.model_min_reps, max_reps=200, notes=notes, all_presets=not plan.quick, log=log)
        log("digits")
        digit_rows, digit_conversion = digits_section(plan, notes, log)
    finally:
        torch.set_num_threads(threads_before)
    sections = {"bandwidth": bandwidth, "measured_int8_peak_ops": peaks, "linear": lin_rows,
                "crossovers": crossovers(lin_rows), "minilm": mini_rows,
                "digits": digit_rows, "conversion": conversion + digit_conversion}
    seconds = time.perf_counter() - start
    md = report(machine, plan, sections, notes, bandwidth, seconds, peaks)
    return common.write_results(machine, sections, md, quick=plan.quick, out_dir=out_dir,
                                meta={"plan": asdict(plan), "seconds": seconds, "notes": notes})


README_SUMMARY = [c for c in SUMMARY_COLUMNS if c[0] != "int4_x_fp32"]


def readme_markdown(json_path: Path) -> str:
    """The README's benchmark tables from a results JSON: the W8A8 summary, M = 1 cold weights against
    the bandwidth floor, measured weight memory, MiniLM and the digits models (numbers as measured)."""
    doc = json.loads(json_path.read_text())
    sec = doc["sections"]
    lin = sec["linear"]
    cold = {(r["threads"], r["K"], r["N"], r["variant"]): r for r in lin if r["regime"] == "cold"}
    cold_rows = []
    for t, k, n in sorted({(r["threads"], r["K"], r["N"]) for r in lin if r["regime"] == "cold"}):
        def get(v: str, key: str, at: tuple[int, int, int] = (t, k, n)) -> Any:
            r = cold.get((*at, v))
            return None if r is None else r.get(key)
        cold_rows.append({"threads": t, "shape": f"{k}×{n}", "fp32": get("fp32 nn.Linear", "median_us"),
                          "ao": get("torch.ao static (float in/out)", "median_us"),
                          "gq": get("gq static x86", "median_us"), "floor": get("gq static x86", "floor_us"),
                          "x_floor": (get("gq static x86", "median_us") or 0) / (get("gq static x86", "floor_us") or 1),
                          "token_x_floor": (get("gq dynamic per-token (torchao)", "median_us") or 0)
                          / (get("gq dynamic per-token (torchao)", "floor_us") or 1),
                          "int4": get("gq weight-only int4 g128", "median_us"),
                          "int4_x_fp32": get("gq weight-only int4 g128", "x_fp32"),
                          "int8wo_x_fp32": get("gq weight-only int8", "x_fp32"),
                          "torchao_wo_x_fp32": get("torchao int8 weight-only", "x_fp32")})
    cold_cols = [("threads", "thr"), ("shape", "K×N"), ("fp32", "fp32 µs"), ("ao", "torch.ao static µs"),
                 ("gq", "gq static µs"), ("floor", "floor µs"), ("x_floor", "gq static ÷ floor"),
                 ("token_x_floor", "per-token ÷ floor"), ("int4_x_fp32", "gq int4 weight-only × fp32"),
                 ("int8wo_x_fp32", "gq int8 weight-only × fp32"),
                 ("torchao_wo_x_fp32", "torchao int8 weight-only × fp32")]
    warm = [r for r in lin if r["regime"] == "warm" and r["threads"] == 1 and r["M"] == max(x["M"] for x in lin)]
    mem_names = {"gq static x86": "static", "gq dynamic per-token (torchao)": "per-token",
                 "gq weight-only int8": "int8 weight-only", "gq weight-only int4 g128": "int4 g128 weight-only"}
    mem = []
    for k, n in sorted({(r["K"], r["N"]) for r in warm}):
        row: dict[str, Any] = {"shape": f"{k}×{n}"}
        for r in warm:
            if (r["K"], r["N"]) == (k, n) and r["variant"] in mem_names:
                row[mem_names[r["variant"]]] = r.get("resident_x_nk")
        mem.append(row)
    mem_cols = [("shape", "K×N"), *[(v, f"{v} ÷ N·K") for v in mem_names.values()]]
    peaks = "; ".join(f"{t} thread(s) {float(p) / 1e12:.2f} Tops/s" for t, p in sec["measured_int8_peak_ops"].items())
    m = doc["machine"]
    parts = [f"{m['cpu']}, {m['cores']} cores at {m['mhz']:.0f} MHz, flags {', '.join(m['flags'])}; torch {m['torch']} "
             f"({m['cpu_capability']}); {doc['date'][:10]}; suite wall time {doc['seconds']:.0f} s; measured VPDPBUSD "
             f"peak: {peaks}.", "",
             common.markdown_table(linear_summary(lin), README_SUMMARY), "",
             "M = 1 with cold weights (streamed from memory); floor = weight bytes / best copy bandwidth of "
             "the same run:", "", common.markdown_table(cold_rows, cold_cols), "",
             "Weight memory, measured (every tensor storage a layer holds after its calls):", "",
             common.markdown_table(mem, mem_cols), "",
             minilm.markdown(sec["minilm"], 214) if sec["minilm"] else "", "",
             common.markdown_table(sec["digits"], DIGITS_COLUMNS)]
    return "\n".join(parts) + "\n"


def render(json_path: Path) -> Path:
    """The Markdown of a results JSON written by :func:`run` (tables only; nothing is timed again)."""
    doc = json.loads(json_path.read_text())
    machine = common.Machine(**{**doc["machine"], "flags": tuple(doc["machine"]["flags"])})
    plan = Plan(**{**doc["plan"], "threads": tuple(doc["plan"]["threads"])})
    sections = doc["sections"]
    bandwidth = {int(t): b for t, b in sections["bandwidth"].items()}
    peaks = {int(t): float(p) for t, p in sections.get("measured_int8_peak_ops", {}).items()}
    md_path = json_path.with_suffix(".md")
    md_path.write_text(report(machine, plan, sections, doc.get("notes", []), bandwidth, doc["seconds"], peaks))
    return md_path


def main() -> None:
    ap = argparse.ArgumentParser(description="glassquant's benchmark suite (make bench)")
    ap.add_argument("--quick", action="store_true", help="a < 60 s smoke run: one shape, 1 thread, fewer reps")
    ap.add_argument("--out", type=Path, default=common.RESULTS, help="results directory")
    ap.add_argument("--render", type=Path, help="re-write the Markdown of an existing results JSON and print the "
                    "README tables (no timing)")
    args = ap.parse_args()
    if args.render is not None:
        print(f"written to {render(args.render)}")
        print(readme_markdown(args.render))
        return
    json_path, md_path = run(Plan.make(args.quick), args.out)
    print(md_path.read_text())
    print(f"written to {json_path} and {md_path}")


if __name__ == "__main__":
    main()
