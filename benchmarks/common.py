"""Shared benchmark helpers: what machine this is, how to time fairly, how to write results.

Timing rules (every section of ``benchmarks/suite.py`` follows them):

- **Interleaved**: the variants of one comparison run in rounds, one call of each per
  round, the order reversed every other round, so a slow drift (another process, thermal
  throttling) hits every variant alike.
- **Medians** of many single-call timings (``time.perf_counter``), after two warm-up calls
  per variant (lazy weight packing and kernel plans happen there, not in the timings).
- **Adaptive repetitions**: each variant gets about ``budget_s`` seconds of calls, between
  ``min_reps`` and ``max_reps`` calls, so a 10 µs call gets hundreds of samples and a
  0.5 s call a handful, and the whole suite fits a fixed wall-clock budget.
- **Baselines measured in the same run**: every ratio in the results divides two medians
  from the same interleaved rounds.

Nothing here imports glassquant: it is plain machine inspection and timing.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
#: CPU flags worth recording for int8 and bf16 speed (from /proc/cpuinfo).
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                     "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


# --------------------------------------------------------------------------- machine
@dataclass(frozen=True)
class Machine:
    """The benchmark machine: CPU, caches, clock, the int8 peak derived from them, torch build."""

    name: str
    cpu: str
    cores: int
    mhz: float
    flags: tuple[str, ...]
    l2_bytes: int
    l3_bytes: int
    torch: str
    cpu_capability: str
    int8_peak_ops: float  # int8 multiply-adds x 2, per second, all cores
    peak_assumption: str

    @property
    def has_vnni(self) -> bool:
        return "avx512_vnni" in self.flags or "avx_vnni" in self.flags


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as ``{key: value}`` (empty if unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _size_bytes(text: str) -> int:
    """``"48K"`` / ``"260 MiB"`` / ``"2048K"`` -> bytes (0 if unparsable)."""
    m = re.match(r"\s*([\d.]+)\s*([KMG]?)", text)
    if not m:
        return 0
    return int(float(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])


def cache_sizes() -> dict[int, int]:
    """``{level: bytes}`` of the data/unified caches seen by cpu0 (sysfs, else ``lscpu``)."""
    sizes: dict[int, int] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            sizes[int((index / "level").read_text())] = _size_bytes((index / "size").read_text())
        except (OSError, ValueError):
            continue
    if 3 not in sizes:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
            for level in (2, 3):
                m = re.search(rf"L{level} cache:\s*([\d.]+\s*[KMG]i?B)", out)
                if m:
                    sizes.setdefault(level, _size_bytes(m.group(1)))
        except (OSError, subprocess.SubprocessError):
            pass
    return sizes


def int8_peak(cores: int, mhz: float, flags: Sequence[str]) -> tuple[float, str]:
    """Peak int8 ops/s (2 per multiply-add) and the assumption it rests on.

    AMX (``amx_int8``): 1024 MACs per cycle per core; AVX512-VNNI: two 512-bit ``vpdpbusd`` per
    cycle = 128 MACs; AVX-VNNI (256-bit): 64 MACs; AVX2 without VNNI (``vpmaddubsw`` +
    ``vpmaddwd`` + ``vpaddd``): about 32 MACs. The clock is /proc/cpuinfo's ``cpu MHz``
    (under a hypervisor the nominal clock: turbo can exceed it, so ``% of peak`` is an estimate).
    Example: 2 cores x 128 MACs x 2 ops x 2.3 GHz = 1.18 Tops/s.
    """
    if "amx_int8" in flags:
        macs, unit = 1024, "AMX"
    elif "avx512_vnni" in flags:
        macs, unit = 128, "2 x AVX512-VNNI vpdpbusd"
    elif "avx_vnni" in flags:
        macs, unit = 64, "2 x AVX-VNNI vpdpbusd (256-bit)"
    else:
        macs, unit = 32, "AVX2 vpmaddubsw/vpmaddwd"
    if mhz <= 0:
        return 2.1e12, f"clock unknown: assumed 2.1 Tops/s ({unit})"
    peak = cores * macs * 2 * mhz * 1e6
    return peak, f"{cores} cores x {macs} int8 MACs/cycle ({unit}) x 2 ops x {mhz / 1000:.2f} GHz"


def machine_info() -> Machine:
    """Read the CPU model, cores, clock, flags and caches of this machine."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    mhz = float(info.get("cpu MHz", 0) or 0)
    caches = cache_sizes()
    peak, assumption = int8_peak(cores, mhz, sorted(flags))
    return Machine(
        name=platform.node() or "machine", cpu=info.get("model name", platform.processor() or "unknown"),
        cores=cores, mhz=mhz, flags=tuple(f for f in INTERESTING_FLAGS if f in flags),
        l2_bytes=caches.get(2, 0), l3_bytes=caches.get(3, 0), torch=torch.__version__,
        cpu_capability=torch.backends.cpu.get_cpu_capability(), int8_peak_ops=peak, peak_assumption=assumption)


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Single-call wall times of one variant, in seconds."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    def quantile(self, q: float) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(q * len(s)))] if s else math.nan

    @property
    def spread(self) -> float:
        """Interquartile range over the median (0.05 = 5 % noise)."""
        return (self.quantile(0.75) - self.quantile(0.25)) / self.median if self.samples else math.nan


def _once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(fns: dict[str, Callable[[], Any]], *, budget_s: float = 0.2, min_reps: int = 5,
                     max_reps: int = 300, warmup: int = 2, warm_cache: bool = False) -> dict[str, Timing]:
    """Median-ready timings of several variants, interleaved call by call.

    Each variant is warmed up ``warmup`` times, then gets ``clamp(budget_s / t_first,
    min_reps, max_reps)`` calls, where ``t_first`` is its last warm-up time (two by default: a
    first call that builds a lazily packed weight or kernel plan would otherwise set the count
    from a time 10-30x the real one, and that variant would get ``min_reps`` samples, all from
    the first rounds). Rounds call every
    variant that still needs samples once, in list order on even rounds and reversed on odd
    ones. Exceptions propagate: a failing variant should be removed by the caller, not timed.

    ``warm_cache``: each timed call is preceded by one untimed call of the same variant, so
    every sample finds that variant's data in cache whatever ran before it. Without it, a
    variant whose samples all fall in the first rounds (a slow one) runs after every other
    variant has evicted its weights, and a fast one, sampled on in later rounds once the slow
    ones are done, does not: the same "warm" label would mean two cache states (measured:
    a 16 MB int8 weight timed 1,290 µs in early rounds and 740 µs in late ones).
    """
    first: dict[str, float] = {}
    for name, fn in fns.items():
        for _ in range(max(1, warmup)):
            first[name] = _once(fn)
    reps = {name: max(min_reps, min(max_reps, int(budget_s / max(t, 1e-7)))) for name, t in first.items()}
    out = {name: Timing() for name in fns}
    order = list(fns)
    for r in range(max(reps.values(), default=0)):
        for name in order if r % 2 == 0 else reversed(order):
            if len(out[name].samples) < reps[name]:
                if warm_cache:
                    fns[name]()
                out[name].samples.append(_once(fns[name]))
    return out


def memory_bandwidth(nbytes: int, reps: int = 5) -> dict[str, float]:
    """Main-memory bandwidth (bytes/s) at the current thread count: a large ``copy_`` (read +
    write, counted as 2 x nbytes) and a large float32 ``sum`` (read only), median and best of
    ``reps``. ``nbytes`` should be several times the L3 size. The cold-weight floor uses the
    best copy rate: on one core a reduction is slower than the memory (about 7 GB/s against
    13 GB/s of copy traffic here), and a floor must be a bound no call can beat."""
    n = max(1, nbytes // 4)
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = time_interleaved({"copy": lambda: dst.copy_(src), "read": lambda: src.sum()}, budget_s=0.0,
                         min_reps=reps, max_reps=reps)
    return {"copy_bytes_per_s": 2 * 4 * n / t["copy"].median, "read_bytes_per_s": 4 * n / t["read"].median,
            "best_copy_bytes_per_s": 2 * 4 * n / min(t["copy"].samples),
            "best_read_bytes_per_s": 4 * n / min(t["read"].samples), "bytes": 4 * n}


def resident_bytes(obj: Any) -> int:
    """Bytes of every distinct tensor storage reachable from ``obj`` (a module after its first
    call): parameters, buffers, and tensors held in plain attributes, dataclasses (a packed
    weight, a kernel plan), tuples, lists and dicts, each storage counted once. This measures
    what a layer keeps in memory, lazily packed copies included, not what a formula says it should.
    """
    seen_objects: set[int] = set()
    storages: dict[int, int] = {}

    def visit(o: Any, depth: int) -> None:
        if depth > 8 or id(o) in seen_objects:
            return
        seen_objects.add(id(o))
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            storages[st.data_ptr()] = max(storages.get(st.data_ptr(), 0), st.nbytes())
            return
        if isinstance(o, torch.nn.Module):
            items: list[Any] = [*o._parameters.values(), *o._buffers.values(), *o._modules.values()]
            items += [v for k, v in vars(o).items() if k not in ("_parameters", "_buffers", "_modules")]
        elif isinstance(o, dict):
            items = list(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            items = list(o)
        elif hasattr(o, "__dict__") and not isinstance(o, type):
            items = list(vars(o).values())
        elif hasattr(o, "__slots__"):
            items = [getattr(o, s, None) for s in o.__slots__]
        else:
            return
        for v in items:
            if v is not None and not isinstance(v, (int, float, str, bool, bytes)):
                visit(v, depth + 1)

    visit(obj, 0)
    return sum(storages.values())


# --------------------------------------------------------------------------- results
def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant figures, None as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if value == 0 or abs(value) >= 10 ** digits:
            return f"{value:,.0f}"
        return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows``; ``columns`` are ``(key, header)`` pairs."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def machine_markdown(m: Machine, extra: dict[str, Any] | None = None) -> str:
    """The header of a results file: CPU, cores, clock, caches, flags, peak, torch."""
    lines = [f"- CPU: {m.cpu}, {m.cores} cores at {m.mhz:.0f} MHz; L2 {m.l2_bytes >> 20} MiB, "
             f"L3 {m.l3_bytes >> 20} MiB",
             f"- flags: {', '.join(m.flags) or 'none of interest'}; VNNI: {'yes' if m.has_vnni else 'no'}",
             f"- int8 peak: {m.int8_peak_ops / 1e12:.2f} Tops/s ({m.peak_assumption})",
             f"- torch {m.torch} (CPU capability {m.cpu_capability})"]
    lines += [f"- {k}: {v}" for k, v in (extra or {}).items()]
    return "\n".join(lines)


def results_paths(machine: Machine, quick: bool, out_dir: Path = RESULTS, date: str | None = None
                  ) -> tuple[Path, Path]:
    """``<out_dir>/<machine>-<date>[-quick].json`` and ``.md``."""
    stem = f"{machine.name}-{date or dt.date.today().isoformat()}" + ("-quick" if quick else "")
    return out_dir / f"{stem}.json", out_dir / f"{stem}.md"


def write_results(machine: Machine, sections: dict[str, Any], markdown: str, *, quick: bool,
                  out_dir: Path = RESULTS, meta: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write every row as JSON (with the machine and run metadata) and the tables as Markdown."""
    json_path, md_path = results_paths(machine, quick, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"machine": asdict(machine), "date": dt.datetime.now().isoformat(timespec="seconds"),
           "quick": quick, **(meta or {}), "sections": sections}
    json_path.write_text(json.dumps(doc, indent=1, default=str))
    md_path.write_text(markdown)
    return json_path, md_path
