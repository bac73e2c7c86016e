"""The guided tour runs end to end and proves 0 mismatching integers."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from glassquant import cli
from glassquant.demo import tour

from gq_testing import needs_torch_ao


@needs_torch_ao
def test_demo_tour_reports_zero_mismatches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSQUANT_CACHE", str(tmp_path))
    console = Console(record=True, width=120)
    result = tour.run(console)
    text = console.export_text()
    assert result["mismatches"] == 0 and result["final_outputs_equal"] == 1
    assert "mismatching output integers: 0" in text
    assert "-24.37" in text and "-141" in text  # the seed post's tables and the sign-corrected zero point
    assert result["float_accuracy"] > 0.95
    assert list(tmp_path.glob("*.safetensors"))  # the trained weights were cached, as safetensors
    # the second run loads the cache and gives the same numbers
    again = tour.run(Console(record=True, width=120))
    assert again["int8_accuracy"] == result["int8_accuracy"]


def test_cli_demo_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo"]) == 0
    assert "One output integer accounted for" in capsys.readouterr().out
