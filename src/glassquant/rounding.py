"""Named rounding rules. Every rounding in glassquant names one of these."""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor


class Rounding(str, Enum):
    """How a value halfway between two integers (or any value, for floor) is rounded.

    ``HALF_EVEN``: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2 (IEEE default, ``torch.round``, ``nearbyint``).
    ``HALF_AWAY``: 2.5 -> 3, -2.5 -> -3 (C ``round``, TFLite's ``QuantizeMultiplier``).
    ``FLOOR``: 2.9 -> 2, -0.1 -> -1 (the seed post's price tags: never above the price).
    """

    HALF_EVEN = "half_even"
    HALF_AWAY = "half_away"
    FLOOR = "floor"


def round_half_even(x: Tensor) -> Tensor:
    """Round to nearest, ties to even. Numerics: float in, same float dtype out, exact."""
    return torch.round(x)


def round_half_away(x: Tensor) -> Tensor:
    """Round to nearest, ties away from zero. Numerics: exact for float32/float64 inputs.

    ``trunc(x + copysign(0.5, x))`` is wrong for 0.49999997f (the sum rounds up to 1), so we
    round the magnitude by comparing its fractional part with one half exactly.
    """
    a = x.abs()
    fl = torch.floor(a)
    up = (a - fl) >= 0.5  # a - fl is exact (Sterbenz) for |a| >= 1, and exact below 1
    return torch.copysign(fl + up.to(x.dtype), x)


def floor(x: Tensor) -> Tensor:
    """Round toward minus infinity. Numerics: exact."""
    return torch.floor(x)


def round_(x: Tensor, rounding: Rounding | str = Rounding.HALF_EVEN) -> Tensor:
    """Round ``x`` with the named rule (see :class:`Rounding`)."""
    rule = Rounding(rounding)
    if rule is Rounding.HALF_EVEN:
        return round_half_even(x)
    if rule is Rounding.HALF_AWAY:
        return round_half_away(x)
    return floor(x)
