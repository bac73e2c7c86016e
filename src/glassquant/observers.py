"""Observers: running statistics of a tensor from which qparams are chosen."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import check_finite
from .qparams import choose_qparams, observe_range
from .scheme import QScheme


class MinMaxObserver:
    """Running minimum and maximum over calibration batches (torch.ao's MinMaxObserver rule).

    ``update(x)`` folds a batch in; ``qparams()`` applies eq. 2 to the running range.
    Numerics: float32 min/max, exact; NaN/Inf in a batch raise ``ValueError`` naming the
    observed tensor.
    """

    def __init__(self, scheme: QScheme, name: str = "tensor") -> None:
        self.scheme, self.name = scheme, name
        self.min: Tensor | None = None
        self.max: Tensor | None = None
        self.batches = 0

    def update(self, x: Tensor) -> None:
        check_finite(x, self.name)
        if x.numel() == 0:
            raise ValueError(f"{self.name}: empty calibration batch")
        lo, hi = observe_range(x, self.scheme, self.name)
        self.min = lo if self.min is None else torch.min(self.min, lo)
        self.max = hi if self.max is None else torch.max(self.max, hi)
        self.batches += 1

    def qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale float32, zero_point int32)`` for the range seen so far."""
        if self.min is None or self.max is None:
            raise ValueError(f"{self.name}: no calibration data was observed")
        return choose_qparams(self.min, self.max, self.scheme)
