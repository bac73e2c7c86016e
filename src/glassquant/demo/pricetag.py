"""The seed post's price-tag example, computed: floor tags, its two-point fit, its int8 formulas.

Every number the demo shows is computed here from the prices; the post's printed values are
kept as data (``post_printed_tables``, ``POST_PRINTED_FIT``) only to be shown beside them.
What the code finds (``post_table_differences``, ``two_point_fit``, ``int8_qparams_post``):

- grid 0.20: 12.30 is tagged 12.20 (loss -0.10), not 12 (-0.30), so the total loss is -0.77,
  not -0.97. The grids 1 and 10 tables are right (-3.37 with 5 tags, -24.37 with 2 tags).
- the fit through (0.59, 1) and (12.30, 12): b = 11/11.71 = 0.93937 (the post truncates to
  0.93) and a = 1 - 0.59 b = 0.44577; the post's a = 1.0413 solves a + 0.93*0.59 - 0.59 = 1.
- the post's zero point ``round(s * x_min) - 128`` has a sign error: it sends x_min to -102 and
  x_max to 153; ``-128 - round(s * x_min)`` (= -141, outside int8) sends them to -128 and 127.
- prose: "rounded to the nearest dollar" is a floor (8.99 -> 8); the tag range "-1 to 2" gives
  b (12.30 - 0.59) = 3, and the next line uses 255 instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import torch
from rich.console import Console
from rich.table import Table

from ..affine import dequantize, quantize
from ..qparams import choose_qparams
from ..scheme import QScheme

Real = Decimal | int | str | float

PRICES = tuple(Decimal(p) for p in ("1.99", "2.00", "0.59", "12.30", "8.50", "8.99"))
POST_GRIDS = (Decimal("0.20"), Decimal(1), Decimal(10))
DISTORTION_GRIDS = tuple(Decimal(g) for g in ("0.01", "0.05", "0.2", "0.5", "1", "2", "5", "10"))
POST_FIT_POINTS = (Decimal("0.59"), Decimal(1), Decimal("12.30"), Decimal(12))
POST_PRINTED_FIT = (Decimal("1.0413"), Decimal("0.93"))  # (a, b) as printed in the post
POST_PRINTED_SCALE = Decimal("21.77")  # the post's "scale" 255 / (12.30 - 0.59), as printed
UINT8, INT8 = QScheme(bits=8, signed=False), QScheme(bits=8, signed=True)

# The post's three tables, copied from its text: (tag, loss) per price of PRICES, tags, total.
_POST_TABLES = {
    "0.20": ((("1.8", "-0.19"), ("2", "0.00"), ("0.4", "-0.19"), ("12", "-0.30"), ("8.4", "-0.10"),
              ("8.8", "-0.19")), 6, "-0.97"),
    "1": ((("1", "-0.99"), ("2", "0.00"), ("0", "-0.59"), ("12", "-0.30"), ("8", "-0.50"),
           ("8", "-0.99")), 5, "-3.37"),
    "10": ((("0", "-1.99"), ("0", "-2.00"), ("0", "-0.59"), ("10", "-2.30"), ("0", "-8.50"),
            ("0", "-8.99")), 2, "-24.37"),
}


def _dec(x: Real) -> Decimal:
    """``x`` as an exact Decimal; a float goes through its shortest repr (0.59 -> "0.59")."""
    return x if isinstance(x, Decimal) else Decimal(str(x))


@dataclass(frozen=True)
class PriceTagRow:
    """One price, its tag (largest grid multiple <= price) and the loss ``tag - price`` (<= 0)."""

    price: Decimal
    tag: Decimal
    loss: Decimal


@dataclass(frozen=True)
class PriceTagTable:
    """The post's table for one grid: a row per price, the number of distinct tags, total loss."""

    grid: Decimal
    rows: tuple[PriceTagRow, ...]
    distinct_tags: int
    total_loss: Decimal


def floor_to_grid(x: Real, grid: Real) -> Decimal:
    """Largest multiple of ``grid`` not above ``x``: ``grid * floor(x / grid)``.

    Numerics: exact (the quotient is a Fraction), rounding floor; 8.50 on 0.20 -> 8.40.
    """
    x, grid = _dec(x), _dec(grid)
    if grid <= 0:
        raise ValueError(f"floor_to_grid: grid must be > 0, got {grid}")
    return grid * math.floor(Fraction(x) / Fraction(grid))


def price_tag_table(prices: tuple[Real, ...], grid: Real) -> PriceTagTable:
    """Tag every price on ``grid`` with the floor rule and total the money lost.

    Numerics: exact decimal arithmetic, floor rounding; losses are <= 0 and sum exactly.
    """
    tags = [floor_to_grid(p, grid) for p in prices]
    rows = tuple(PriceTagRow(_dec(p), t, t - _dec(p)) for p, t in zip(prices, tags, strict=True))
    total_loss = sum((r.loss for r in rows), Decimal(0))
    return PriceTagTable(_dec(grid), rows, len({r.tag for r in rows}), total_loss)


def distortion_levels(prices: tuple[Real, ...], grid: Real) -> tuple[Decimal, int]:
    """The post's objective, in parts: (sum of squared error ``sum (tag - x)^2``, distinct tags).

    Numerics: exact decimal arithmetic, floor rounding (the price-tag rule).
    """
    table = price_tag_table(prices, grid)
    return sum((r.loss * r.loss for r in table.rows), Decimal(0)), table.distinct_tags


def post_printed_tables() -> dict[Decimal, PriceTagTable]:
    """The post's three tables (grids 0.20, 1, 10) exactly as printed, as data, errors included."""
    out = {}
    for grid, (pairs, n_tags, total) in _POST_TABLES.items():
        rows = tuple(PriceTagRow(p, Decimal(t), Decimal(loss))
                     for p, (t, loss) in zip(PRICES, pairs, strict=True))
        out[Decimal(grid)] = PriceTagTable(Decimal(grid), rows, n_tags, Decimal(total))
    return out


@dataclass(frozen=True)
class TableDifference:
    """One cell where the post's printed table differs from the computed one."""

    grid: Decimal
    row: str  # the price, or "total"
    column: str  # "tag", "loss", "tags" or "total loss"
    printed: Decimal
    computed: Decimal


def post_table_differences() -> tuple[TableDifference, ...]:
    """Every cell of the post's printed tables that differs from ``price_tag_table``."""
    diffs = []
    for grid, post in post_printed_tables().items():
        ours = price_tag_table(PRICES, grid)
        for pr, cr in zip(post.rows, ours.rows, strict=True):
            diffs += [TableDifference(grid, str(pr.price), name, getattr(pr, name), getattr(cr, name))
                      for name in ("tag", "loss") if getattr(pr, name) != getattr(cr, name)]
        for name, p, c in (("tags", post.distinct_tags, ours.distinct_tags),
                           ("total loss", post.total_loss, ours.total_loss)):
            if p != c:
                diffs.append(TableDifference(grid, "total", name, Decimal(p), Decimal(c)))
    return tuple(diffs)


@dataclass(frozen=True)
class TwoPointFit:
    """``f(x) = a + b x`` through two points, exact, beside the post's steps replayed."""

    a: Fraction
    b: Fraction
    post_a: Decimal  # y_lo + x_lo - post_b * x_lo: the post's "a + b*0.59 - 0.59 = 1"
    post_b: Decimal  # b truncated to two decimals (0.939... -> 0.93)


def two_point_fit(x_lo: Real, y_lo: Real, x_hi: Real, y_hi: Real) -> TwoPointFit:
    """The line through ``(x_lo, y_lo)`` and ``(x_hi, y_hi)``: ``b = dy / dx``, ``a = y_lo - b x_lo``.

    Numerics: exact (Fraction); the post's replay truncates b to 0.01 and keeps its stray
    ``- x_lo`` term, giving (a, b) = (1.0413, 0.93) for the post's points.
    """
    x_lo, y_lo, x_hi, y_hi = (_dec(v) for v in (x_lo, y_lo, x_hi, y_hi))
    b = Fraction(y_hi - y_lo) / Fraction(x_hi - x_lo)
    post_b = Decimal(math.trunc(b * 100)) / 100
    return TwoPointFit(Fraction(y_lo) - b * Fraction(x_lo), b, y_lo + x_lo - post_b * x_lo, post_b)


@dataclass(frozen=True)
class GridQParams:
    """Qparams in the sense of eq. 1 (``x = scale * (q - zero_point)``) on one integer grid."""

    name: str
    scale: float
    zero_point: int
    scheme: QScheme


def int8_qparams_standard(x_min: Real, x_max: Real) -> tuple[GridQParams, GridQParams]:
    """The standard affine qparams (eq. 2, range widened to include 0) for uint8 and int8.

    Numerics: ``glassquant.qparams.choose_qparams`` in float32; scale = (hi - lo) / 255,
    zero point 0 (uint8) or -128 (int8) for a positive range; 0 maps to the zero point.
    """
    out = []
    for name, scheme in (("uint8", UINT8), ("int8", INT8)):
        s, z = choose_qparams(torch.tensor(float(x_min)), torch.tensor(float(x_max)), scheme)
        out.append(GridQParams(name, float(s), int(z), scheme))
    return out[0], out[1]


@dataclass(frozen=True)
class PostQParams:
    """The post's int8 convention: ``q = round(post_scale * x) + zero_point``."""

    post_scale: Fraction  # 255 / (x_max - x_min), the reciprocal of eq. 2's scale
    zero_point: int  # round(post_scale * x_min) - 128, as the post prints it
    zero_point_corrected: int  # -128 - round(post_scale * x_min)


def int8_qparams_post(x_min: Real, x_max: Real) -> PostQParams:
    """The post's formulas taken literally, and with the sign of its zero point corrected.

    Numerics: exact (Fraction), round half to even. With the printed zero point x_min maps to
    ``2 round(s x_min) - 128`` (-102 for the prices), not -128; the corrected one maps it to -128.
    """
    s = 255 / Fraction(_dec(x_max) - _dec(x_min))
    r = round(s * Fraction(_dec(x_min)))
    return PostQParams(s, r - 128, -128 - r)


def post_quantize(x: Real, post_scale: Fraction, zero_point: int) -> int:
    """The post's quantizer ``round(post_scale * x) + zero_point``, unclamped, to show overflow.

    Numerics: exact (Fraction), round half to even, no clamp (result may leave [-128, 127]).
    """
    return round(post_scale * Fraction(_dec(x))) + zero_point


def map_prices_int8(prices: tuple[Real, ...] = PRICES) -> tuple[tuple[Decimal, int, int, int, int], ...]:
    """Each price through four quantizers, range [min(prices), max(prices)].

    Returns rows ``(price, post printed zp, post corrected zp, standard int8, standard uint8)``.
    Numerics: the post's columns exact and unclamped; the standard ones via
    ``glassquant.affine.quantize`` (float32, round half even, clamped).
    """
    x_min, x_max = min(map(_dec, prices)), max(map(_dec, prices))
    post = int8_qparams_post(x_min, x_max)
    x = torch.tensor([float(p) for p in prices], dtype=torch.float32)  # (6,)
    std = [quantize(x, torch.tensor(g.scale), torch.tensor(g.zero_point), g.scheme).tolist()
           for g in int8_qparams_standard(x_min, x_max)]
    return tuple((_dec(p), post_quantize(p, post.post_scale, post.zero_point),
                  post_quantize(p, post.post_scale, post.zero_point_corrected), i8, u8)
                 for p, u8, i8 in zip(prices, *std, strict=True))


@dataclass(frozen=True)
class PureFit:
    """The post's pure two-point fit (x_min -> -128, x_max -> 127) and what it does to 0.0."""

    scale: Fraction  # (x_max - x_min) / 255, eq. 1 sense
    zero_point_exact: Fraction  # -128 - x_min / scale
    zero_point: int  # rounded half to even
    representable: bool  # zero point inside [-128, 127]
    zero_dequantized: Fraction  # dequantize(clamp(round(0 / scale) + zp)): what 0.0 becomes
    widened: GridQParams  # eq. 2 int8 qparams, range widened to include 0
    widened_zero_dequantized: float  # dequantize(quantize(0.0)) with the widened qparams


def pure_fit_zero_point(x_min: Real, x_max: Real) -> PureFit:
    """Zero point of the pure fit and why runtimes widen the range to contain 0 (eq. 2).

    Numerics: exact (Fraction) for the pure fit, round half to even, clamp to [-128, 127];
    the widened qparams by ``choose_qparams`` in float32. For x_min > 0 the zero point is below
    -128, so 0.0 clamps to -128 and comes back as ``scale * (-128 - zp) != 0``.
    """
    lo, hi = Fraction(_dec(x_min)), Fraction(_dec(x_max))
    scale = (hi - lo) / 255
    zp_exact = -128 - lo / scale
    zp = round(zp_exact)
    q0 = min(max(zp, -128), 127)
    widened = int8_qparams_standard(x_min, x_max)[1]
    q = quantize(torch.zeros(1), torch.tensor(widened.scale), torch.tensor(widened.zero_point), INT8)
    back = dequantize(q, torch.tensor(widened.scale), torch.tensor(widened.zero_point), INT8)
    return PureFit(scale, zp_exact, zp, -128 <= zp <= 127, scale * (q0 - zp), widened, float(back[0]))


def _table(title: str, columns: tuple[str, ...], rows: Sequence[Sequence[object]]) -> Table:
    """A rich table with right-aligned columns and every cell rendered with ``str``."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*(str(v) for v in r))
    return t


def _f(x: Fraction | float, digits: int = 6) -> str:
    """A Fraction or float shown with ``digits`` decimals."""
    return f"{float(x):.{digits}f}"


def render(console: Console) -> None:
    """Print the price-tag walk-through: tables, the post's errors, the fit, int8 conventions."""
    console.print("[bold]Price tags[/]: a tag may show less than the price, never more "
                  "(floor onto a grid). Fewer distinct tags = less memory, more money lost.")
    printed = post_printed_tables()
    for grid in POST_GRIDS:
        ours, theirs = price_tag_table(PRICES, grid), printed[grid]
        rows: list[tuple[object, ...]] = [
            (c.price, p.tag, c.tag, p.loss, c.loss, "" if p == c else "<- differs")
            for p, c in zip(theirs.rows, ours.rows, strict=True)]
        rows.append(("tags / total", theirs.distinct_tags, ours.distinct_tags,
                     theirs.total_loss, ours.total_loss,
                     "" if theirs.total_loss == ours.total_loss else "<- differs"))
        console.print(_table(f"grid {grid}", ("price", "tag (post)", "tag (computed)", "loss (post)",
                                              "loss (computed)", ""), rows))
    diffs = [(d.grid, d.row, d.column, d.printed, d.computed) for d in post_table_differences()]
    console.print(_table("Where the post's tables differ", ("grid", "row", "column", "post says", "computed"),
                         diffs))
    console.print("(The post calls the floor rule 'rounded to the nearest dollar'; 8.99 -> 8 is a floor.)")
    console.print(_table("Objective parts: squared error vs number of tags",
                         ("grid", "sum (tag - x)^2", "tags"),
                         [(g, *distortion_levels(PRICES, g)) for g in DISTORTION_GRIDS]))
    from ..analysis.allocate_cli import pricetag_distortion_curve

    console.print(_table("The post's objective solved: the best grid for each lambda",
                         ("grid", "tags", "sum (tag - x)^2", "optimal for lambda in"),
                         [(p.grid, p.levels, p.distortion,
                           f"[{float(p.lam_range[0]):.4g}, "
                           f"{'inf' if p.lam_range[1] is None else f'{float(p.lam_range[1]):.4g}'}]")
                          for p in pricetag_distortion_curve() if p.lam_range is not None]))
    x_lo, y_lo, x_hi, y_hi = POST_FIT_POINTS
    fit = two_point_fit(x_lo, y_lo, x_hi, y_hi)
    pa, pb = POST_PRINTED_FIT
    console.print(_table(f"Fit f(x) = a + b x through ({x_lo}, {y_lo}) and ({x_hi}, {y_hi})",
                         ("", "a", "b", f"f({x_lo})", f"f({x_hi})"),
                         [("exact", _f(fit.a), _f(fit.b), _f(fit.a + fit.b * Fraction(x_lo)),
                           _f(fit.a + fit.b * Fraction(x_hi))),
                          ("post (b truncated, stray -x)", pa, pb, pa + pb * x_lo, pa + pb * x_hi)]))
    lo, hi = min(PRICES), max(PRICES)
    u8, i8 = int8_qparams_standard(lo, hi)
    post = int8_qparams_post(lo, hi)
    console.print(_table(f"int8 conventions for [{lo}, {hi}]", ("convention", "scale (x = scale (q - zp))",
                                                                  "post 'scale' (1/scale)", "zero point"),
                         [("standard uint8 (eq. 2)", _f(u8.scale, 7), _f(1 / u8.scale, 4), u8.zero_point),
                          ("standard int8 (eq. 2)", _f(i8.scale, 7), _f(1 / i8.scale, 4), i8.zero_point),
                          ("post, as printed", _f(1 / post.post_scale, 7),
                           f"{_f(post.post_scale, 4)} (post: {POST_PRINTED_SCALE})", post.zero_point),
                          ("post, sign corrected", _f(1 / post.post_scale, 7), _f(post.post_scale, 4),
                           post.zero_point_corrected)]))
    console.print(_table("Prices mapped to integers (post columns unclamped)",
                         ("price", "post zp", "post corrected zp", "standard int8", "standard uint8"),
                         list(map_prices_int8())))
    console.print(f"The post's zero point round(s x_min) - 128 = {post.zero_point} sends x_min to "
                  f"{post_quantize(lo, post.post_scale, post.zero_point)} and x_max to "
                  f"{post_quantize(hi, post.post_scale, post.zero_point)} (> 127): a sign error; "
                  f"-128 - round(s x_min) = {post.zero_point_corrected} hits -128 and 127.")
    pf = pure_fit_zero_point(lo, hi)
    console.print(f"[bold]Zero outside the range[/]: the pure fit x_min -> -128 needs zero point "
                  f"{_f(pf.zero_point_exact, 3)} -> {pf.zero_point}, outside [-128, 127], so 0.0 clamps to "
                  f"-128 and comes back as {_f(pf.zero_dequantized)}. Padding and ReLU need an exact 0, so "
                  f"runtimes widen the range to [0, {hi}]: scale {_f(pf.widened.scale, 7)}, zero point "
                  f"{pf.widened.zero_point}, and 0.0 -> {pf.widened_zero_dequantized}.")
