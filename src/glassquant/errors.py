"""Input checks that give a clear error naming the tensor or layer, never a silent NaN."""

from __future__ import annotations

import torch
from torch import Tensor


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or +-Inf."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name}: contains {n_nan} NaN and {n_inf} Inf value(s); "
                         "quantization needs finite values")


def check_integer(x: Tensor, name: str, dtypes: tuple[torch.dtype, ...]) -> None:
    """Raise ``TypeError`` naming ``name`` if ``x`` is not one of the integer ``dtypes``."""
    if x.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {' or '.join(str(d) for d in dtypes)}, got {x.dtype}")


class AccumulatorOverflowError(OverflowError):
    """An int32 accumulator could exceed [-2**31, 2**31 - 1] for some input of the grid."""
