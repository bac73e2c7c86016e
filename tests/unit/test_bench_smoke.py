"""The benchmark suite's smallest piece runs in-process: one Linear shape, 2 repetitions, warm and
cold, every variant, results written. No timing is asserted (speed is claimed in benchmarks/ only)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import common  # noqa: E402
import linear  # noqa: E402
import suite  # noqa: E402


@pytest.fixture
def keep_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_smallest_piece_of_the_suite(tmp_path: Path, keep_threads: None) -> None:
    machine = common.machine_info()
    assert machine.cores >= 1 and machine.int8_peak_ops > 0
    notes: list[str] = []
    bandwidth = {1: {"best_copy_bytes_per_s": 1e10}}
    rows = linear.run_section(machine, quick=True, threads=(1,), budget_s=0.0, min_reps=2, max_reps=2,
                              bandwidth=bandwidth, notes=notes, shapes=((128, 128),), ms=(1,), max_copies=3,
                              log=lambda s: None)
    assert not [n for n in notes if n.startswith("MISMATCH")]  # glassquant's static integers == torch.ao's
    warm = {r["variant"]: r for r in rows if r["regime"] == "warm"}
    cold = {r["variant"]: r for r in rows if r["regime"] == "cold"}
    glassquant = {"gq static x86", "gq static x86 forward_int", "gq static forward_int (reference)",
                  "gq dynamic per-tensor (x86)", "gq dynamic per-token (torchao)", "gq weight-only int8",
                  "gq weight-only int4 g128"}
    assert {"fp32 nn.Linear", "bf16 nn.Linear"} | glassquant <= set(warm)
    assert set(cold) == set(warm) - {"gq static forward_int (reference)"}  # the reference is timed warm only
    for r in rows:
        assert r["reps"] == 2 and r["median_us"] > 0 and math.isfinite(r["x_fp32"])
    assert warm["fp32 nn.Linear"]["x_fp32"] == 1.0
    assert all(r["copies"] == 3 and r["floor_us"] > 0 for r in cold.values())
    crossovers = suite.crossovers(rows)
    assert {c["variant"] for c in crossovers} == glassquant
    md = linear.markdown(rows)
    assert "cold weights" in md and md.count("| 1 | 1 | 128 | 128 |") == len(warm)
    json_path, md_path = common.write_results(machine, {"linear": rows, "crossovers": crossovers}, md, quick=True,
                                              out_dir=tmp_path)
    doc = json.loads(json_path.read_text())
    assert doc["machine"]["cpu"] == machine.cpu and len(doc["sections"]["linear"]) == len(rows)
    assert md_path.read_text() == md and json_path.name.endswith("-quick.json")


def test_interleaved_timing_and_table_cells() -> None:
    order: list[str] = []
    t = common.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                budget_s=0.0, min_reps=3, max_reps=3, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then rounds reversed every other time
    assert len(t["a"].samples) == 3 and t["a"].median >= 0
    assert common.fmt(0.012345) == "0.0123" and common.fmt(1234.5) == "1,234" and common.fmt(None) == "–"
    assert common.int8_peak(2, 2300.0, ["avx512_vnni"])[0] == 2 * 128 * 2 * 2300e6
