"""Slow-path explanations: one constructed model per rule, and a near miss that must not trigger it.

Where a rule claims something about the code path (the fast kernel refuses, the fused pass is
skipped, the depthwise emulation runs), the test also checks the claim on the layer itself.
"""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
from rich.console import Console
from torch import nn

import glassquant as gq
from glassquant.analysis import slowpath
from glassquant.analysis.slowpath import (
    COMPILED_ENTRY_POINTS,
    TINY_MACS,
    WEIGHT_ONLY_FAST_M,
    compiled_kernels,
    explain_slow_paths,
    slowpath_markdown,
)
from glassquant.kernels import fused
from glassquant.kernels.cpu import PackedWeight
from glassquant.nn import conv as conv_mod
from glassquant.nn.conv import QuantConv2d
from glassquant.nn.integer import IntLinear
from glassquant.nn.linear import QuantLinear

VNNI = ("avx2", "avx512_vnni")


def _codes(entries: list[slowpath.SlowPath], layer: str | None = None) -> set[str]:
    return {e.code for e in entries if layer is None or e.layer == layer}


def _linear(k: int, n: int, preset: str = "w8a8-dynamic", calibration: torch.Tensor | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(k, n))
    return gq.quantize(model, preset, None if calibration is None else [calibration], progress=False)


def test_tiny_shape_threshold_is_strict() -> None:
    model = _linear(64, 64)
    limit = TINY_MACS["dynamic-compiled" if compiled_kernels(model[0]) else "dynamic"]
    rows = limit // (64 * 64)  # exactly the threshold
    below = explain_slow_paths(model, rows=rows - 1, flags=VNNI)
    assert "tiny-shape" in _codes(below)
    assert f"{(rows - 1) * 64 * 64:,} multiply-adds" in next(e.reason for e in below if e.code == "tiny-shape")
    assert "tiny-shape" not in _codes(explain_slow_paths(model, rows=rows, flags=VNNI))


def test_clean_model_has_no_entries() -> None:
    model = _linear(1024, 1024)
    entries = explain_slow_paths(model, rows=64, flags=VNNI)
    expected = set() if fused.available() else {"no-fused-dynamic"}
    assert _codes(entries) == expected
    if not entries:
        assert slowpath_markdown(entries).startswith("No slow paths")


def test_example_input_gives_rows_and_dtype() -> None:
    model = _linear(64, 32)
    entries = explain_slow_paths(model, torch.randn(2, 5, 64), flags=VNNI)  # M = 2 * 5
    tiny = next(e for e in entries if e.code == "tiny-shape")
    assert "10*64*32" in tiny.reason and "assumed" not in tiny.reason
    assert "non-float32-input" not in _codes(entries)
    entries = explain_slow_paths(model, torch.randn(3, 64, dtype=torch.float64), flags=VNNI)
    assert "non-float32-input" in _codes(entries)
    assert "float64" in next(e.reason for e in entries if e.code == "non-float32-input")


def test_k_alignment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slowpath, "compiled_kernels", lambda layer: set())  # the _int_mm path: groups of 4
    assert "k-alignment" in _codes(explain_slow_paths(_linear(30, 8), rows=8, flags=VNNI))
    assert "k-alignment" not in _codes(explain_slow_paths(_linear(32, 8), rows=8, flags=VNNI))
    e = next(e for e in explain_slow_paths(_linear(30, 8), flags=VNNI) if e.code == "k-alignment")
    assert "pad K to 32" in e.suggestion
    monkeypatch.setattr(slowpath, "compiled_kernels", lambda layer: {"vnni"})  # the VNNI kernel: rows of 64 bytes
    e = next(e for e in explain_slow_paths(_linear(96, 8), flags=VNNI) if e.code == "k-alignment")
    assert "pad K to 128" in e.suggestion and "25 %" in e.reason  # 32 of 128 padded bytes
    assert "k-alignment" not in _codes(explain_slow_paths(_linear(128, 8), flags=VNNI))


def _wide(k: int) -> QuantLinear:
    w_q = torch.zeros(1, k, dtype=torch.int8)
    w_q[0, :3] = torch.tensor([1, -1, 2], dtype=torch.int8)
    return QuantLinear(w_q, torch.full((1,), 0.01), torch.zeros(1, dtype=torch.int32), None, 0.1, 0, 0.1, 0,
                       check_overflow=False)


def test_k_too_large_and_the_fast_path_really_refuses() -> None:
    big, ok = _wide(2**17), _wide(2**17 - 1)
    assert "k-too-large" in _codes(explain_slow_paths({"big": big}, flags=VNNI))
    assert "k-too-large" not in _codes(explain_slow_paths({"ok": ok}, flags=VNNI))
    with pytest.raises(ValueError, match="overflow"):
        PackedWeight.pack(big.w_q, big.w_zero_point)
    PackedWeight.pack(ok.w_q, ok.w_zero_point)  # one less: the fast path accepts it


def test_no_vnni_and_saturating_pairs() -> None:
    w_sat = torch.full((2, 8), 127, dtype=torch.int8)  # pair sums up to 2 * 127 * 255 > 32767
    w_small = torch.ones((2, 8), dtype=torch.int8)
    layers = {n: QuantLinear(w, torch.full((2,), 0.01), torch.zeros(2, dtype=torch.int32), None, 0.1, 0, 0.1, 0)
              for n, w in (("sat", w_sat), ("small", w_small))}
    entries = explain_slow_paths(layers, flags=("avx2",))
    by_layer = {e.layer: e for e in entries if e.code == "no-vnni"}
    assert set(by_layer) == {"sat", "small"}
    assert "saturate" in by_layer["sat"].reason and "saturate" not in by_layer["small"].reason.split(":")[-1]
    for flags in (("avx2", "avx512_vnni"), ("avx2", "avx_vnni"), ("amx_int8",)):
        assert "no-vnni" not in _codes(explain_slow_paths(layers, flags=flags))
    wo = _linear(64, 64, "w8-weight-only")  # a float matmul: VNNI does not matter
    assert "no-vnni" not in _codes(explain_slow_paths(wo, flags=("avx2",)))


def test_float_layers_are_listed_with_the_reason() -> None:
    torch.manual_seed(0)
    model = gq.quantize(nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024)), "w8a8-dynamic",
                        exclude=["2"], progress=False)
    entries = [e for e in explain_slow_paths(model, rows=64, flags=VNNI) if e.code == "float-layer"]
    assert [e.layer for e in entries] == ["2"]
    assert "excluded by pattern" in entries[0].reason and "quantize it" in entries[0].suggestion
    small = [e for e in explain_slow_paths(model, rows=1, flags=VNNI) if e.code == "float-layer"]
    assert "fine as it is" in small[0].suggestion  # 1 * 1024 * 1024 < the size where int8 wins
    plain = nn.Sequential(nn.Linear(8, 8))  # nothing quantized: every matmul is float
    assert [e.code for e in explain_slow_paths(plain, flags=VNNI)] == ["float-layer"]


def test_weight_only_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from glassquant.kernels import weight_only as wo_kernels
    from glassquant.nn.weight_only import PackedWeightOnlyLinear

    model = _linear(128, 64, "w8-weight-only")
    small = _codes(explain_slow_paths(model, rows=WEIGHT_ONLY_FAST_M, flags=VNNI))
    assert ("weight-only-dequantize" in small) == (not wo_kernels.available())  # the streaming kernel
    large = next(e for e in explain_slow_paths(model, rows=WEIGHT_ONLY_FAST_M + 1, flags=VNNI)
                 if e.code == "weight-only-dequantize")
    assert "w8a8-dynamic" in large.suggestion
    monkeypatch.setattr(wo_kernels, "available", lambda: False)  # as if built without a C compiler
    e = next(e for e in explain_slow_paths(model, rows=1, flags=VNNI) if e.code == "weight-only-dequantize")
    assert "not built" in e.reason and "C compiler" in e.suggestion
    monkeypatch.undo()
    packed = nn.Sequential(PackedWeightOnlyLinear.from_float(nn.Linear(128, 64), bits=3, granularity="per_channel"))
    assert "weight-only-unpack" in _codes(explain_slow_paths(packed, rows=1, flags=VNNI))
    four = nn.Sequential(PackedWeightOnlyLinear.from_float(nn.Linear(128, 64), bits=4, granularity="per_channel"))
    assert "weight-only-unpack" not in _codes(explain_slow_paths(four, rows=1, flags=VNNI))
    assert "weight-only-dequantize" not in _codes(explain_slow_paths(_linear(128, 64), rows=64, flags=VNNI))


def _spied_kernels(layer: nn.Module, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The compiled entry points one float32 call of ``layer`` enters, seen by replacing them with spies."""
    import importlib

    hits: set[str] = set()
    for module_name, function in COMPILED_ENTRY_POINTS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        real = getattr(module, function)
        label = module_name.rsplit(".", 1)[-1]
        monkeypatch.setattr(module, function, lambda *a, real=real, label=label, **k: hits.add(label) or real(*a, **k))
    with torch.no_grad():
        layer(torch.randn(3, layer.in_features))
    monkeypatch.undo()
    return hits


def test_compiled_kernels_agree_with_spies(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    layers = [_linear(256, 128, p)[0] for p in ("w8a8-dynamic", "w8a8-dynamic-per-tensor")]
    layers.append(_linear(256, 128, "x86", torch.randn(64, 256))[0])
    seen = [compiled_kernels(m) for m in layers]
    assert seen == [_spied_kernels(m, monkeypatch) for m in layers]
    from glassquant.kernels import vnni

    if vnni.available():
        assert all("vnni" in s for s in seen)
    elif fused.available():
        assert "fused" in seen[0]  # the per-token layer's compiled passes are recognised


def test_dynamic_without_fused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    per_tensor = _linear(256, 256, "w8a8-dynamic-per-tensor")
    per_token = _linear(256, 256, "w8a8-dynamic")
    for model in (per_tensor, per_token):
        flagged = "no-fused-dynamic" in _codes(explain_slow_paths(model, rows=4096, flags=VNNI))
        assert flagged is not compiled_kernels(model[0])
    monkeypatch.setattr(fused, "available", lambda: False)  # as if _fused.c were not built
    if compiled_kernels(per_token[0]):  # another compiled kernel (VNNI) still serves it
        return
    e = next(e for e in explain_slow_paths(per_token, rows=4096, flags=VNNI) if e.code == "no-fused-dynamic")
    assert "kernels/_fused.c" in e.reason and "separate torch passes" in e.reason


def _depthwise(engine: str, groups: int = 8) -> nn.Module:
    torch.manual_seed(0)
    c = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
    return nn.Sequential(QuantConv2d.from_float(c, 0.05, 0, 0.05, 0, engine=engine))


def test_fbgemm_depthwise_emulation_is_a_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    x_q = torch.full((1, 8, 6, 6), 200, dtype=torch.uint8)  # above 127: fbgemm's int16 pairs may saturate
    calls: list[int] = []
    real = conv_mod.fbgemm_depthwise_accumulate
    monkeypatch.setattr(conv_mod, "fbgemm_depthwise_accumulate", lambda *a, **k: calls.append(1) or real(*a, **k))
    for engine, groups, flagged in (("fbgemm", 8, True), ("qnnpack", 8, False), ("fbgemm", 1, False)):
        model = _depthwise(engine, groups)
        assert ("reference-path" in _codes(explain_slow_paths(model, rows=36, flags=VNNI))) is flagged
        calls.clear()
        model[0].forward_int(x_q)
        assert (calls == [1]) is flagged  # the claim holds: the emulation runs exactly when flagged


def test_int_linear_is_reference_only() -> None:
    static = _linear(32, 16, "x86", torch.randn(64, 32))[0]
    entries = explain_slow_paths({"int": IntLinear.from_quant_linear(static), "q": static}, rows=4096, flags=VNNI)
    assert "reference-path" in _codes(entries, "int") and "reference-path" not in _codes(entries, "q")


def test_conv_rows_come_from_the_output() -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2))
    q = gq.quantize(cnn, "x86", [torch.rand(16, 1, 8, 8)], progress=False)
    entries = explain_slow_paths(q, torch.rand(2, 1, 8, 8), flags=VNNI)
    tiny = {e.layer: e.reason for e in entries if e.code == "tiny-shape"}
    assert "128*9*16" in tiny["0"] and "32*144*32" in tiny["2"]  # M = 2*8*8 and 2*4*4, K = C_in*3*3
    assert "k-alignment" in _codes(entries, "0") and "k-alignment" not in _codes(entries, "2")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rows"):
        explain_slow_paths(_linear(8, 8), rows=0)
    with pytest.raises(ValueError, match="whole model"):
        explain_slow_paths({"a": _linear(8, 8)[0]}, torch.randn(1, 8))
    with pytest.raises(ValueError, match="example input"):
        explain_slow_paths(_linear(8, 8), torch.randn(1, 9))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        explain_slow_paths(42)  # type: ignore[arg-type]


def _console() -> Console:
    return Console(record=True, width=400)


def test_bench_explain_command_on_saved_and_factory_models(tmp_path) -> None:
    from glassquant.export.format import save

    model = _linear(30, 8, "w8a8-dynamic-per-tensor")
    save(copy.deepcopy(model), tmp_path / "model.safetensors")
    console = _console()
    args = argparse.Namespace(explain=str(tmp_path / "model.safetensors"), rows=None, preset=None, calibration=None)
    assert slowpath.bench_explain_command(args, console) == 0
    text = console.export_text()
    from glassquant.kernels import vnni

    assert "k-alignment" in text and ("no-fused-dynamic" in text) == (not vnni.available()) and "| 0 |" in text
    console = _console()
    args = argparse.Namespace(explain="glassquant.demo.digits:make_mlp", rows=32, preset="w8-weight-only",
                              calibration=None, batch_size=32)
    assert slowpath.bench_explain_command(args, console) == 0
    text = console.export_text()
    assert "weight-only-dequantize" in text and "w8-weight-only" in text
    with pytest.raises(ValueError, match="static"):
        slowpath.bench_explain_command(argparse.Namespace(explain="glassquant.demo.digits:make_mlp", rows=None,
                                                          preset="x86", calibration=None), _console())
    with pytest.raises(ValueError, match="make bench"):
        slowpath.bench_explain_command(argparse.Namespace(explain=None), _console())


def test_markdown_lists_every_entry_and_counts() -> None:
    entries = explain_slow_paths(_linear(30, 8, "w8a8-dynamic-per-tensor"), flags=("avx2",))
    md = slowpath_markdown(entries)
    assert md.count("\n| 0 |") == len(entries) >= 3
    assert f"{len(entries)} slow paths in 1 layers" in md
