"""What every dialect shares: the exact integer accumulator and its overflow check (eq. 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import AccumulatorOverflowError, check_integer

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_F64_EXACT = 2**53


def as_column(p: Tensor | float | int, n: int, dtype: torch.dtype) -> Tensor:
    """A per-tensor scalar or per-output-channel ``(N,)`` parameter as an ``(N,)`` tensor."""
    t = torch.as_tensor(p, dtype=dtype)
    if t.numel() == 1:
        return t.reshape(1).expand(n)
    if t.shape != (n,):
        raise ValueError(f"parameter of shape {tuple(t.shape)} does not match {n} output channels")
    return t


def accumulate(x_q: Tensor, x_zero_point: int, w_q: Tensor, w_zero_point: Tensor | int,
               name: str = "linear") -> Tensor:
    """Exact ``acc[m, n] = sum_k (x_q[m, k] - zx) * (w_q[n, k] - zw[n])`` (eq. 4).

    Numerics: x_q uint8/int8 (M, K), w_q int8/uint8 (N, K), zero points int; the sum is
    formed exactly (float64 matmul when every partial sum is below 2**53, else int64) and
    returned as int64 (M, N). Raises :class:`AccumulatorOverflowError`, naming ``name`` and
    the first offending output, if any value leaves int32 — the runtimes accumulate in
    int32 and would wrap silently.
    """
    check_integer(x_q, f"{name}: x_q", (torch.uint8, torch.int8, torch.int16, torch.int32))
    check_integer(w_q, f"{name}: w_q", (torch.uint8, torch.int8, torch.int16, torch.int32))
    if x_q.dim() != 2 or w_q.dim() != 2 or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"{name}: x_q {tuple(x_q.shape)} and w_q {tuple(w_q.shape)} "
                         "must be (M, K) and (N, K)")
    n, k = w_q.shape
    zw = as_column(w_zero_point, n, torch.int64).reshape(n, 1)
    xd = x_q.to(torch.int64) - int(x_zero_point)  # (M, K)
    wd = w_q.to(torch.int64) - zw  # (N, K)
    x_amax = int(xd.abs().max()) if xd.numel() else 0
    w_amax = int(wd.abs().max()) if wd.numel() else 0
    bound = k * x_amax * w_amax
    if bound < _F64_EXACT:
        acc = (xd.to(torch.float64) @ wd.to(torch.float64).T).to(torch.int64)  # (M,K)@(K,N) exact
    else:
        acc = xd @ wd.T  # (M, K) @ (K, N) -> (M, N) int64
    check_int32(acc, name)
    return acc


def check_int32(acc: Tensor, name: str) -> None:
    """Raise :class:`AccumulatorOverflowError` if any accumulator leaves int32."""
    if acc.numel() and (int(acc.max()) > INT32_MAX or int(acc.min()) < INT32_MIN):
        bad = ((acc > INT32_MAX) | (acc < INT32_MIN)).nonzero()[0].tolist()
        raise AccumulatorOverflowError(
            f"{name}: int32 accumulator overflow at output {tuple(bad)} "
            f"(value {int(acc[tuple(bad)])}); the runtime would wrap silently. "
            "Use reduce_range, fewer bits, or split K.")


def worst_case_accumulator(w_q: Tensor, w_zero_point: Tensor | int, x_qmin: int, x_qmax: int,
                           x_zero_point: int) -> Tensor:
    """Largest possible ``|acc[n]|`` for any input on the grid, per output channel.

    Numerics: ``max_x |sum_k (x_k - zx) w'_k| = sum_k |w'_k| * max(|qmin - zx|, |qmax - zx|)``
    with ``w' = w_q - zw``; int64 (N,). An overflow certificate: the layer is safe in int32
    if every value is <= 2**31 - 1.
    """
    n = w_q.shape[0]
    zw = as_column(w_zero_point, n, torch.int64).reshape(n, 1)
    wd = (w_q.to(torch.int64) - zw).abs().sum(dim=1)  # (N,)
    return wd * max(abs(x_qmin - x_zero_point), abs(x_qmax - x_zero_point))


def scaled_float_output(acc: Tensor, x_scale: float, w_scale: Tensor | float, bias: Tensor | None,
                        relu: bool = False) -> Tensor:
    """Float output of a dynamic Linear whose runtime multiplies by one float32 scale product:
    ``y = f32(f32(acc) * f32(f32(sx) * f32(sw[n])))``, then ``y = f32(y + f32(b))`` with a bias,
    then ``max(y, 0)`` with a fused ReLU (``clamp_min``, keeping -0.0).

    Numerics: acc int64 (M, N) holding int32 values (Cast to float32 is exact below 2**24); one
    float32 rounding per operation, no FMA. The rule of qnnpack's and ONNX Runtime's dynamic
    Linear (each dialect states it as its own). Returns float32 (M, N).
    """
    from ..floatops import f32

    sw = f32(as_column(w_scale, acc.shape[-1], torch.float64))  # (N,) float32, as given
    y = f32(acc) * (f32(x_scale) * sw)  # (M, N) float32
    if bias is not None:
        y = y + f32(bias)
    return y.clamp_min(0.0) if relu else y
