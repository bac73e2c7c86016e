"""Input checks that give a clear error naming the tensor or layer, never a silent NaN."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def all_finite(x: Tensor) -> bool:
    """Whether a float tensor holds no NaN and no +-Inf (True for non-float and empty tensors).

    One fused min/max reduction: ``amin``/``amax`` propagate NaN, and an infinity is the min or the
    max. (``torch.isfinite(x).all()`` gives the same answer but runs as four elementwise passes
    plus a reduction: measured 2.5 ms against 0.21 ms for a 544 x 1536 float32 tensor here.)
    """
    if not x.is_floating_point() or x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x.detach())
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or +-Inf."""
    if not all_finite(x):
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
