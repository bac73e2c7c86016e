"""``glassquant quantize`` / ``report`` from the command line: outputs, round trip, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import glassquant as gq
from glassquant import cli
from glassquant.demo import digits

FACTORY = "glassquant.demo.digits:make_mlp"


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    x = digits.load_digits_split().x_train[:256].numpy()
    p = tmp_path / "calib.npy"
    np.save(p, x)
    return p


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    return code, capsys.readouterr().out


@pytest.mark.parametrize("preset", ["x86", "w8a8-dynamic", "w4g32-weight-only"])
def test_quantize_python_factory_writes_model_and_report(preset: str, calib: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, text = run(capsys, "quantize", FACTORY, "--preset", preset, "--calibration", str(calib), "--out", str(out))
    assert code == 0, text
    assert (out / "model.safetensors").exists() and (out / "report.md").exists() and (out / "sqnr.png").exists()
    assert "| layer | kind | SQNR dB" in (out / "report.md").read_text()
    n_int = 0 if preset.endswith("weight-only") else 2  # integer layers of the factory's MLP
    assert f"of {n_int} integer layers safe for every input" in " ".join(text.split())
    if n_int:
        assert "## Overflow certificates" in (out / "report.md").read_text()
    loaded = gq.load(out / "model.safetensors")  # an nn.Sequential: rebuilt without a skeleton
    again = gq.load(out / "model.safetensors")
    x = torch.from_numpy(np.load(calib))[:32]
    with torch.no_grad():
        assert torch.equal(loaded(x), again(x))
    assert "converted 2 layers" in text


def test_report_with_sensitivity(calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    code, text = run(capsys, "report", FACTORY, "--preset", "x86", "--calibration", str(calib), "--out", str(out),
                     "--sensitivity")
    assert code == 0, text
    md = (out / "report.md").read_text()
    assert "Sensitivity" in md and md.count("| 0 |") + md.count("| 2 |") >= 2
    hists = sorted(p.name for p in out.glob("hist-*.png"))
    assert hists == ["hist-0.png", "hist-2.png"] and all(f"]({h})" in md for h in hists)


def test_errors_are_clear(calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "o")
    code, text = run(capsys, "quantize", str(tmp_path / "nope"), "--out", out)
    assert code == 2 and "does not exist" in text
    code, text = run(capsys, "quantize", "torch.nn:ReLU", "--preset", "w8a8-dynamic", "--out", out)
    assert code == 2 and "no layer to quantize" in text
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((8, 10), dtype=np.float32))
    code, text = run(capsys, "quantize", FACTORY, "--preset", "x86", "--calibration", str(bad), "--out", out)
    assert code == 2 and "does not fit the model" in text and "(8, 10)" in text
    nan = tmp_path / "nan.npy"
    arr = np.load(calib)
    arr[3, 5] = np.nan
    np.save(nan, arr)
    code, text = run(capsys, "quantize", FACTORY, "--preset", "x86", "--calibration", str(nan), "--out", out)
    assert code == 2 and "NaN" in text
    code, text = run(capsys, "quantize", FACTORY, "--preset", "x86", "--out", out)
    assert code == 2 and "static" in text and "--calibration" in text
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    code, text = run(capsys, "quantize", FACTORY, "--preset", "x86", "--calibration", str(empty), "--out", out)
    assert code == 2 and "empty" in text
    code, text = run(capsys, "quantize", FACTORY, "--preset", "nope", "--out", out)
    assert code == 2 and "unknown preset" in text
