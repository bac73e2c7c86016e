"""QScheme: what integer grid a tensor is mapped to (bits, sign, symmetry, granularity)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QScheme:
    """An integer grid and how its scale is shared.

    Example: ``QScheme(bits=8, signed=True, symmetric=True, axis=0)`` is int8 in
    [-128, 127] with zero point 0 and one scale per output channel (row 0 of a weight);
    ``narrow_range=True`` drops -128 so the grid is symmetric, [-127, 127].
    ``group_size=g`` shares one scale between ``g`` consecutive values of the last axis.
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = False
    axis: int | None = None
    group_size: int | None = None
    narrow_range: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise ValueError(f"QScheme.bits must be in [2, 16], got {self.bits}")
        if self.axis is not None and self.group_size is not None:
            raise ValueError("QScheme: choose per-channel (axis) or per-group (group_size), not both")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"QScheme.group_size must be >= 1, got {self.group_size}")

    @property
    def granularity(self) -> str:
        """``"per_tensor"``, ``"per_channel"`` or ``"per_group"``."""
        if self.axis is not None:
            return "per_channel"
        if self.group_size is not None:
            return "per_group"
        return "per_tensor"

    @property
    def qmin(self) -> int:
        """Smallest integer of the grid (``-2**(bits-1)`` signed, +1 if narrow; 0 unsigned)."""
        if self.signed:
            return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)
        return 0

    @property
    def qmax(self) -> int:
        """Largest integer of the grid (``2**(bits-1) - 1`` signed; ``2**bits - 1`` unsigned,
        less one if narrow)."""
        if self.signed:
            return 2 ** (self.bits - 1) - 1
        return 2**self.bits - 1 - (1 if self.narrow_range else 0)

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype: int8/uint8 up to 8 bits, int16 for signed and int32 for unsigned wider grids."""
        if self.bits <= 8:
            return torch.int8 if self.signed else torch.uint8
        return torch.int16 if self.signed else torch.int32

    @property
    def levels(self) -> int:
        """Number of integers in the grid, ``qmax - qmin + 1``."""
        return self.qmax - self.qmin + 1


INT8_SYMMETRIC_PER_CHANNEL = QScheme(bits=8, signed=True, symmetric=True, axis=0)
UINT8_AFFINE = QScheme(bits=8, signed=False, symmetric=False)
