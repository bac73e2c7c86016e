"""Slow paths: which glassquant layers of a model will run slower than they could, and why.

Every rule reads the layer (kind, engine, shape) and, when an example input is given, the
rows ``M`` and the dtype each layer actually receives; nothing is timed here. The numbers
behind the rules were measured with ``benchmarks/linear.py`` (warm weights, 1 thread,
torch 2.13 on a 2-core AVX512-VNNI Xeon at 2.3 GHz, November 2026); ``benchmarks/suite.py``
prints the crossovers again on any machine, so the thresholds below can be re-derived.

Rules (``SlowPath.code``):

- ``tiny-shape``: ``M*K*N`` multiply-adds below :data:`TINY_MACS` for the layer's path. Below
  it the fixed cost of the float edges (quantize the input, requantize or rescale the output)
  outweighs the faster int8 matmul. Measured (× = fp32 time / glassquant time): per-token
  dynamic through the compiled passes 0.67× at 1×768×768 = 0.59 M MACs, 1.05-1.18× at 2.4 M;
  static (torch passes) 0.85× at 4×768×3072 = 9.4 M, 1.12× at 1×4096×4096 = 16.8 M; per-tensor
  dynamic (torch passes) 0.79× at 16.8 M, 1.40× at 67 M. Static layers on a compiled kernel
  were not measured yet: their threshold is set to the dynamic compiled one.
- ``k-alignment``: on the compiled VNNI kernel (``kernels/_vnni.h``) ``K % 64 != 0``: every
  activation row is zero-padded to K64 and the weight's last 64-byte load is masked; on the
  ``torch._int_mm`` path ``K % 4 != 0``: ``vpdpbusd`` multiplies int8 in groups of 4 along K,
  and ``_int_mm`` (M=4096, N=64) took 7-17 % longer at K = 27, 63, 145 than at 28, 64, 144.
- ``k-too-large``: ``K > 2**17 - 1`` (``kernels.cpu``): the int32 ``_int_mm`` fast path could
  overflow and refuses; only the exact reference (``fast=False``, a float64/int64 matmul) runs.
- ``no-vnni``: the CPU lacks AVX512-VNNI / AVX-VNNI / AMX: int8 GEMMs fall back to
  ``vpmaddubsw`` (half the rate), whose int16 pair sums saturate (``analysis.overflow``).
- ``float-layer``: a Linear/Conv left in float (``model.glassquant_conversion.skipped``, or not
  converted at all).
- ``weight-only-dequantize``: a weight-only layer (``WeightOnlyLinear``, ``PackedWeightOnlyLinear``)
  on the CPU with more than :data:`WEIGHT_ONLY_FAST_M` rows: up to 16 rows the compiled kernel
  (``kernels/_wo.c``) streams the packed weight; beyond, the weight is expanded to float32 (one
  compiled pass into a reused buffer) and multiplied in float32. Measured in ``make bench``
  (1 thread, 4096 x 4096, warm): int4 1.93x / int8 1.79x fp32 at M = 1, 1.06x / 1.04x at M = 8,
  0.77x / 0.74x at M = 64, 0.96x / 0.93x at M = 512. Without the compiled kernel (no C compiler
  at install) every call dequantizes in torch: 0.02x fp32 for int4 at M = 1.
- ``weight-only-unpack``: a ``PackedWeightOnlyLinear`` with 2, 3, 5, 6 or 7 bits: its codes are
  decoded by shifts, not the nibble or byte loads of 4 and 8 bits (3 bits measured 12.3 ms against
  2.3 ms for int4 at M = 1, 4096 x 4096, one thread: 5x slower, and slower than fp32).
- ``reference-path``: layers whose integers come from the exact reference, not a fast kernel:
  ``IntLinear`` (integer-only dialect), and fbgemm depthwise convolutions, emulated element by
  element in int64 when an input integer exceeds 127 (to reproduce fbgemm's int16 saturation).
- ``no-fused-dynamic`` / ``no-fused-static``: a ``DynamicQuantLinear`` / ``QuantLinear`` whose
  float call runs no compiled kernel (:func:`compiled_kernels` runs it once on two rows and
  watches for the entry points in :data:`COMPILED_ENTRY_POINTS`), so each step is a torch pass.
- ``non-float32-input``: a float input that is not float32 (converted on every call; the
  compiled paths take float32 only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.base import QuantModule

__all__ = ["COMPILED_ENTRY_POINTS", "TINY_MACS", "SlowPath", "bench_explain_command", "compiled_kernels",
           "cpu_flags", "explain_slow_paths", "slowpath_markdown"]

#: Multiply-adds (M*K*N) below which a path measured slower than fp32 ``nn.Linear`` (see module docstring).
TINY_MACS: dict[str, int] = {
    "static": 2**24,  # QuantLinear / QuantConv forward (float in and out), torch passes
    "static-compiled": 2**21,  # a static layer that runs a compiled kernel: not yet measured, set as dynamic-compiled
    "dynamic": 2**26,  # DynamicQuantLinear, torch passes only
    "dynamic-compiled": 2**21,  # DynamicQuantLinear through compiled kernels (kernels.fused / kernels.vnni)
}
#: The compiled CPU kernels a layer can call, as ``(module, function)``: running a layer once
#: under a profiler and seeing one of these called is how a "compiled path" is recognised.
COMPILED_ENTRY_POINTS = (("glassquant.kernels.fused", "quantize_rows"), ("glassquant.kernels.vnni", "_call"))
#: Row bytes the VNNI kernel (``kernels/_vnni.h``) loads at once: activations are padded to K64.
VNNI_ROW_BLOCK = 64
#: Rows up to which a weight-only layer measured faster than fp32 (the streaming kernel, 4096 x 4096).
WEIGHT_ONLY_FAST_M = 8
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_MAX_K = 2**17 - 1  # kernels.cpu._MAX_K
_INT8_KINDS = ("QuantLinear", "DynamicQuantLinear", "QuantConv1d", "QuantConv2d", "IntLinear")


@dataclass(frozen=True)
class SlowPath:
    """One reason one layer is slow: ``code`` names the rule (module docstring)."""

    layer: str
    kind: str
    code: str
    reason: str
    suggestion: str


@dataclass
class _Seen:
    """What the example input showed for one layer: rows of the matmul and the input dtype."""

    rows: int
    dtype: torch.dtype | None


def cpu_flags() -> frozenset[str]:
    """The CPU flags of /proc/cpuinfo (empty when unreadable, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _gemm(layer: Any) -> tuple[int, int, int] | None:
    """``(K, N, groups)`` of the layer's int8 or weight matmul (conv: per group), else None."""
    kind = getattr(layer, "kind", "")
    if kind in ("QuantLinear", "DynamicQuantLinear", "IntLinear", "WeightOnlyLinear", "PackedWeightOnlyLinear"):
        return int(layer.in_features), int(layer.out_features), 1
    if kind in ("QuantConv1d", "QuantConv2d"):
        g = int(layer.groups)
        k = int(layer.w_q[0].numel())  # C_in / G * prod(kernel)
        return k, int(layer.out_channels) // g, g
    return None


def _rows(module: nn.Module, x: Any, y: Any) -> int:
    """Rows M of the matmul: leading dims of a Linear input, N * spatial of a conv output."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) or getattr(module, "kind", "").startswith("QuantConv"):
        return int(y.shape[0] * math.prod(y.shape[2:])) if isinstance(y, Tensor) and y.dim() > 2 else 1
    return int(math.prod(x.shape[:-1])) if isinstance(x, Tensor) and x.dim() else 1


def _observe(model: nn.Module, example_input: Any) -> dict[str, _Seen]:
    """Run ``model`` once on ``example_input``, recording each layer's rows and input dtype."""
    from .report import default_run

    seen: dict[str, _Seen] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (QuantModule, nn.Linear, nn.Conv1d, nn.Conv2d)):
            def hook(mod: nn.Module, args: tuple[Any, ...], y: Any, name: str = name) -> None:
                x = args[0] if args else None
                dtype = x.dtype if isinstance(x, Tensor) else None
                seen.setdefault(name, _Seen(_rows(mod, x, y), dtype))
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            default_run(model, example_input)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ValueError(f"the example input does not run through the model: {e}") from e
    finally:
        for h in handles:
            h.remove()
    return seen


def compiled_kernels(layer: Any) -> set[str]:
    """Which compiled kernels (module names of :data:`COMPILED_ENTRY_POINTS`) one float32 call
    of a Linear layer runs: the layer is called on 2 rows under ``sys.setprofile``, which sees
    every Python function entered (nothing is patched). Empty: the layer ran torch passes only.
    """
    import importlib
    import sys

    targets: dict[Any, str] = {}
    for module_name, function in COMPILED_ENTRY_POINTS:
        try:
            fn = getattr(importlib.import_module(module_name), function, None)
        except ImportError:  # a kernel module that is not built / not present
            continue
        if fn is not None and hasattr(fn, "__code__"):
            targets[fn.__code__] = module_name.rsplit(".", 1)[-1]
    hits: set[str] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code in targets:
            hits.add(targets[frame.f_code])

    x = torch.linspace(-1.0, 1.0, 2 * int(layer.in_features), dtype=torch.float32).reshape(2, -1)  # (2, K)
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        with torch.no_grad():
            layer(x)
    except (ValueError, RuntimeError, ArithmeticError):  # a layer that cannot run is judged by the other rules
        return set()
    finally:
        sys.setprofile(previous)
    return hits


#: The :data:`TINY_MACS` key of each kind's float-in, float-out path, without / with a compiled kernel.
_PATHS = {"QuantLinear": ("static", "static-compiled"), "QuantConv1d": ("static", "static-compiled"),
          "QuantConv2d": ("static", "static-compiled"), "DynamicQuantLinear": ("dynamic", "dynamic-compiled")}


def _layer_rules(name: str, layer: Any, rows: int, m_note: str, dtype: torch.dtype | None,
                 flags: frozenset[str]) -> list[SlowPath]:
    """Every rule for one glassquant layer."""
    kind = layer.kind
    out: list[SlowPath] = []

    def add(code: str, reason: str, suggestion: str) -> None:
        out.append(SlowPath(name, kind, code, reason, suggestion))

    gemm = _gemm(layer)
    if gemm is None:
        return out
    k, n, groups = gemm
    macs = rows * k * n * groups
    compiled = compiled_kernels(layer) if kind in ("QuantLinear", "DynamicQuantLinear") and k <= _MAX_K else set()
    path = _PATHS[kind][bool(compiled)] if kind in _PATHS else None
    if path is not None and macs < TINY_MACS[path]:
        add("tiny-shape", f"M*K*N = {rows}*{k}*{n * groups} = {macs:,} multiply-adds{m_note}, below "
            f"{TINY_MACS[path]:,} (2**{int(math.log2(TINY_MACS[path]))}) where glassquant's {path} int8 path "
            "measured slower than fp32: quantizing the input and rescaling the output cost more than the "
            "int8 matmul saves", f"keep it in float (exclude=[{name!r}]) or call it on more rows at once")
    if "vnni" in compiled and k % VNNI_ROW_BLOCK:
        k64 = k + (-k) % VNNI_ROW_BLOCK
        add("k-alignment", f"K = {k} is not a multiple of {VNNI_ROW_BLOCK}: the VNNI kernel pads every activation "
            f"row to {k64} bytes and masks the weight's last load, so {100 * (k64 - k) / k64:.0f} % of its "
            "multiply-adds are on padding", f"pad K to {k64} with zero weight columns (and zero-point inputs)")
    elif kind in _INT8_KINDS and "vnni" not in compiled and k % 4:
        add("k-alignment", f"K = {k} is not a multiple of 4: VNNI's vpdpbusd multiplies int8 in groups of 4 "
            "along K, so the GEMM pads or runs a tail (measured 7-17 % slower _int_mm)",
            f"pad K to {k + (-k) % 4} with zero weight columns (and zero-point inputs)")
    if kind in _INT8_KINDS and k > _MAX_K:
        add("k-too-large", f"K = {k} > 2**17 - 1: the int32 _int_mm fast path could overflow and refuses, "
            "so only the exact reference (fast=False, a float64/int64 matmul) can run",
            "split K into chunks below 2**17 (sum the int32 partial accumulators in int64)")
    if kind in _INT8_KINDS and not flags & set(VNNI_FLAGS):
        reason = ("this CPU has no AVX512-VNNI, AVX-VNNI or AMX: int8 GEMMs fall back to vpmaddubsw + "
                  "vpmaddwd, about half the VNNI rate, and fbgemm's kernels add product pairs in int16 "
                  "with saturation")
        if kind != "IntLinear":
            from .overflow import certify_layer

            cert = certify_layer(name, layer)
            pair = None if cert is None or cert.verdict != "reduce_range" else cert.pair_range
            if pair is not None:
                reason += (f"; this layer's pair sums reach [{pair[0]:,}, {pair[1]:,}] and can saturate "
                           "(`glassquant certify`)")
        add("no-vnni", reason, "run on a CPU with AVX512-VNNI, AVX-VNNI or AMX; on this one prefer reduce_range "
            "presets (x86, fbgemm) and check the layers with `glassquant certify`")
    if kind in ("WeightOnlyLinear", "PackedWeightOnlyLinear"):
        from ..kernels import weight_only as wo_kernels

        if not wo_kernels.available():
            add("weight-only-dequantize", f"the compiled weight-only kernel is not built: this layer dequantizes all "
                f"{k * n:,} weights in torch on every call (measured 0.02× fp32 for int4 at M = 1)",
                "reinstall glassquant with a C compiler present (pip install builds kernels/_wo.c)")
        elif rows > WEIGHT_ONLY_FAST_M:
            add("weight-only-dequantize", f"with M = {rows}{m_note} the weight is expanded to float32 and multiplied "
                "in float32 (compute-bound): measured 0.74-0.96× fp32 for M = 64-512 (4096 × 4096), where the "
                "packed weights save memory but no time",
                "use w8a8-dynamic (per-token int8 activations, an int8 GEMM: measured 3.1-5.4× fp32 at M >= 64 in "
                "make bench); keep weight-only for decode-sized M <= 8 and for memory")
        if kind == "PackedWeightOnlyLinear" and layer.bits not in (4, 8):
            add("weight-only-unpack", f"{layer.bits}-bit codes are decoded by shifts, not the nibble or byte loads of "
                "4 and 8 bits: 3 bits measured 5× slower than int4 (and slower than fp32) at M = 1, 4096 × 4096",
                "where the allocation allows, prefer 4- or 8-bit layers (glassquant allocate --bits 4,8)")
    if kind == "IntLinear":
        add("reference-path", "IntLinear computes its accumulators with the exact reference (float64/int64 "
            "matmul): the integer-only dialect has no fast CPU kernel",
            "use it to prove the C runtime's integers; run the float model with QuantLinear (same weights) "
            "for speed")
    if kind.startswith("QuantConv") and _fbgemm_depthwise(layer):
        add("reference-path", "fbgemm depthwise convolution: when an input integer exceeds 127 glassquant "
            "emulates fbgemm's int16 pair saturation element by element in int64",
            "use a reduce_range preset (x86, fbgemm: inputs calibrated to [0, 127]) or the onednn engine")
    if kind in ("QuantLinear", "DynamicQuantLinear") and not compiled and k <= _MAX_K:
        add(f"no-fused-{'dynamic' if kind == 'DynamicQuantLinear' else 'static'}", *_unfused(layer))
    if dtype is not None and dtype.is_floating_point and dtype != torch.float32:
        skipped = " and the compiled paths are skipped" if kind in ("QuantLinear", "DynamicQuantLinear") else ""
        add("non-float32-input", f"the input is {dtype}: glassquant's float steps are float32, so it is converted "
            f"on every call{skipped}",
            "run the model in float32 (model.float() and float32 inputs)")
    return out


def _unfused(layer: Any) -> tuple[str, str]:
    """Reason and suggestion for a Linear whose float call ran no compiled kernel."""
    from ..kernels import fused

    dynamic = layer.kind == "DynamicQuantLinear"
    missing = [] if fused.available() else ["kernels/_fused.c"]
    try:
        from ..kernels import vnni

        missing += [] if vnni.available() else ["kernels/_vnni*.c (needs the library and AVX512-VNNI)"]
    except ImportError:
        pass
    why = (f"no compiled kernel ran (not available here: {', '.join(missing)})" if missing
           else f"engine {layer.engine!r} with these weights has no compiled kernel")
    steps = ("choose_qparams, quantize, _int_mm, the zero-point corrections and the float output" if dynamic
             else "quantize, _int_mm, the requantize and the dequantize")
    fix = ("use the w8a8-dynamic preset (engine torchao, per token) unless you need quantize_dynamic's exact "
           "integers" if dynamic else "use symmetric weights with the x86/fbgemm engine (the compiled VNNI kernel's "
           "case) or w8a8-dynamic")
    return (f"{why}: {steps} are separate torch passes (measured 0.1-0.5× fp32 at K = N = 768)",
            f"{fix}; reinstall with a C compiler if a library is missing")


def _fbgemm_depthwise(layer: Any) -> bool:
    from ..nn.conv import fbgemm_depthwise_fast_path

    if layer.kernel_family != "fbgemm":
        return False
    _, kernel, stride, padding, dilation = layer._as_2d()
    return bool(fbgemm_depthwise_fast_path(layer.in_channels, layer.out_channels, layer.groups, kernel, stride,
                                           padding, dilation))


def _float_layers(model: nn.Module, seen: dict[str, _Seen], default_rows: int, m_note: str) -> list[SlowPath]:
    """Linear/Conv layers left in float, with the reason ``quantize`` recorded when there is one."""
    skipped: dict[str, str] = getattr(getattr(model, "glassquant_conversion", None), "skipped", {}) or {}
    out = []
    for name, m in model.named_modules():
        if type(m) not in (nn.Linear, nn.Conv1d, nn.Conv2d):
            continue
        why = skipped.get(name, "not converted to a glassquant layer")
        w = m.weight
        rows = seen[name].rows if name in seen else default_rows
        macs = rows * w[0].numel() * w.shape[0]
        reason = why if why.startswith("left in float") else f"left in float ({why})"
        if macs < TINY_MACS["dynamic-compiled"]:
            suggestion = (f"fine as it is: {macs:,} multiply-adds{m_note} is below the size where int8 wins "
                          f"({TINY_MACS['dynamic-compiled']:,})")
        else:
            suggestion = f"quantize it (include {name!r}; fix the reason above) to use the int8 path"
        out.append(SlowPath(name or type(m).__name__, f"float {type(m).__name__}", "float-layer", reason, suggestion))
    return out


def explain_slow_paths(model: nn.Module | Mapping[str, nn.Module], example_input: Any = None, *,
                       rows: int | None = None, flags: Iterable[str] | None = None) -> list[SlowPath]:
    """The glassquant layers of ``model`` that take a slow path, with the reason and a fix.

    ``model``: a quantized ``nn.Module`` (float Linear/Conv layers in it are reported too) or
    ``{name: layer}`` from :func:`glassquant.export.format.load_layers`. ``example_input`` (a
    tensor, a tuple of positional inputs or a dict of keywords) is run once to learn each
    layer's rows M and input dtype; without it every layer is judged at ``rows`` (default 1).
    ``flags``: CPU flags to judge against (default: this CPU's). Entries in module order.
    """
    if rows is not None and rows < 1:
        raise ValueError(f"explain_slow_paths: rows must be >= 1, got {rows}")
    cpu = frozenset(cpu_flags() if flags is None else flags)
    default_rows = 1 if rows is None else int(rows)
    m_note = " (M = 1 assumed: give an example input or rows)" if rows is None else ""
    if isinstance(model, Mapping):
        layers = dict(model)
        seen: dict[str, _Seen] = {}
        if example_input is not None:
            raise ValueError("explain_slow_paths: an example input needs the whole model, not a layer mapping")
    elif isinstance(model, nn.Module):
        layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantModule)}
        seen = _observe(model, example_input) if example_input is not None else {}
    else:
        raise TypeError(f"explain_slow_paths: model must be an nn.Module or a mapping of layers, "
                        f"got {type(model).__name__}")
    out: list[SlowPath] = []
    for name, layer in layers.items():
        s = seen.get(name)
        note = "" if s is not None else m_note
        out += _layer_rules(name or type(layer).__name__, layer, s.rows if s else default_rows, note,
                            s.dtype if s else None, cpu)
    if isinstance(model, nn.Module):
        out += _float_layers(model, seen, default_rows, m_note)
    return out


def slowpath_markdown(entries: list[SlowPath]) -> str:
    """A Markdown table, one row per (layer, rule), and a count per rule."""
    if not entries:
        return "No slow paths: every glassquant layer takes its fast path on this CPU at the given shapes."
    rows = ["| layer | kind | rule | why | what to change |", "|---|---|---|---|---|"]
    rows += [f"| {e.layer} | {e.kind} | {e.code} | {e.reason} | {e.suggestion} |" for e in entries]
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.code] = counts.get(e.code, 0) + 1
    summary = ", ".join(f"{c} × {n}" for c, n in counts.items())
    return "\n".join([*rows, "", f"{len(entries)} slow paths in {len({e.layer for e in entries})} layers: {summary}"])


def bench_explain_command(args: Any, console: Any) -> int:
    """``glassquant bench --explain MODEL``: print the slow paths of a saved or factory-built model.

    ``args.explain``: a ``model.safetensors`` saved by glassquant (layers only) or a model spec as
    in ``glassquant quantize`` (a float model is quantized with ``args.preset``, calibrated on
    ``args.calibration`` when given, whose first batch is also the example input); ``args.rows``:
    rows M to judge at when there is no example input. Returns 0 (the list is advice).
    """
    from rich.markup import escape

    spec = getattr(args, "explain", None)
    if not spec:
        raise ValueError("glassquant bench needs --explain MODEL; the timing suite is `make bench` "
                         "(benchmarks/suite.py in the source tree)")
    rows = getattr(args, "rows", None)
    path = Path(spec)
    model: nn.Module | dict[str, Any]
    example = None
    if path.is_file():
        from ..export.format import load_layers

        model = load_layers(path)
        if not model:
            raise ValueError(f"{path}: the saved model has no glassquant layers")
        label = str(path)
    else:
        from ..config import StaticConfig, resolve
        from ..convert import quantize
        from ..workflow import load_calibration, load_model

        model, kind = load_model(spec)
        calibration = getattr(args, "calibration", None)
        batches = load_calibration(calibration, model, kind, getattr(args, "batch_size", 32)) if calibration else None
        example = batches[0] if batches else None
        label = spec
        if not any(isinstance(m, QuantModule) for m in model.modules()):
            preset = getattr(args, "preset", None) or "w8a8-dynamic"
            cfg = resolve(preset)
            if isinstance(cfg, StaticConfig) and batches is None:
                raise ValueError(f"preset {preset!r} is static: give --calibration data")
            model = quantize(model, cfg, batches, progress=False)
            label = f"{spec} ({preset})"
    entries = explain_slow_paths(model, example, rows=rows)
    console.print(f"slow paths of {escape(label)}:")
    console.print(escape(slowpath_markdown(entries)), soft_wrap=True)
    return 0
