"""Tile configurations of the Triton kernels: one frozen dataclass, candidate lists for H100/H200.

A configuration changes speed only, never a result's integers: the W8A8 accumulators are
exact int32 sums in any tile order, and its float32 epilogue is elementwise. The weight-only
kernels' float32 sums do depend on the tile shape and ``split_k`` (their order is the
kernel's), within the bound stated in docs/gpu.md.

The candidate lists are sized for Hopper (132 SMs, 227 KB of shared memory per block,
int8 tensor cores at twice the bf16 rate): int8 tiles of 128 x 128 x 128 and larger with 3 to
5 pipeline stages and 4 to 8 warps for the W8A8 GEMM; for weight-only decode (M = 1..16),
narrow N tiles with split-K so that a 4096-wide layer still spreads over every SM.
``benchmarks/gpu.py`` times every candidate per shape and reports the best.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Hopper's streaming multiprocessors (H100 SXM and H200: 132); used to size split-K.
NUM_SMS = 132


@dataclass(frozen=True)
class TileConfig:
    """Block sizes and launch options of one kernel launch.

    ``block_m x block_n`` outputs per program, ``block_k`` along the reduction per step;
    ``group_m`` consecutive M-blocks share their N-block (L2 reuse, W8A8 GEMM only);
    ``split_k`` programs share one output tile's K range (weight-only only; their float32
    partial sums are added with atomics). ``num_warps``/``num_stages`` go to Triton.
    """

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for field in ("block_m", "block_n", "block_k"):
            v = getattr(self, field)
            if v < 1 or v & (v - 1):
                raise ValueError(f"TileConfig: {field} must be a power of two, got {v}")
        if self.group_m < 1 or self.split_k < 1 or self.num_warps < 1 or self.num_stages < 1:
            raise ValueError(f"TileConfig: group_m, split_k, num_warps and num_stages must be >= 1, got {self}")


def _t(bm: int, bn: int, bk: int, warps: int, stages: int, split_k: int = 1, group_m: int = 8) -> TileConfig:
    return TileConfig(bm, bn, bk, group_m=group_m, split_k=split_k, num_warps=warps, num_stages=stages)


#: W8A8 int8 GEMM candidates, large M (int8 wgmma tiles; shared memory (bm + bn) * bk * stages <= 227 KB).
W8A8_LARGE_M = (
    _t(128, 256, 128, 8, 3), _t(256, 128, 128, 8, 3), _t(128, 128, 128, 8, 4), _t(128, 128, 128, 4, 4),
    _t(128, 256, 64, 8, 4), _t(128, 128, 64, 4, 5), _t(64, 256, 128, 4, 4),
)
#: W8A8 candidates for M <= 128: thinner M tiles, more N parallelism.
W8A8_SMALL_M = (
    _t(16, 64, 256, 4, 4), _t(16, 128, 128, 4, 5), _t(32, 64, 256, 4, 4), _t(64, 64, 128, 4, 4),
    _t(64, 128, 128, 4, 4), _t(32, 128, 128, 4, 4),
)
#: Weight-only candidates, decode (M <= 16): block_m 1 is the GEMV path (no dot), 16 the tensor-core path.
#: int4 needs block_k to divide the group size (128), so block_k <= 128 there.
WEIGHT_ONLY_DECODE = (
    _t(1, 64, 128, 4, 3, split_k=2), _t(1, 64, 128, 4, 3, split_k=4), _t(1, 32, 128, 4, 3, split_k=2),
    _t(1, 128, 128, 4, 3, split_k=4), _t(1, 64, 256, 4, 3, split_k=4), _t(1, 32, 256, 4, 3, split_k=1),
    _t(16, 64, 128, 4, 3, split_k=2), _t(16, 64, 128, 4, 4, split_k=4), _t(16, 128, 128, 4, 4, split_k=2),
    _t(16, 32, 128, 4, 4, split_k=4), _t(16, 64, 256, 4, 3, split_k=4),
)
#: Weight-only candidates, M > 16 (tensor cores on the dequantized tile).
WEIGHT_ONLY_LARGE_M = (
    _t(64, 128, 64, 4, 4), _t(128, 128, 64, 8, 3), _t(64, 64, 128, 4, 3), _t(128, 256, 64, 8, 3),
    _t(64, 128, 128, 4, 3),
)


def w8a8_candidates(m: int) -> tuple[TileConfig, ...]:
    """The W8A8 configurations worth timing for ``m`` rows."""
    return W8A8_SMALL_M if m <= 128 else W8A8_LARGE_M + W8A8_SMALL_M[-2:]


def weight_only_candidates(m: int, bits: int, group_size: int) -> tuple[TileConfig, ...]:
    """The weight-only configurations worth timing; int4 keeps those whose ``block_k`` divides the group."""
    pool: tuple[TileConfig, ...] = WEIGHT_ONLY_DECODE if m <= 16 else WEIGHT_ONLY_LARGE_M
    if m > 1:
        pool = tuple(c for c in pool if c.block_m > 1)
    if bits == 4:
        pool = tuple(c for c in pool if group_size % c.block_k == 0)
    return pool


def default_w8a8(m: int, n: int, k: int) -> TileConfig:
    """A reasonable W8A8 tile without timing (Hopper sizes)."""
    if m <= 16:
        return _t(16, 64, 128, 4, 4)
    if m <= 128:
        return _t(64, 128, 128, 4, 4)
    return _t(128, 256, 128, 8, 3)


def default_weight_only(m: int, n: int, k: int, bits: int, group_size: int) -> TileConfig:
    """A reasonable weight-only tile without timing: split-K sized to fill ``NUM_SMS`` twice at small M."""
    if m <= 16:
        bm, bn, bk = (1 if m == 1 else 16), 64, 128
        if bits == 4:
            bk = min(bk, group_size)
        n_blocks = -(-n // bn) * max(1, -(-m // bm))
        k_tiles = -(-k // bk)
        split = max(1, min(k_tiles, 8, -(-2 * NUM_SMS // n_blocks)))
        return _t(bm, bn, bk, 4, 3, split_k=split)
    bk = 64 if bits == 8 else min(64, group_size)
    return _t(64, 128, bk, 4, 4)
