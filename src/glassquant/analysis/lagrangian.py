"""The Lagrangian of rate-distortion allocation, solved exactly on a table of measured options.

A table gives, for every layer ``i`` and each of its candidates ``j``, bytes ``R_ij`` and distortion
``D_ij`` (``analysis.allocate.CandidateTable``). For ``lam >= 0`` the problem
``min sum_i D_i + lam * R_i`` separates into one ``argmin`` per layer; as ``lam`` falls from infinity to
0 each layer walks the lower convex hull of its (R, D) points, so the whole family of solutions is the
merge of the hulls' segments sorted by slope. Worked example, one layer with points (R, D) = (10, 9),
(20, 3), (30, 2), (40, 1.5): the hull is all four (slopes 0.6, 0.1, 0.05), so ``lam = 0.2`` picks (20, 3)
(cost 7 against 11, 8 and 9.5).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .allocate import CandidateTable, LayerOptions

Choice = dict[str, int]  # layer name -> index into its LayerOptions.candidates


def lagrangian_choice(table: CandidateTable, lam: float) -> Choice:
    """Per layer, ``argmin_j D_j + lam * R_j`` (ties: fewer bytes, then less distortion).

    ``lam`` is distortion per byte, >= 0 (``ValueError`` otherwise); ``lam = inf`` gives the smallest model.
    """
    if not lam >= 0:  # also catches NaN
        raise ValueError(f"lambda (lam) must be >= 0, got {lam}")
    out = {}
    for opt in table.layers:
        def cost(j: int, opt: LayerOptions = opt) -> tuple[float, int, float]:
            d, r = opt.distortion(j), opt.bytes[j]
            return (r if math.isinf(lam) else d + lam * r, r, d)
        out[opt.name] = min(range(len(opt.candidates)), key=cost)
    return out


def lower_hull(opt: LayerOptions) -> list[int]:
    """Indices of the lower convex hull of a layer's (bytes, distortion) points, fewest bytes first:
    exactly the candidates that some ``lam >= 0`` selects, from ``lam = inf`` down to 0."""
    order = sorted(range(len(opt.candidates)), key=lambda j: (opt.bytes[j], opt.distortion(j)))
    front: list[int] = []
    for j in order:  # Pareto front: strictly less distortion for more bytes
        if not front or opt.distortion(j) < opt.distortion(front[-1]):
            front.append(j)  # sorted by (bytes, D): never the same bytes as front[-1] with less D
    hull: list[int] = []
    for j in front:  # monotone chain: drop points above the segment joining their neighbours
        while len(hull) >= 2:
            (r0, d0), (r1, d1) = ((opt.bytes[i], opt.distortion(i)) for i in hull[-2:])
            if (d1 - d0) * (opt.bytes[j] - r0) >= (opt.distortion(j) - d0) * (r1 - r0):
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


@dataclass(frozen=True)
class PathPoint:
    """One Lagrangian solution: the choice, its model bytes and predicted distortion, and the largest
    ``lam`` that selects it (``inf`` for the smallest model)."""

    lam: float
    choice: Choice
    bytes: int
    distortion: float


def lagrangian_path(table: CandidateTable) -> list[PathPoint]:
    """Every distinct solution of the Lagrangian as ``lam`` falls from infinity to 0, fewest bytes first.

    Each layer steps along its :func:`lower_hull`; the step from hull point ``a`` to ``b`` happens at
    ``lam = (D_a - D_b) / (R_b - R_a)``. Steps of all layers are taken in decreasing ``lam``.
    """
    hulls = {opt.name: lower_hull(opt) for opt in table.layers}
    by_name = {opt.name: opt for opt in table.layers}
    steps = []
    for name, hull in hulls.items():
        opt = by_name[name]
        for a, b in itertools.pairwise(hull):
            steps.append(((opt.distortion(a) - opt.distortion(b)) / (opt.bytes[b] - opt.bytes[a]), name, b))
    steps.sort(key=lambda s: -s[0])
    choice = {name: hull[0] for name, hull in hulls.items()}

    def point(lam: float) -> PathPoint:
        return PathPoint(lam, dict(choice), sum(by_name[n].bytes[j] for n, j in choice.items()),
                         sum(by_name[n].distortion(j) for n, j in choice.items()))

    path = [point(math.inf)]
    for lam, name, j in steps:
        choice[name] = j
        path.append(point(lam))
    return path


def budget_point(path: Sequence[PathPoint], budget_bytes: int) -> PathPoint:
    """The path's largest solution within ``budget_bytes`` (``ValueError`` below the smallest model)."""
    if budget_bytes < path[0].bytes:
        raise ValueError(f"budget_bytes {budget_bytes} is below the smallest possible model: {path[0].bytes} bytes "
                         "(every layer at its smallest candidate)")
    return max((p for p in path if p.bytes <= budget_bytes), key=lambda p: (p.bytes, -p.distortion))


def fill_budget(table: CandidateTable, point: PathPoint, budget_bytes: int) -> PathPoint:
    """Spend what a Lagrangian solution leaves of the budget: repeatedly make the one-layer change that
    lowers the distortion most and still fits (the Lagrangian only reaches the convex hull's corners).

    Every step strictly lowers the total distortion, so it ends; ``lam`` keeps the hull point's value.
    """
    choice, used = dict(point.choice), point.bytes
    while True:
        best: tuple[float, str, int, int] | None = None
        for opt in table.layers:
            cur = choice[opt.name]
            for j in range(len(opt.candidates)):
                gain, extra = opt.distortion(cur) - opt.distortion(j), opt.bytes[j] - opt.bytes[cur]
                if gain > 0 and used + extra <= budget_bytes and (best is None or gain > best[0]):
                    best = (gain, opt.name, j, extra)
        if best is None:
            break
        _, name, j, extra = best
        choice[name], used = j, used + extra
    opts = {o.name: o for o in table.layers}
    return PathPoint(point.lam, choice, used, sum(opts[n].distortion(j) for n, j in choice.items()))


def spread(path: Sequence[PathPoint], count: int) -> list[int]:
    """Indices of up to ``count`` path solutions spread evenly in log(bytes), both ends included."""
    if count <= 0:
        return []
    lo, hi = math.log(path[0].bytes), math.log(path[-1].bytes)
    picks = set()
    for t in range(count):
        target = math.exp(lo + (hi - lo) * t / max(count - 1, 1))
        picks.add(max(i for i, p in enumerate(path) if p.bytes <= target * (1 + 1e-12)))
    return sorted(picks)
