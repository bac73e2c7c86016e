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
    # the README summary: one row per (threads, K, N, M), ratios of the same rounds' medians
    (summary,) = suite.linear_summary(rows)
    assert summary["shape"] == "128×128" and summary["M"] == 1
    assert summary["static_x_ao"] == pytest.approx(warm["torch.ao static (float in/out)"]["median_us"]
                                                   / warm["gq static x86"]["median_us"])
    # --render rebuilds the Markdown from the JSON alone
    from dataclasses import asdict

    bandwidth = {1: {"copy_bytes_per_s": 1e10, "best_copy_bytes_per_s": 1e10, "read_bytes_per_s": 1e10}}
    sections = {"bandwidth": bandwidth, "measured_int8_peak_ops": {}, "linear": rows, "crossovers": crossovers,
                "minilm": [], "digits": [], "conversion": []}
    json_path, md_path = common.write_results(machine, sections, "", quick=True, out_dir=tmp_path,
                                              meta={"plan": asdict(suite.Plan.make(True)), "seconds": 1.0,
                                                    "notes": []})
    assert suite.render(json_path) == md_path and "### Summary" in md_path.read_text()
    readme = suite.readme_markdown(json_path)
    assert "| 1 | 128×128 | 1 |" in readme and "floor µs" in readme and "int4 g128 weight-only ÷ N·K" in readme


def test_interleaved_timing_and_table_cells() -> None:
    order: list[str] = []
    t = common.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                budget_s=0.0, min_reps=3, max_reps=3, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then rounds reversed every other time
    assert len(t["a"].samples) == 3 and t["a"].median >= 0
    order.clear()
    common.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                            budget_s=0.0, min_reps=2, max_reps=2, warmup=1, warm_cache=True)
    assert order == ["a", "b", "a", "a", "b", "b", "b", "b", "a", "a"]  # each timed call right after its own
    assert common.fmt(0.012345) == "0.0123" and common.fmt(1234.5) == "1,234" and common.fmt(None) == "–"
    assert common.int8_peak(2, 2300.0, ["avx512_vnni"])[0] == 2 * 128 * 2 * 2300e6


def test_resident_bytes_counts_each_storage_once() -> None:
    from dataclasses import dataclass

    lin = torch.nn.Linear(16, 8)
    assert common.resident_bytes(lin) == 4 * (16 * 8 + 8)

    @dataclass
    class Plan:
        tensors: tuple[torch.Tensor, ...]

    extra = torch.zeros(100, dtype=torch.int8)
    lin.plan = Plan((extra, extra[10:], lin.weight.data))  # a view and a shared weight add nothing new
    assert common.resident_bytes(lin) == 4 * (16 * 8 + 8) + 100
    lin.cache = {"w_t": lin.weight.detach().t().contiguous()}  # a real copy counts
    assert common.resident_bytes(lin) == 4 * (2 * 16 * 8 + 8) + 100


def test_linear_rows_report_measured_weight_memory(keep_threads: None) -> None:
    machine = common.machine_info()
    notes: list[str] = []
    rows = linear.run_section(machine, quick=True, threads=(1,), budget_s=0.0, min_reps=1, max_reps=1,
                              bandwidth={1: {"best_copy_bytes_per_s": 1e10}}, notes=notes, shapes=((256, 512),),
                              ms=(8,), log=lambda s: None)
    held = {r["variant"]: r["resident_x_nk"] for r in rows}
    assert held["fp32 nn.Linear"] == pytest.approx(4 + 4 / 256)
    assert held["bf16 nn.Linear"] == pytest.approx(2 + 2 / 256)
    assert held["torch.ao dynamic (x86)"] is None  # opaque C++ packed params: not guessed
    assert 1.0 < held["gq dynamic per-token (torchao)"] < 1.2
    assert 0.5 < held["gq weight-only int4 g128"] < 0.6
    assert "Weight memory" in linear.markdown(rows)
