"""Tests for glassquant.scheme.QScheme: grid bounds, storage dtype, validation, immutability."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from glassquant.scheme import INT8_SYMMETRIC_PER_CHANNEL, UINT8_AFFINE, QScheme

BITS = range(2, 17)


def expected_bounds(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """Two's-complement / unsigned bounds written from the bit patterns; narrow drops one end.

    Signed: the bit patterns 100..0 and 011..1, i.e. -(1 << (bits-1)) and (1 << (bits-1)) - 1;
    narrow drops the lowest so the grid is symmetric. Unsigned: 0 and 11..1 = (1 << bits) - 1;
    narrow drops the highest (glassquant's documented rule: "less one if narrow").
    """
    if signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return (lo + 1 if narrow else lo), hi
    return 0, ((1 << bits) - 1) - (1 if narrow else 0)


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_bounds_and_levels(bits: int, signed: bool, narrow: bool) -> None:
    s = QScheme(bits=bits, signed=signed, narrow_range=narrow)
    lo, hi = expected_bounds(bits, signed, narrow)
    assert (s.qmin, s.qmax) == (lo, hi)
    assert s.levels == 2**bits - (1 if narrow else 0)
    if signed and narrow:
        assert s.qmin == -s.qmax


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_dtype_is_documented_and_holds_the_grid(bits: int, signed: bool, narrow: bool) -> None:
    s = QScheme(bits=bits, signed=signed, narrow_range=narrow)
    if bits <= 8:
        want = torch.int8 if signed else torch.uint8
    else:
        want = torch.int16 if signed else torch.int32
    assert s.dtype == want
    info = torch.iinfo(s.dtype)
    assert info.min <= s.qmin and s.qmax <= info.max
    # the grid survives a round trip through the storage dtype unchanged
    grid = torch.arange(s.qmin, s.qmax + 1, dtype=torch.int64)
    assert torch.equal(grid.to(s.dtype).to(torch.int64), grid)


@pytest.mark.parametrize("kwargs, bounds", [
    ({"bits": 8, "signed": True}, (-128, 127)),
    ({"bits": 8, "signed": True, "narrow_range": True}, (-127, 127)),
    ({"bits": 8, "signed": False}, (0, 255)),
    ({"bits": 7, "signed": False}, (0, 127)),  # torch.ao's reduce_range uint8
    ({"bits": 4, "signed": True}, (-8, 7)),
    ({"bits": 2, "signed": True, "narrow_range": True}, (-1, 1)),
    ({"bits": 16, "signed": True}, (-32768, 32767)),
    ({"bits": 16, "signed": False}, (0, 65535)),
])
def test_worked_examples(kwargs: dict, bounds: tuple[int, int]) -> None:
    s = QScheme(**kwargs)
    assert (s.qmin, s.qmax) == bounds


def test_defaults_and_presets() -> None:
    s = QScheme()
    assert (s.bits, s.signed, s.symmetric, s.axis, s.group_size, s.narrow_range) == (8, True, False, None, None, False)
    assert INT8_SYMMETRIC_PER_CHANNEL == QScheme(bits=8, signed=True, symmetric=True, axis=0)
    assert UINT8_AFFINE == QScheme(bits=8, signed=False, symmetric=False)


@pytest.mark.parametrize("kwargs, want", [
    ({}, "per_tensor"), ({"axis": 0}, "per_channel"), ({"axis": -1}, "per_channel"),
    ({"group_size": 32}, "per_group"), ({"group_size": 1}, "per_group"),
])
def test_granularity(kwargs: dict, want: str) -> None:
    assert QScheme(**kwargs).granularity == want


@pytest.mark.parametrize("bits", [-8, 0, 1, 17, 32])
def test_invalid_bits_raise(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        QScheme(bits=bits)


def test_axis_and_group_size_together_raise() -> None:
    with pytest.raises(ValueError, match="not both"):
        QScheme(axis=0, group_size=32)


@pytest.mark.parametrize("group_size", [0, -1, -32])
def test_non_positive_group_size_raises(group_size: int) -> None:
    with pytest.raises(ValueError, match="group_size"):
        QScheme(group_size=group_size)


@pytest.mark.parametrize("field", ["bits", "signed", "symmetric", "axis", "group_size", "narrow_range"])
def test_frozen(field: str) -> None:
    s = QScheme()
    before = dataclasses.astuple(s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(s, field, 4)
    assert dataclasses.astuple(s) == before


def test_hashable_and_equal_by_value() -> None:
    a, b = QScheme(bits=4, axis=1), QScheme(bits=4, axis=1)
    assert a == b and hash(a) == hash(b)
    assert len({a, b, QScheme(bits=4, axis=0)}) == 2
