"""Tests for glassquant.demo.pricetag, against values derived independently in integer cents."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
import torch
from rich.console import Console

from glassquant.affine import dequantize, quantize
from glassquant.demo import pricetag as pt

PRICE_STRINGS = ("1.99", "2.00", "0.59", "12.30", "8.50", "8.99")


def cents(s: str) -> int:
    """A decimal string with at most two decimals as integer cents, parsed by hand."""
    whole, _, frac = s.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def tags_in_cents(grid: str) -> list[int]:
    """Floor-rule tags for the post's prices, in cents (integer floor division)."""
    g = cents(grid)
    return [cents(p) // g * g for p in PRICE_STRINGS]


@pytest.mark.parametrize("grid, total_cents, n_tags", [("0.20", -77, 6), ("1", -337, 5), ("10", -2437, 2)])
def test_price_tag_table_matches_integer_cents(grid: str, total_cents: int, n_tags: int) -> None:
    """Tags, losses, distinct count and total equal the integer-cents computation."""
    table = pt.price_tag_table(pt.PRICES, Decimal(grid))
    tags = tags_in_cents(grid)
    assert [r.tag * 100 for r in table.rows] == tags
    losses = [t - cents(p) for t, p in zip(tags, PRICE_STRINGS, strict=True)]
    assert [r.loss * 100 for r in table.rows] == losses
    assert sum(tags) - sum(cents(p) for p in PRICE_STRINGS) == total_cents
    assert table.total_loss == Decimal(total_cents) / 100
    assert table.distinct_tags == len(set(tags)) == n_tags


def test_floor_is_exact_not_float_noise() -> None:
    """8.50 on 0.20 is 8.40 exactly; 12.30 on 0.20 is 12.20 (float floor(12.3/0.2) would say 61 too)."""
    assert pt.floor_to_grid("8.50", "0.20") == Decimal("8.40")
    assert pt.floor_to_grid("12.30", "0.20") == Decimal("12.20")
    assert pt.floor_to_grid(0.3, 0.1) == Decimal("0.3")  # float 0.3 / 0.1 = 2.9999999999999996
    assert pt.floor_to_grid("-0.05", "0.1") == Decimal("-0.1")
    with pytest.raises(ValueError):
        pt.floor_to_grid("1", "0")


def test_post_printed_errors_are_detected() -> None:
    """The post's grid-0.20 table is wrong for 12.30 and the total; grids 1 and 10 are right."""
    printed = pt.post_printed_tables()
    assert printed[Decimal("0.20")].total_loss == Decimal("-0.97")
    assert printed[Decimal("0.20")].rows[3].tag == 12
    diffs = {(d.grid, d.row, d.column): (d.printed, d.computed) for d in pt.post_table_differences()}
    assert diffs == {
        (Decimal("0.20"), "12.30", "tag"): (Decimal(12), Decimal("12.20")),
        (Decimal("0.20"), "12.30", "loss"): (Decimal("-0.30"), Decimal("-0.10")),
        (Decimal("0.20"), "total", "total loss"): (Decimal("-0.97"), Decimal("-0.77")),
    }
    # the printed total is the sum of its own (wrong) column: the error is the 12.30 row
    post = printed[Decimal("0.20")]
    assert sum(r.loss for r in post.rows) == post.total_loss


def test_distortion_levels() -> None:
    """Squared error in cents^2 and level counts, from the integer-cents tags."""
    for grid in ("0.01", "0.05", "0.2", "0.5", "1", "2", "5", "10"):
        tags = tags_in_cents(grid)
        sse_cents2 = sum((t - cents(p)) ** 2 for t, p in zip(tags, PRICE_STRINGS, strict=True))
        assert pt.distortion_levels(pt.PRICES, Decimal(grid)) == (Decimal(sse_cents2) / 10000, len(set(tags)))
    assert pt.distortion_levels(pt.PRICES, Decimal("0.01")) == (0, 6)
    assert pt.distortion_levels(pt.PRICES, Decimal("10"))[1] == 2


def test_two_point_fit_exact_and_post() -> None:
    """Exact line passes through both points; the post's replayed steps give its printed 0.93, 1.0413."""
    fit = pt.two_point_fit(*pt.POST_FIT_POINTS)
    assert fit.b == Fraction(1100, 1171)
    assert fit.a == Fraction(522, 1171)
    assert fit.a + fit.b * Fraction("0.59") == 1
    assert fit.a + fit.b * Fraction("12.30") == 12
    assert (fit.post_a, fit.post_b) == pt.POST_PRINTED_FIT == (Decimal("1.0413"), Decimal("0.93"))
    assert round(fit.b, 2) == Fraction(94, 100)  # rounding would give 0.94; the post truncates


def test_standard_qparams_represent_zero() -> None:
    """eq. 2 widens [0.59, 12.30] to [0, 12.30]: zero point 0 / -128 and 0.0 round-trips exactly."""
    u8, i8 = pt.int8_qparams_standard(Decimal("0.59"), Decimal("12.30"))
    assert (u8.zero_point, i8.zero_point) == (0, -128)
    assert u8.scale == i8.scale == float(torch.tensor(12.30, dtype=torch.float32) / 255)
    for g in (u8, i8):
        s, z = torch.tensor(g.scale), torch.tensor(g.zero_point)
        q = quantize(torch.zeros(3), s, z, g.scheme)
        assert torch.equal(dequantize(q, s, z, g.scheme), torch.zeros(3))


def test_post_zero_point_sign_error() -> None:
    """The printed zero point sends x_min to 2 round(s x_min) - 128; the corrected one to -128."""
    post = pt.int8_qparams_post(Decimal("0.59"), Decimal("12.30"))
    assert post.post_scale == Fraction(255) / Fraction("11.71")
    r = round(Fraction(255 * 59, 1171))  # 12.848 -> 13
    assert (post.zero_point, post.zero_point_corrected) == (r - 128, -128 - r) == (-115, -141)
    x_min_post = pt.post_quantize("0.59", post.post_scale, post.zero_point)
    assert x_min_post == 2 * r - 128 == -102
    assert pt.post_quantize("0.59", post.post_scale, post.zero_point_corrected) == -128
    assert pt.post_quantize("12.30", post.post_scale, post.zero_point_corrected) == 127
    assert pt.post_quantize("12.30", post.post_scale, post.zero_point) == 153


def test_map_prices_int8() -> None:
    """Post columns leave [-128, 127] / miss its ends; the corrected and standard ones stay inside."""
    rows = pt.map_prices_int8()
    assert [r[0] for r in rows] == list(pt.PRICES)
    post, corrected, std_i8, std_u8 = ([r[k] for r in rows] for k in range(1, 5))
    assert max(post) == 153 > 127 and min(post) == -102 > -128
    assert (min(corrected), max(corrected)) == (-128, 127)
    assert all(-128 <= q <= 127 for q in std_i8) and max(std_i8) == 127
    assert [q - 128 for q in std_u8] == std_i8  # same scale, zero point shifted by 128
    assert std_u8[2] == round(0.59 / float(torch.tensor(12.30) / 255))


def test_pure_fit_zero_point_outside_int8() -> None:
    """The pure fit's zero point is below -128, so 0.0 does not come back as 0; widened does."""
    pf = pt.pure_fit_zero_point(Decimal("0.59"), Decimal("12.30"))
    assert pf.scale == Fraction("11.71") / 255
    assert pf.zero_point_exact == -128 - Fraction("0.59") * 255 / Fraction("11.71")
    assert pf.zero_point == -141 and not pf.representable
    assert pf.zero_dequantized == 13 * pf.scale != 0
    assert pf.widened.zero_point == -128 and pf.widened_zero_dequantized == 0.0


def test_render_shows_key_numbers() -> None:
    """render() writes every key number into a recorded rich console."""
    console = Console(record=True, width=120)
    pt.render(console)
    text = console.export_text()
    for needle in ("-0.97", "-0.77", "12.20", "-3.37", "-24.37", "166.6683", "0.939368", "0.445773",
                   "1.0413", "0.93", "-115", "-141", "-102", "153", "-140.848", "0.596980", "0.0482353"):
        assert needle in text, needle
