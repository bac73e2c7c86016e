"""``analysis.verify`` and the ``verify | explain | certify`` commands on a saved digits MLP.

The real runtimes are torch.ao's quantized engines (skipped with a reason on a torch
without them) and torchao; the counts compared are recomputed here from the runtimes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

import glassquant as gq
from glassquant import cli
from glassquant.analysis.verify import layer_inputs, verify
from glassquant.demo import digits
from glassquant.export.format import FormatError, load_layers

from gq_testing import needs_torch_ao


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = digits.load_digits_split()
    q = gq.quantize(copy.deepcopy(digits.digits_mlp(data)), "x86", list(data.x_train.split(200)), progress=False)
    path = tmp_path_factory.mktemp("v") / "model.safetensors"
    gq.save(q, path)
    return path


def test_load_layers(saved: Path, tmp_path: Path) -> None:
    layers = load_layers(saved)
    assert list(layers) == ["0", "2"] and all(m.kind == "QuantLinear" for m in layers.values())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(saved.read_bytes()[:-7])
    with pytest.raises(FormatError):
        load_layers(bad)


@needs_torch_ao
@pytest.mark.parametrize("engine", ["x86", "qnnpack", "onednn"])
def test_verify_static_layers(saved: Path, engine: str) -> None:
    checks = verify(load_layers(saved), engine, rows=128)
    assert [c.compared for c in checks] == [128 * 128, 128 * 10]
    assert all(c.mismatches == 0 for c in checks)
    layer = load_layers(saved)["0"]
    from glassquant.analysis.verify import RUNNERS

    real, _, _ = RUNNERS[engine](layer, layer_inputs(layer, 128, 0))
    own = layer.forward_int(layer_inputs(layer, 128, 0), fast=False)
    assert checks[0].own_differences == int((real != own).sum())


def test_verify_torchao_dynamic() -> None:
    pytest.importorskip("torchao")
    data = digits.load_digits_split()
    q = gq.quantize(copy.deepcopy(digits.digits_mlp(data)), "w8a8-dynamic", progress=False)
    checks = verify(q, "torchao", rows=200)
    assert [c.compared for c in checks] == [200 * 128, 200 * 10] and all(c.mismatches == 0 for c in checks)
    x86 = verify(q, "x86")
    assert all(c.compared == 0 and "no torch.ao counterpart" in c.note for c in x86)


@needs_torch_ao
def test_cli_verify_explain_certify(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(saved), "--against", "qnnpack"]) == 0
    out = capsys.readouterr().out
    assert "qnnpack: 0 mismatching values of 8,832 compared" in " ".join(out.split())
    assert cli.main(["explain", str(saved), "--a", "x86", "--b", "qnnpack", "--rows", "512", "--layer", "0"]) == 0
    out = capsys.readouterr().out
    assert "x86 vs qnnpack" in out and "bias quantized to int32" in out and "unexplained" not in out
    x = np.random.default_rng(0).normal(size=(50, 64)).astype(np.float32) * 4  # float input: per-dialect quantize
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["explain", str(saved), "--layer", "0", "--input", str(tmp_path / "x.npy")]) == 0
    assert cli.main(["certify", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "| 0 | 64 | [0, 255]" in out and "reduce_range" in out
    assert cli.main(["explain", str(saved), "--layer", "nope"]) == 2
    assert "no layer 'nope'" in capsys.readouterr().out
    assert cli.main(["verify", str(saved), "--against", "tensorrt"]) == 2
    np.save(tmp_path / "bad.npy", np.zeros((3, 7), np.float32))
    assert cli.main(["explain", str(saved), "--layer", "0", "--input", str(tmp_path / "bad.npy")]) == 2


@pytest.mark.needs_cc
def test_verify_against_c_and_export_c(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from glassquant.interop.c_runtime import compiler

    if compiler() is None:
        pytest.skip("no C compiler on PATH")
    checks = verify(load_layers(saved), "c", rows=300)
    assert [c.compared for c in checks] == [300 * 128, 300 * 10] and all(c.mismatches == 0 for c in checks)
    assert cli.main(["export", "c", str(saved), "--out", str(tmp_path / "c"), "--name", "digits"]) == 0
    assert (tmp_path / "c" / "digits.h").exists() and (tmp_path / "c" / "example_main.c").exists()
    assert cli.main(["verify", str(saved), "--against", "c"]) == 0
    assert "c: 0 mismatching values" in " ".join(capsys.readouterr().out.split())


def test_verify_against_onnxruntime(saved: Path) -> None:
    pytest.importorskip("onnxruntime")
    checks = verify(load_layers(saved), "onnxruntime", rows=300)
    assert [c.compared for c in checks] == [300 * 128, 300 * 10] and all(c.mismatches == 0 for c in checks)
    data = digits.load_digits_split()
    dyn = gq.quantize(copy.deepcopy(digits.digits_mlp(data)), "w8a8-dynamic-per-tensor", progress=False)
    assert all(c.mismatches == 0 and c.compared > 0 for c in verify(dyn, "onnxruntime"))


@pytest.mark.parametrize("runtime", ["litert", "litert-reference", "litert-optimized"])
def test_verify_against_litert(saved: Path, runtime: str) -> None:
    pytest.importorskip("ai_edge_litert")
    checks = verify(load_layers(saved), runtime, rows=300)
    assert [c.compared for c in checks] == [300 * 128, 300 * 10] and all(c.mismatches == 0 for c in checks)


def test_cli_export_onnx_and_tflite(saved: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    import torch

    from glassquant.interop.litert import run_tflite_model
    from glassquant.interop.onnxruntime import run_onnx_model

    data = digits.load_digits_split()
    for form in ("qdq", "qoperator"):
        assert cli.main(["export", "onnx", str(saved), "--out", str(tmp_path), "--name", f"m_{form}",
                         "--form", form]) == 0
        y = run_onnx_model(str(tmp_path / f"m_{form}.onnx"), data.x_test)
        assert digits.accuracy(y, data.y_test) > 0.95
    assert cli.main(["export", "tflite", str(saved), "--out", str(tmp_path)]) == 0
    y = run_tflite_model(tmp_path / "model.tflite", data.x_test)
    assert y.shape == (len(data.x_test), 10) and digits.accuracy(y, data.y_test) > 0.95
    assert torch.isfinite(y).all()
