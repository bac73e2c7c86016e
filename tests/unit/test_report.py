"""Per-layer reports: SQNR, clipping, sensitivity and plots."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

import glassquant as gq
from glassquant.analysis import report
from glassquant.demo import digits


@pytest.fixture(scope="module")
def setup() -> tuple:
    data = digits.load_digits_split()
    model = digits.digits_mlp(data)
    cal = list(data.x_train.split(256))
    q = gq.quantize(copy.deepcopy(model), "x86", cal, progress=False)
    return data, model, q, cal


def test_sqnr_db_matches_definition() -> None:
    ref = torch.tensor([3.0, -4.0])  # power 25
    got = torch.tensor([3.0, -3.0])  # noise 1
    assert report.sqnr_db(ref, got) == pytest.approx(10 * math.log10(25.0), abs=1e-12)
    assert report.sqnr_db(ref, ref) == math.inf
    assert report.sqnr_db(torch.zeros(2), torch.ones(2)) == -math.inf


def test_layer_report_numbers(setup: tuple) -> None:
    data, model, q, _ = setup
    reps = report.layer_report(model, q, [data.x_test])
    assert [r.name for r in reps] == ["0", "2"]
    first = reps[0]
    # independent: the float layer-0 output (with its fused ReLU) against the int8 model's
    with torch.no_grad():
        ref = model[1](model[0](data.x_test))
        got = q[0](data.x_test)
    assert first.sqnr_db == pytest.approx(report.sqnr_db(ref, got))
    assert first.sqnr_db == first.sqnr_isolated_db  # first layer: same input either way
    assert first.sqnr_db > 25
    s, z = q[0].y_scale, q[0].y_zero_point
    lo, hi = (z - z) * s, (255 - z) * s
    expected_clip = float(((ref < lo) | (ref > hi)).double().mean() * 100)
    assert first.clipped_percent == pytest.approx(expected_clip)
    assert first.representable_max == pytest.approx(hi) and first.scale == pytest.approx(s)
    assert reps[1].sqnr_isolated_db >= reps[1].sqnr_db - 1e-9 or reps[1].sqnr_isolated_db > 20


def test_more_clipping_when_range_is_too_small(setup: tuple) -> None:
    data, model, q, _ = setup
    narrow = copy.deepcopy(q)
    narrow[2].y_scale = q[2].y_scale / 4  # a quarter of the range: outputs must clip
    wide = report.layer_report(model, q, [data.x_test])[1]
    cut = report.layer_report(model, narrow, [data.x_test])[1]
    assert cut.clipped_percent > wide.clipped_percent
    assert cut.sqnr_db < wide.sqnr_db


def test_sensitivity_and_written_report(setup: tuple, tmp_path: Path) -> None:
    data, model, q, cal = setup

    def accuracy(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return digits.accuracy(m(data.x_test), data.y_test)

    sens = report.sensitivity(model, lambda m, n: gq.quantize(m, "x86", cal, include=[n], progress=False),
                              accuracy, ["0", "2"])
    assert sorted(n for n, _ in sens) == ["0", "2"] and all(0.9 < v <= 1 for _, v in sens)
    reps = report.layer_report(model, q, [data.x_test])
    path = report.write_report(reps, tmp_path, sens=sens, sens_metric="accuracy",
                               histograms={"0": (model[0](data.x_test).detach(), (q[0].y_scale, q[0].y_zero_point,
                                                                                   0.0, 255 * q[0].y_scale))})
    text = path.read_text()
    assert "| 0 | QuantLinear |" in text and "Sensitivity" in text
    for png in ("sqnr.png", "hist-0.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "layers.json").exists()


def test_report_needs_quantized_layers(setup: tuple) -> None:
    data, model, _, _ = setup
    with pytest.raises(ValueError, match="no glassquant layer"):
        report.layer_report(model, copy.deepcopy(model), [data.x_test])
