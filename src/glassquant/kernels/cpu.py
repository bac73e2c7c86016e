"""CPU fast path for the int32 accumulator: ``torch._int_mm`` (int8 x int8 -> int32).

``_int_mm`` wants signed int8 on both sides, so uint8 activations are shifted by 128
and the shift, the activation zero point and the weight zero points are put back with
row and column sums (eq. 4 expanded):
  ``x - zx = x_s8 + d`` with ``x_s8 = x - 128``, ``d = 128 - zx``;
  ``acc[m,n] = mm[m,n] - zw[n]*rs[m] + d*cs[n] - d*zw[n]*K``
with ``mm = x_s8 @ w^T`` (int32, exact while ``K < 2**17``), ``rs[m] = sum_k x_s8[m,k]``,
``cs[n] = sum_k w[n,k]``. Bit-identical to :func:`glassquant.dialects._base.accumulate`
(tests/unit/test_kernels_cpu.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..dialects._base import as_column, check_int32
from ..errors import check_integer

_MAX_K = 2**17 - 1  # |mm| <= K * 128 * 128 < 2**31


@dataclass(frozen=True)
class PackedWeight:
    """An int8 weight prepared once for ``_int_mm``: transposed, with its column sums.

    Numerics: ``w_t`` int8 (K, N) contiguous; ``col_sum`` int64 (N,); ``zero_point`` int64 (N,);
    ``symmetric`` True when every weight zero point is 0 (checked once here, not per call).
    """

    w_t: Tensor
    col_sum: Tensor
    zero_point: Tensor
    symmetric: bool

    @classmethod
    def pack(cls, w_q: Tensor, w_zero_point: Tensor | int) -> PackedWeight:
        check_integer(w_q, "PackedWeight: w_q", (torch.int8,))
        n, k = w_q.shape
        if k > _MAX_K:
            raise ValueError(f"PackedWeight: K = {k} > {_MAX_K}; the int32 _int_mm could overflow")
        # explicit (N, 1) strides: .contiguous() keeps a (1, N) view's strides (1, 1), which
        # torch._int_mm on CPU misreads
        w_t = torch.empty((k, n), dtype=torch.int8).copy_(w_q.t())
        zero_point = as_column(w_zero_point, n, torch.int64).clone()
        return cls(w_t=w_t, col_sum=w_q.to(torch.int64).sum(dim=1), zero_point=zero_point,
                   symmetric=not bool(zero_point.any()))


def accumulate_int_mm(x_q: Tensor, x_zero_point: int, packed: PackedWeight, name: str = "linear") -> Tensor:
    """Exact accumulators via ``torch._int_mm``: int32 (M, N) when activations and weights are
    symmetric int8 (no correction needed), else int64 (M, N) holding int32 values.

    Numerics: x_q uint8 or int8 (M, K); the matmul in int32 (cannot overflow for
    K < 2**17), corrections in int64; raises AccumulatorOverflowError if a result
    leaves int32, like the reference.
    """
    check_integer(x_q, f"{name}: x_q", (torch.uint8, torch.int8))
    k, n = packed.w_t.shape
    if x_q.dim() != 2 or x_q.shape[1] != k:
        raise ValueError(f"{name}: x_q {tuple(x_q.shape)} does not match weight (N, K) = ({n}, {k})")
    if x_q.dtype == torch.int8 and int(x_zero_point) == 0 and packed.symmetric:
        # symmetric int8 on both sides: acc = x @ w^T exactly, int32 cannot overflow (K < 2**17)
        x_c = x_q if x_q.stride() == (k, 1) else torch.empty((x_q.shape[0], k), dtype=torch.int8).copy_(x_q)
        return torch._int_mm(x_c, packed.w_t)  # (M, K) @ (K, N) -> (M, N) int32
    shift = 128 if x_q.dtype == torch.uint8 else 0
    x_s8 = torch.empty(x_q.shape, dtype=torch.int8)  # (M, K) with standard strides, see PackedWeight.pack
    x_s8.copy_((x_q.to(torch.int16) - shift) if shift else x_q)
    d = shift - int(x_zero_point)
    mm = torch._int_mm(x_s8, packed.w_t).to(torch.int64)  # (M, K) @ (K, N) -> (M, N) int32
    rs = x_s8.to(torch.int64).sum(dim=1, keepdim=True)  # (M, 1)
    zw = packed.zero_point.reshape(1, n)
    acc = mm - rs * zw + d * packed.col_sum.reshape(1, n) - d * k * zw
    check_int32(acc, name)
    return acc
