"""Benchmark: one Linear layer, glassquant's layers beside fp32, bf16, torch.ao and torchao.

Every glassquant layer is built from the same float ``nn.Linear`` the way
``glassquant.quantize`` builds it (the preset named in the variant), and timed through its
normal ``forward`` — float in, float out — so faster kernels inside the layers show up here
without a change. Static layers are also timed on their integer path (``forward_int``,
uint8 in, uint8 out) beside torch.ao's quantized Linear on quantized tensors.

Two regimes: **warm** (each timed call right after an untimed call of the same layer: its
weights in cache, whatever ran before) and, for
M = 1, **cold** (the calls rotate over enough copies of every variant that the weights must
stream from memory: the copies of all variants together exceed twice the L3 size, and the
interleaved rounds touch all of them between two calls of one copy). The cold floor is
weight bytes / memory bandwidth (a large copy), measured in the same run.

Run alone: ``python benchmarks/linear.py [--quick]`` (the suite, ``benchmarks/suite.py``,
calls :func:`run_section`).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import common  # benchmarks/ is on sys.path when a script here runs (and in tests/unit/test_bench_smoke.py)
import torch
from torch import Tensor, nn

import glassquant as gq
from glassquant.interop import torch_ao

MS = (1, 8, 64, 512)
KNS = ((768, 768), (768, 3072), (4096, 4096), (4096, 11008))
#: The reference (fast=False) integer path runs only up to this many multiply-adds (it is float64).
REFERENCE_MAX_MACS = 2**27
#: Calibration rows for static layers: the same qparams for every M.
CALIBRATION_ROWS = 64


@dataclass
class Variant:
    """One way to compute the layer: a module and how to call it on the inputs of one M."""

    name: str
    family: str  # "float", "glassquant", "torch.ao", "torchao"
    module: nn.Module
    call: Callable[[nn.Module, Inputs], Any]
    weight_bytes: int
    baseline: str | None = None  # the like-for-like variant its ratio is taken against
    int8: bool = False  # an int8 matmul: report % of the int8 peak
    warm_only: bool = False

    def copies(self, count: int) -> list[nn.Module]:
        """``count`` modules with their own weight storage (the first is ``self.module``)."""
        return [self.module] + [copy.deepcopy(self.module) for _ in range(count - 1)]


@dataclass
class Inputs:
    """The input of one M in every form a variant takes: float32, bf16, uint8, torch quint8."""

    x: Tensor  # float32 (M, K)
    x_bf16: Tensor
    x_q: Tensor | None = None  # uint8 (M, K) with the static layer's input qparams
    xq_t: Tensor | None = None  # the same as a torch quint8 tensor


def _quantize(lin: nn.Linear, preset: str, notes: list[str], calibration: Tensor | None = None) -> nn.Module | None:
    """``glassquant.quantize`` on a one-layer model; the glassquant layer, or None (with a note)
    when the layer was left in float."""
    model = nn.Sequential(copy.deepcopy(lin))
    gq.quantize(model, preset, None if calibration is None else [calibration], progress=False)
    skipped = model.glassquant_conversion.skipped
    if skipped:
        notes.append(f"{preset} at K={lin.in_features} N={lin.out_features}: {next(iter(skipped.values()))}")
        return None
    return model[0]


def _int8_bytes(n: int, k: int) -> int:
    return n * k + 8 * n  # int8 weight + one float32 scale and one int32 zero point per row (at most)


def build_variants(lin: nn.Linear, calibration: Tensor, notes: list[str]) -> list[Variant]:
    """Every variant of one (K, N) layer; unavailable baselines are left out with a note."""
    n, k = lin.weight.shape
    nk = n * k
    i8 = _int8_bytes(n, k)
    v = [Variant("fp32 nn.Linear", "float", copy.deepcopy(lin), lambda m, i: m(i.x), 4 * nk),
         Variant("bf16 nn.Linear", "float", copy.deepcopy(lin).to(torch.bfloat16), lambda m, i: m(i.x_bf16), 2 * nk)]
    static = _quantize(lin, "x86", notes, calibration)
    if static is not None:
        v += [Variant("gq static x86", "glassquant", static, lambda m, i: m(i.x), i8,
                      baseline="torch.ao static (float in/out)", int8=True),
              Variant("gq static x86 forward_int", "glassquant", copy.deepcopy(static),
                      lambda m, i: m.forward_int(i.x_q), i8, baseline="torch.ao static (quint8 in/out)", int8=True),
              Variant("gq static forward_int (reference)", "glassquant", copy.deepcopy(static),
                      lambda m, i: m.forward_int(i.x_q, fast=False), i8, baseline="gq static x86 forward_int",
                      warm_only=True)]
    glassquant = (("gq dynamic per-tensor (x86)", "w8a8-dynamic-per-tensor", i8, "torch.ao dynamic (x86)", True),
                  ("gq dynamic per-token (torchao)", "w8a8-dynamic", i8, "torchao int8 dynamic", True),
                  ("gq weight-only int8", "w8-weight-only", i8, "torchao int8 weight-only", False),
                  ("gq weight-only int4 g128", "w4g128-weight-only", nk // 2 + 5 * nk // 128, None, False))
    layers = {}
    for name, preset, nbytes, baseline, int8 in glassquant:
        layers[preset] = _quantize(lin, preset, notes)
        if layers[preset] is not None:
            v.append(Variant(name, "glassquant", layers[preset], lambda m, i: m(i.x), nbytes, baseline, int8))
    ok, why = torch_ao.available()
    if ok and static is not None and layers["w8a8-dynamic-per-tensor"] is not None:
        ao = static.to_torch_ao()
        v += [Variant("torch.ao static (float in/out)", "torch.ao", ao, lambda m, i: m(torch.quantize_per_tensor(
                  i.x, static.x_scale, static.x_zero_point, torch.quint8)).dequantize(), i8, int8=True),
              Variant("torch.ao static (quint8 in/out)", "torch.ao", copy.deepcopy(ao), lambda m, i: m(i.xq_t), i8,
                      int8=True),
              Variant("torch.ao dynamic (x86)", "torch.ao", layers["w8a8-dynamic-per-tensor"].to_torch_ao(),
                      lambda m, i: m(i.x), i8, int8=True)]
    elif not ok and f"torch.ao baselines skipped: {why}" not in notes:
        notes.append(f"torch.ao baselines skipped: {why}")
    return v + _torchao_variants(lin, nk, notes)


def _torchao_variants(lin: nn.Linear, nk: int, notes: list[str]) -> list[Variant]:
    """torchao 0.18's Int8DynamicActivationInt8Weight and Int8WeightOnly (eager), if importable."""
    try:
        from glassquant.interop import torchao_runtime

        ok, why = torchao_runtime.available()
        if not ok:
            raise RuntimeError(why)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dyn = torchao_runtime.torchao_linear(lin, "w8a8-dynamic")
            wo = torchao_runtime.torchao_linear(lin, "w8-weight-only")
            x = torch.randn(2, lin.in_features)
            dyn(x), wo(x)
    except Exception as e:  # any failure of an optional baseline is a note, not a crash
        note = f"torchao baselines skipped: {type(e).__name__}: {e}"
        if note not in notes:
            notes.append(note)
        return []
    n = lin.weight.shape[0]
    return [Variant("torchao int8 dynamic", "torchao", dyn, lambda m, i: m(i.x), nk + 4 * n, int8=True),
            Variant("torchao int8 weight-only", "torchao", wo, lambda m, i: m(i.x), nk + 4 * n)]


def make_inputs(variants: list[Variant], m: int, k: int, generator: torch.Generator) -> Inputs:
    """Random float32 rows and their bf16 / uint8 / quint8 forms (static qparams of the gq layer)."""
    x = torch.randn(m, k, generator=generator)
    inputs = Inputs(x, x.to(torch.bfloat16))
    static = next((v.module for v in variants if v.name == "gq static x86"), None)
    if static is not None:
        inputs.x_q = static.quantize_input(x)
        inputs.xq_t = torch.quantize_per_tensor(x, static.x_scale, static.x_zero_point, torch.quint8)
    return inputs


def check_agreement(variants: list[Variant], inputs: Inputs, notes: list[str]) -> None:
    """One sanity check per shape: glassquant's static integers equal torch.ao's (x86)."""
    by_name = {v.name: v for v in variants}
    gq_v, ao_v = by_name.get("gq static x86 forward_int"), by_name.get("torch.ao static (quint8 in/out)")
    if gq_v is not None and ao_v is not None:
        if not torch.equal(ao_v.call(ao_v.module, inputs).int_repr(), gq_v.call(gq_v.module, inputs)):
            m, k = inputs.x.shape
            notes.append(f"MISMATCH: gq static forward_int != torch.ao x86 at M={m} K={k}")


def _resident(module: nn.Module) -> int | None:
    """``common.resident_bytes`` of a layer, or None where its storage is opaque to Python
    (torch.ao's packed parameters live in a C++ object)."""
    if module.__class__.__module__.startswith("torch.ao"):
        return None
    try:
        return common.resident_bytes(module)
    except (RuntimeError, TypeError, NotImplementedError):  # a tensor subclass without one storage
        return None


def _rotating(call: Callable[[nn.Module, Inputs], Any], modules: list[nn.Module], inputs: Inputs
              ) -> Callable[[], Any]:
    cycle: Iterator[nn.Module] = itertools.cycle(modules)
    return lambda: call(next(cycle), inputs)


def _row(v: Variant, t: common.Timing, m: int, k: int, n: int, threads: int, regime: str,
         machine: common.Machine, peak: float | None = None) -> dict[str, Any]:
    """One timing row. ``% int8 peak``: of the nominal peak of ``threads`` cores (``machine``);
    ``% measured peak``: of ``peak``, the VPDPBUSD throughput measured at ``threads`` in this run."""
    macs = m * k * n
    nominal = machine.int8_peak_ops * min(threads, machine.cores) / machine.cores
    return {"section": "linear", "regime": regime, "threads": threads, "M": m, "K": k, "N": n, "variant": v.name,
            "family": v.family, "baseline": v.baseline, "median_us": t.median * 1e6,
            "p25_us": t.quantile(0.25) * 1e6, "p75_us": t.quantile(0.75) * 1e6, "reps": len(t.samples),
            "gops": 2 * macs / t.median / 1e9, "tops": 2 * macs / t.median / 1e12,
            "pct_int8_peak": 100 * 2 * macs / t.median / nominal if v.int8 else None,
            "pct_measured_peak": 100 * 2 * macs / t.median / peak if v.int8 and peak else None,
            "weight_bytes": v.weight_bytes}


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``x_fp32`` (fp32 time / variant time) and ``x_baseline`` to rows of one comparison."""
    by_name = {r["variant"]: r["median_us"] for r in rows}
    fp32 = by_name.get("fp32 nn.Linear", math.nan)
    for r in rows:
        r["x_fp32"] = fp32 / r["median_us"]
        base = by_name.get(r["baseline"]) if r["baseline"] else None
        r["x_baseline"] = None if base is None else base / r["median_us"]


def float_linear(k: int, n: int) -> tuple[nn.Linear, Tensor, torch.Generator]:
    """A seeded float Linear (weights ~ N(0, 1/K)), calibration rows, and the generator for inputs."""
    g = torch.Generator().manual_seed(k * 100_003 + n)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / math.sqrt(k))
        lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin, torch.randn(CALIBRATION_ROWS, k, generator=g), g


def measure(variants: list[Variant], inputs: Inputs, threads: int, machine: common.Machine, *, budget_s: float,
            min_reps: int, max_reps: int, cold: bool, bandwidth: float | None, max_copies: int = 256,
            notes: list[str] | None = None, peak: float | None = None) -> list[dict[str, Any]]:
    """Warm (and, with ``cold``, cold) rows for one M at ``threads`` threads."""
    m, k = inputs.x.shape
    n = variants[0].module.out_features
    torch.set_num_threads(threads)
    todo = [v for v in variants if not (v.warm_only and m * k * n > REFERENCE_MAX_MACS)]
    warm = common.time_interleaved({v.name: (lambda v=v: v.call(v.module, inputs)) for v in todo},
                                   budget_s=budget_s, min_reps=min_reps, max_reps=max_reps, warm_cache=True)
    rows = [_row(v, warm[v.name], m, k, n, threads, "warm", machine, peak) for v in todo]
    _ratios(rows)
    for v, r in zip(todo, rows, strict=True):  # measured after the calls: lazily packed copies count
        r["resident_bytes"] = _resident(v.module)
        r["resident_x_nk"] = None if r["resident_bytes"] is None else r["resident_bytes"] / (n * k)
    if cold:
        cold_vs = [v for v in todo if not v.warm_only]
        count = max(1, min(max_copies, math.ceil(2 * machine.l3_bytes / sum(v.weight_bytes for v in cold_vs))))
        pools = {v.name: v.copies(count) for v in cold_vs}
        for v in cold_vs:  # pack every copy once, outside the timings
            for mod in pools[v.name]:
                v.call(mod, inputs)
        t = common.time_interleaved({v.name: _rotating(v.call, pools[v.name], inputs) for v in cold_vs},
                                    budget_s=budget_s, min_reps=max(min_reps, min(count, max_reps)),
                                    max_reps=max_reps)
        cold_rows = [_row(v, t[v.name], m, k, n, threads, "cold", machine, peak) for v in cold_vs]
        _ratios(cold_rows)
        for r in cold_rows:
            r["copies"] = count
            if bandwidth:
                r["floor_us"] = r["weight_bytes"] / bandwidth * 1e6
                r["pct_floor"] = 100 * r["floor_us"] / r["median_us"]
        rows += cold_rows
    return rows


def run_section(machine: common.Machine, *, quick: bool, threads: tuple[int, ...], budget_s: float,
                min_reps: int, max_reps: int, bandwidth: dict[int, dict[str, float]], notes: list[str],
                shapes: tuple[tuple[int, int], ...] | None = None, ms: tuple[int, ...] | None = None,
                max_copies: int = 256, log: Callable[[str], None] = print,
                peaks: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """Every (K, N) x threads x M of the linear section (quick: M in {1, 64}, K = N = 768).

    The variants of one (K, N) are built once and timed at every M and thread count; M = 1
    is also timed cold."""
    kns = shapes or (((768, 768),) if quick else KNS)
    ms = ms or ((1, 64) if quick else MS)
    rows: list[dict[str, Any]] = []
    with torch.no_grad(), torch_ao.engine("x86"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, n in kns:
            lin, calibration, g = float_linear(k, n)
            variants = build_variants(lin, calibration, notes)
            for m in ms:
                inputs = make_inputs(variants, m, k, g)
                check_agreement(variants, inputs, notes)
                for t in threads:
                    log(f"  linear M={m} K={k} N={n} threads={t}")
                    rows += measure(variants, inputs, t, machine, budget_s=budget_s, min_reps=min_reps,
                                    max_reps=max_reps, cold=m == 1, bandwidth=bandwidth[t]["best_copy_bytes_per_s"],
                                    max_copies=max_copies, notes=notes, peak=(peaks or {}).get(t))
    return rows


WARM_COLUMNS = [("threads", "thr"), ("M", "M"), ("K", "K"), ("N", "N"), ("variant", "variant"),
                ("median_us", "median µs"), ("x_fp32", "× fp32"), ("x_baseline", "× baseline"),
                ("gops", "GOP/s"), ("pct_int8_peak", "% nominal int8 peak"),
                ("pct_measured_peak", "% measured VNNI peak")]
MEMORY_COLUMNS = [("K", "K"), ("N", "N"), ("variant", "variant"), ("resident_bytes", "bytes held"),
                  ("resident_x_nk", "÷ N·K")]
COLD_COLUMNS = [("threads", "thr"), ("K", "K"), ("N", "N"), ("variant", "variant"), ("median_us", "median µs"),
                ("x_fp32", "× fp32"), ("weight_bytes", "weight bytes"), ("floor_us", "floor µs"),
                ("pct_floor", "% of floor")]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The warm and cold tables; ``× baseline`` is against the variant in ``baseline``."""
    warm = [r for r in rows if r["regime"] == "warm"]
    cold = [r for r in rows if r["regime"] == "cold"]
    pairs = sorted({(r["variant"], r["baseline"]) for r in warm if r["baseline"]})
    out = ["### Linear, warm weights", "", "Baselines for × baseline: " +
           "; ".join(f"{a} vs {b}" for a, b in pairs) + ".", "", common.markdown_table(warm, WARM_COLUMNS)]
    memory = [r for r in warm if r["threads"] == warm[0]["threads"] and r["M"] == max(x["M"] for x in warm)
              and r.get("resident_bytes") is not None]
    if memory:
        out += ["", "### Weight memory (measured: every tensor storage the layer holds after its calls)", "",
                common.markdown_table(memory, MEMORY_COLUMNS)]
    if cold:
        out += ["", "### Linear, M = 1, cold weights (streamed from memory)", "",
                "floor = weight bytes / memory bandwidth (best rate of a 4 x L3 copy, read + write bytes) in this run; "
                "copies per variant in the JSON.",
                "", common.markdown_table(cold, COLD_COLUMNS)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="M in {1, 64}, K = N = 768, 1 thread")
    ap.add_argument("--threads", type=int, nargs="+", default=None)
    args = ap.parse_args()
    machine = common.machine_info()
    threads = tuple(args.threads or ((1,) if args.quick else (1, 2)))
    bw = {}
    for t in threads:
        torch.set_num_threads(t)
        bw[t] = common.memory_bandwidth(4 * max(machine.l3_bytes, 64 << 20), reps=3 if args.quick else 7)
    notes: list[str] = []
    rows = run_section(machine, quick=args.quick, threads=threads, budget_s=0.03 if args.quick else 0.1,
                       min_reps=3 if args.quick else 5, max_reps=100 if args.quick else 400, bandwidth=bw,
                       notes=notes)
    print(common.machine_markdown(machine) + "\n\n" + markdown(rows) + "".join(f"\n- {n}" for n in notes))


if __name__ == "__main__":
    main()
