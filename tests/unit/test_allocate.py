"""Rate-distortion bit allocation (``analysis.allocate``, ``analysis.lagrangian``, ``analysis.allocate_cli``).

References: brute force over every combination of a small table for the Lagrangian; the layer outputs
recomputed here for the measured distortion; ``Fraction`` floors for the price tags; the digits test
accuracy of each model actually run for the Pareto claims.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from torch import nn

import glassquant as gq
from glassquant.analysis import allocate as al
from glassquant.analysis.allocate_cli import allocate_command, plot_pricetag_curve, pricetag_distortion_curve
from glassquant.analysis.lagrangian import budget_point, fill_budget, lagrangian_choice, lagrangian_path, lower_hull
from glassquant.demo import digits
from glassquant.nn.weight_only import PackedWeightOnlyLinear

pytestmark = pytest.mark.usefixtures("one_thread")

DUMMY = al.Candidate(4, "per_channel")


def table_of(layers: list[list[tuple[int, float]]]) -> al.CandidateTable:
    """A table from per-layer (bytes, distortion) lists (the candidates themselves do not matter here)."""
    return al.CandidateTable(tuple(al.LayerOptions(f"l{i}", 1, 1, (DUMMY,) * len(pts), tuple(b for b, _ in pts),
                                                   tuple(d for _, d in pts), 1.0, 1)
                                   for i, pts in enumerate(layers)), "layer")


def brute_force(table: al.CandidateTable, lam: float) -> float:
    """min over every combination of sum D + lam * R."""
    return min(sum(o.distortion(j) + lam * o.bytes[j] for o, j in zip(table.layers, combo, strict=True))
               for combo in itertools.product(*(range(len(o.bytes)) for o in table.layers)))


def objective(table: al.CandidateTable, choice: dict[str, int], lam: float) -> float:
    return sum(o.distortion(choice[o.name]) + lam * o.bytes[choice[o.name]] for o in table.layers)


# ----- the Lagrangian, against brute force ------------------------------------------------------------------

points = st.lists(st.tuples(st.integers(1, 60), st.integers(0, 1000).map(float)), min_size=1, max_size=5)


@settings(max_examples=150)
@given(st.lists(points, min_size=1, max_size=3), st.lists(st.floats(0, 200), min_size=1, max_size=6))
def test_lagrangian_choice_and_path_are_optimal(layers: list[list[tuple[int, float]]], lams: list[float]) -> None:
    table = table_of(layers)
    for lam in lams:
        assert math.isclose(objective(table, lagrangian_choice(table, lam), lam), brute_force(table, lam),
                            rel_tol=1e-12, abs_tol=1e-9)
    path = lagrangian_path(table)
    assert path[0].bytes == table.min_bytes()
    for p, q in itertools.pairwise(path):
        assert p.bytes < q.bytes and p.distortion > q.distortion
    for p in path[1:]:  # each solution minimizes the Lagrangian at its own lam (a breakpoint: a tie)
        assert math.isclose(objective(table, p.choice, p.lam), brute_force(table, p.lam), rel_tol=1e-12, abs_tol=1e-9)
    zero = lagrangian_choice(table, 0.0)
    assert path[-1].distortion == sum(o.distortion(zero[o.name]) for o in table.layers)


def test_point_above_the_hull_is_never_chosen() -> None:
    """(20, 6) is Pareto-optimal (fewer bytes than (30, 2), less distortion than (10, 9)) but above the
    segment joining them (5.5 at 20 bytes): no lam picks it. A rule that walked the Pareto front would."""
    table = table_of([[(10, 9.0), (20, 6.0), (30, 2.0)]])
    assert lower_hull(table.layers[0]) == [0, 2]
    picked = {lagrangian_choice(table, lam)["l0"] for lam in [i / 100 for i in range(0, 200)]}
    assert picked == {0, 2}
    assert [p.choice["l0"] for p in lagrangian_path(table)] == [0, 2]
    # the budget of exactly 20 bytes gets the hull corner (10, 9); filling spends the rest on (20, 6)
    path = lagrangian_path(table)
    assert budget_point(path, 25).choice == {"l0": 0}
    assert fill_budget(table, budget_point(path, 25), 25).choice == {"l0": 1}


def test_lagrangian_worked_example_and_bad_lambda() -> None:
    table = table_of([[(10, 9.0), (20, 3.0), (30, 2.0), (40, 1.5)]])
    assert lagrangian_choice(table, 0.2) == {"l0": 1}
    assert lagrangian_choice(table, math.inf) == {"l0": 0} and lagrangian_choice(table, 0.0) == {"l0": 3}
    for lam in (-1e-9, float("nan")):
        with pytest.raises(ValueError, match="lambda"):
            lagrangian_choice(table, lam)
    with pytest.raises(ValueError, match="below the smallest possible model: 10 bytes"):
        budget_point(lagrangian_path(table), 9)


# ----- digits MLP: measured distortion, the Pareto claim, apply / save / load -----------------------------------



@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def mlp(data: digits.Digits) -> nn.Sequential:
    return digits.digits_mlp(data)


@pytest.fixture(scope="module")
def calibration(data: digits.Digits) -> list[torch.Tensor]:
    return list(data.x_train[:512].split(128))


@pytest.fixture(scope="module")
def table(mlp: nn.Sequential, calibration: list[torch.Tensor]) -> al.CandidateTable:
    return al.measure_candidates(mlp, calibration)  # auto: few runs, so the model-output distortion


def accuracy(data: digits.Digits) -> Callable[[nn.Module], float]:
    return lambda m: digits.accuracy(m(data.x_test), data.y_test)


def test_distortion_is_the_real_output_error(mlp: nn.Sequential, calibration: list[torch.Tensor]) -> None:
    cands = (al.Candidate(3, "per_group", 32, "mse"), al.Candidate(8, "per_tensor", None, 0.9))
    x = torch.cat(calibration)  # (512, 64): every row, below max_rows
    for mode in ("layer", "model"):
        tab = al.measure_candidates(mlp, calibration, candidates=cands, distortion=mode)
        assert tab.distortion == mode and [o.name for o in tab.layers] == ["0", "2"]
        for opt in tab.layers:
            assert opt.rows == 512 and opt.weight == 1.0
            for c, size, sse in zip(opt.candidates, opt.bytes, opt.sse, strict=True):
                q = PackedWeightOnlyLinear.from_float(mlp.get_submodule(opt.name), bits=c.bits,
                                                      granularity=c.granularity, group_size=c.group_size, clip=c.clip)
                assert size == q.weight_bytes()
                with torch.no_grad():
                    if mode == "layer":
                        inp = x if opt.name == "0" else torch.relu(mlp[0](x))
                        ref, out = mlp.get_submodule(opt.name)(inp), q(inp)
                    else:
                        mixed = copy.deepcopy(mlp)
                        setattr(mixed, opt.name, q)
                        ref, out = mlp(x), mixed(x)
                expected = float(((out.double() - ref.double()) ** 2).sum())
                assert math.isclose(sse, expected, rel_tol=1e-9), (mode, opt.name, c)


UNIFORM = [al.Candidate(b, g, gs) for b in (8, 4, 3, 2)
           for g, gs in (("per_channel", None), ("per_group", 32), ("per_tensor", None))]


def test_digits_allocation_dominates_uniform_bit_widths(mlp: nn.Sequential, calibration: list[torch.Tensor],
                                                         table: al.CandidateTable, data: digits.Digits) -> None:
    """At the byte count of every uniform setting (8/4/3/2 bits per channel, group 32, per tensor), the
    allocation within that budget is no larger and its measured test accuracy is no lower."""
    metric = accuracy(data)
    ref = al.allocate(mlp, calibration, metric, lam=0.0, table=table, uniform=UNIFORM, pareto_points=8)
    assert len(ref.uniform) == len(UNIFORM) and len(ref.pareto) >= 6
    rows = []
    for u in ref.uniform:
        a = al.allocate(mlp, calibration, metric, budget_bytes=u.weight_bytes, table=table)
        rows.append((u.label, u.weight_bytes, u.metric, a.weight_bytes, a.metric))
        assert a.weight_bytes <= u.weight_bytes and a.metric is not None and u.metric is not None
        assert a.metric >= u.metric, rows[-1]
    print("\n".join(f"{r[0]:24s} {r[1]:6d} B acc {r[2]:.4f} | allocated {r[3]:6d} B acc {r[4]:.4f}" for r in rows))
    # strictly better somewhere that matters: 2 bits per channel loses > 4 points, the allocation < 2
    two = next(r for r in rows if r[0] == "uniform 2b ch c1.00")
    assert two[2] < ref.float_metric - 0.04 and two[4] > ref.float_metric - 0.02  # type: ignore[operator]
    sizes = [p.weight_bytes for p in ref.pareto]
    assert sizes == sorted(sizes) and ref.pareto[-1].metric == pytest.approx(ref.float_metric, abs=0.005)


def test_apply_save_load_and_max_drop(mlp: nn.Sequential, calibration: list[torch.Tensor], table: al.CandidateTable,
                                      data: digits.Digits, tmp_path: Path) -> None:
    metric = accuracy(data)
    a = al.allocate(mlp, calibration, metric, max_drop=0.01, table=table)
    assert a.float_metric is not None and a.metric is not None and a.float_metric - a.metric <= 0.01
    smaller = al.allocate(mlp, calibration, metric, budget_bytes=a.weight_bytes - 1, table=table, fill=False)
    assert smaller.weight_bytes < a.weight_bytes  # a smaller Lagrangian solution exists, and it drops more
    model = al.apply_allocation(copy.deepcopy(mlp), a)
    assert all(isinstance(model.get_submodule(n), PackedWeightOnlyLinear) for n in a.choices)
    assert sum(model.get_submodule(n).weight_bytes() for n in a.choices) == a.weight_bytes
    assert metric(model) == a.metric  # the reported metric is the applied model's
    gq.save(model, tmp_path / "m.safetensors")
    reloaded = gq.load(tmp_path / "m.safetensors")
    assert torch.equal(reloaded(data.x_test), model(data.x_test))
    assert [m.bits for m in reloaded.modules() if isinstance(m, PackedWeightOnlyLinear)] == \
        [c.bits for c in a.choices.values()]
    with pytest.raises(ValueError, match=r"not a float nn\.Linear"):
        al.apply_allocation(model, a)

    def float_only(m: nn.Module) -> float:  # 1 for the float model, 0 for any quantized one
        return 0.0 if any(isinstance(x, PackedWeightOnlyLinear) for x in m.modules()) else 1.0
    with pytest.raises(ValueError, match=r"max_drop 0\.5 cannot be met: the most accurate allocation drops the "
                                         r"metric by 1"):
        al.allocate(mlp, calibration, float_only, max_drop=0.5, table=table)


def test_bad_input(mlp: nn.Sequential, calibration: list[torch.Tensor], table: al.CandidateTable) -> None:
    smallest = table.min_bytes()
    with pytest.raises(ValueError, match=f"below the smallest possible model: {smallest} bytes"):
        al.allocate(mlp, calibration, None, budget_bytes=smallest - 1)  # checked before measuring
    assert al.allocate(mlp, calibration, None, budget_bytes=smallest, table=table).weight_bytes == smallest
    with pytest.raises(ValueError, match=r"lambda \(lam\) must be >= 0"):
        al.allocate(mlp, calibration, None, lam=-0.5, table=table)
    with pytest.raises(ValueError, match="calibration set is empty"):
        al.allocate(mlp, [], None, budget_bytes=10**6)
    with pytest.raises(ValueError, match="calibration set is empty"):
        al.measure_candidates(mlp, iter([]))
    with pytest.raises(ValueError, match="exactly one of budget_bytes, max_drop or lam"):
        al.allocate(mlp, calibration, None, budget_bytes=10**6, lam=1.0, table=table)
    with pytest.raises(ValueError, match="max_drop must be >= 0 and needs a metric"):
        al.allocate(mlp, calibration, None, max_drop=0.01, table=table)
    with pytest.raises(ValueError, match=r"has no float nn\.Linear"):
        al.measure_candidates(nn.Sequential(nn.ReLU()), calibration)
    with pytest.raises(ValueError, match="distortion must be"):
        al.measure_candidates(mlp, calibration, distortion="psnr")


def test_table_json_round_trip(table: al.CandidateTable) -> None:
    again = al.CandidateTable.from_json(table.to_json())
    assert again == table


# ----- the price tags and the command -------------------------------------------------------------------------


def test_pricetag_curve_matches_exact_floors(tmp_path: Path) -> None:
    prices = [Fraction(p) for p in ("1.99", "2.00", "0.59", "12.30", "8.50", "8.99")]
    pts = {p.grid: p for p in pricetag_distortion_curve()}
    for grid, (levels, sse) in {Decimal("0.2"): (6, Fraction("0.1283")), Decimal(1): (5, Fraction("2.6483")),
                                Decimal(10): (2, Fraction("166.6683"))}.items():
        tags = [Fraction(grid) * math.floor(p / Fraction(grid)) for p in prices]
        assert (len(set(tags)), sum((t - p) ** 2 for t, p in zip(tags, prices, strict=True))) == (levels, sse)
        assert (pts[grid].levels, Fraction(pts[grid].distortion)) == (levels, sse)
    hull = [p for p in pts.values() if p.lam_range is not None]
    # the post's $1 grid loses to $0.50 (same 5 tags, less loss); its $10 grid is never the best trade
    assert sorted(p.grid for p in hull) == [Decimal("0.01"), Decimal("0.5"), Decimal(2), Decimal("2.5"), Decimal(20)]
    for p in hull:  # a lam inside each range picks that grid among all of them
        lo, hi = p.lam_range  # type: ignore[misc]
        lam = (lo + hi) / 2 if hi is not None else lo + 1
        best = min(pts.values(), key=lambda q: (Fraction(q.distortion) + lam * q.levels, q.levels))
        assert (best.levels, best.distortion) == (p.levels, p.distortion)
    assert plot_pricetag_curve(tmp_path / "tags.png").stat().st_size > 1000


def test_cli_allocate_digits(tmp_path: Path, mlp: nn.Sequential) -> None:
    args = argparse.Namespace(model="glassquant.demo.digits:digits_mlp", budget_bytes=5000, max_drop=None,
                              calibration=None, out=tmp_path / "out", batch_size=32, bits="2,3,4,8", pareto_points=6,
                              distortion="auto", max_rows=1024)
    console = Console(record=True, width=200)
    assert allocate_command(args, console) == 0
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "allocation.md", "allocation.json", "pareto.png"}
    text = (out / "allocation.md").read_text()
    assert "| 0 | (128, 64) |" in text and "uniform 8b ch" in text and "uniform 4b ch" in text
    model = gq.load(out / "model.safetensors")
    assert sum(m.weight_bytes() for m in model.modules() if isinstance(m, PackedWeightOnlyLinear)) <= 5000
    args.max_drop = 0.01
    with pytest.raises(ValueError, match="exactly one of --budget-bytes or --max-drop"):
        allocate_command(args, console)
