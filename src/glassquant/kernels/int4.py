"""Two 4-bit integers per byte: the storage of int4 weights.

Layout: along the last axis, element ``2j`` goes to the low nibble of byte ``j`` and element
``2j + 1`` to the high nibble, ``packed[..., j] = (q[..., 2j] & 0xF) | ((q[..., 2j + 1] & 0xF) << 4)``.
Signed values are stored as 4-bit two's complement (-8 -> 0x8, -1 -> 0xF) and sign-extended on
unpacking. Example: ``q = [3, -2]`` (int8) -> ``0x3 | 0xE << 4 = 0xE3 = 227``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import check_integer

#: The two 4-bit grids ``pack_int4`` accepts, by storage dtype.
INT4_RANGES = {torch.int8: (-8, 7), torch.uint8: (0, 15)}


def pack_int4(q: Tensor, name: str = "q") -> Tensor:
    """Pack 4-bit integers two per byte, low nibble first.

    Numerics: ``q`` int8 in [-8, 7] or uint8 in [0, 15], shape (..., K) with K even;
    returns uint8 (..., K // 2). Exact (bit operations only). Raises ``ValueError`` for an
    odd K or a value outside the 4-bit range, ``TypeError`` for another dtype.
    """
    check_integer(q, f"pack_int4: {name}", (torch.int8, torch.uint8))
    qmin, qmax = INT4_RANGES[q.dtype]
    if q.dim() == 0 or q.shape[-1] % 2:
        raise ValueError(f"pack_int4: {name} needs an even last dimension, got shape {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < qmin or int(q.max()) > qmax):
        raise ValueError(f"pack_int4: {name} has values in [{int(q.min())}, {int(q.max())}], "
                         f"outside the 4-bit range [{qmin}, {qmax}] of {q.dtype}")
    nibbles = q.to(torch.int16) & 0xF  # (..., K) two's complement nibbles in [0, 15]
    pairs = nibbles.reshape(*q.shape[:-1], q.shape[-1] // 2, 2)  # (..., K/2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)  # (..., K/2)


def unpack_int4(packed: Tensor, dtype: torch.dtype = torch.uint8, name: str = "packed") -> Tensor:
    """Inverse of :func:`pack_int4`: uint8 (..., K/2) -> ``dtype`` (..., K).

    Numerics: ``dtype=torch.uint8`` returns the nibbles in [0, 15]; ``dtype=torch.int8``
    sign-extends them to [-8, 7] (``n - 16`` for ``n >= 8``). Exact.
    """
    check_integer(packed, f"unpack_int4: {name}", (torch.uint8,))
    if dtype not in INT4_RANGES:
        raise TypeError(f"unpack_int4: dtype must be torch.int8 or torch.uint8, got {dtype}")
    if packed.dim() == 0:
        raise ValueError(f"unpack_int4: {name} must have at least one dimension")
    p = packed.to(torch.int16)
    low, high = p & 0xF, p >> 4  # (..., K/2) each, in [0, 15]
    q = torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)  # (..., K)
    if dtype == torch.int8:
        q = torch.where(q >= 8, q - 16, q)
    return q.to(dtype)
