"""Two 4-bit integers per byte (the storage of int4 weights), and b-bit codes packed densely.

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


# ---- b-bit codes, packed densely ------------------------------------------------------------------
#
# A bitstream in a uint8 tensor, least significant bit first: code ``i`` (of a flattened tensor)
# occupies stream bits ``[i * b, (i + 1) * b)``, its bit ``j`` at stream bit ``i * b + j``, and stream
# bit ``t`` is bit ``t % 8`` of byte ``t // 8``. The last byte's unused high bits are 0. ``n`` codes
# take ``ceil(n * b / 8)`` bytes. For ``b = 4`` and an even row length this is exactly
# :func:`pack_int4`'s layout (low nibble first); for ``b = 8`` the bytes are the codes.
# Example, b = 3, codes [5, 2, 7]: stream bits 101 010 111 (each code LSB first) ->
# byte 0 = 0b11_010_101 = 0xD5 (code 2's low two bits on top), byte 1 = 0b0000000_1 = 0x01.


def packed_bytes(n: int, bits: int) -> int:
    """Bytes of ``n`` codes of ``bits`` bits packed densely: ``ceil(n * bits / 8)``."""
    if not 1 <= bits <= 8:
        raise ValueError(f"packed_bytes: bits must be in [1, 8], got {bits}")
    if n < 0:
        raise ValueError(f"packed_bytes: n must be >= 0, got {n}")
    return (n * bits + 7) // 8


def pack_bits(codes: Tensor, bits: int, name: str = "codes") -> Tensor:
    """Pack unsigned ``bits``-bit codes into a dense LSB-first bitstream (layout above).

    Numerics: ``codes`` uint8, any shape, values in [0, 2**bits - 1] (``ValueError`` otherwise),
    flattened in row-major order; returns uint8 (ceil(numel * bits / 8),). Exact (bit operations
    only); the padding bits of the last byte are 0.
    """
    check_integer(codes, f"pack_bits: {name}", (torch.uint8,))
    if not 1 <= bits <= 8:
        raise ValueError(f"pack_bits: bits must be in [1, 8], got {bits}")
    flat = codes.reshape(-1)
    if flat.numel() and int(flat.max()) >= 1 << bits:
        raise ValueError(f"pack_bits: {name} has a value {int(flat.max())} outside [0, {(1 << bits) - 1}] "
                         f"({bits} bits)")
    n = flat.numel()
    blocks = -(-n // 8)  # 8 codes fill exactly ``bits`` bytes: one 64-bit block, LSB first
    c = torch.zeros(blocks * 8, dtype=torch.int64)
    c[:n] = flat
    c = c.reshape(blocks, 8)  # (blocks, 8)
    block = torch.zeros(blocks, dtype=torch.int64)
    for j in range(8):
        block |= c[:, j] << (bits * j)  # code j at stream bits [bits*j, bits*(j+1)) of its block
    out = torch.stack([(block >> (8 * i)) & 0xFF for i in range(bits)], dim=1)  # (blocks, bits) bytes
    return out.reshape(-1)[: packed_bytes(n, bits)].to(torch.uint8)  # the trimmed bytes hold only padding


def unpack_bits(packed: Tensor, bits: int, n: int, name: str = "packed") -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes of a bitstream, uint8 (n,).

    Numerics: ``packed`` uint8 (ceil(n * bits / 8),) exactly (``ValueError`` for another
    length); returns codes in [0, 2**bits - 1]. Exact.
    """
    check_integer(packed, f"unpack_bits: {name}", (torch.uint8,))
    if not 1 <= bits <= 8:
        raise ValueError(f"unpack_bits: bits must be in [1, 8], got {bits}")
    if packed.dim() != 1 or packed.numel() != packed_bytes(n, bits):
        raise ValueError(f"unpack_bits: {name} must be 1-D with ceil({n} * {bits} / 8) = {packed_bytes(n, bits)} "
                         f"bytes, got shape {tuple(packed.shape)}")
    blocks = -(-n // 8)
    p = torch.zeros(blocks * bits, dtype=torch.int64)
    p[: packed.numel()] = packed
    p = p.reshape(blocks, bits)  # (blocks, bits) bytes of 8 codes each
    block = torch.zeros(blocks, dtype=torch.int64)
    for i in range(bits):
        block |= p[:, i] << (8 * i)  # bits = 8 may set the sign bit: the masks below still read it right
    codes = torch.stack([(block >> (bits * j)) & ((1 << bits) - 1) for j in range(8)], dim=1)  # (blocks, 8)
    return codes.reshape(-1)[:n].to(torch.uint8)  # (n,)
