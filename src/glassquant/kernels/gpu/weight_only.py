"""Triton weight-only Linear: int8 per-channel or uint4 per-group weights, float activations, float32 output.

Weights are the formats of :mod:`glassquant.nn.weight_only`, read as stored:

- ``bits=8``: ``w_q`` int8 (N, K), ``w_scale`` float32 (N,); ``y = (x @ f32(w_q).T) * sw[n] + b[n]``
  (torchao's ``Int8WeightOnlyConfig`` order: the scale after the sum).
- ``bits=4``: ``w_q`` uint8 (N, K/2), two values per byte, low nibble = even k; ``w_zero_point``
  uint8 (N, K/g); ``w_scale`` float32 (N, K/g); the kernel forms the integers
  ``d = q - zero_point`` in [-15, 15] in registers and computes
  ``y = sum_groups s[n, g] * (x_g @ d_g.T) + b[n]`` (the scale after each ``block_k`` slice of
  the group's sum).

Integers are exact (``unpack_weights`` returns, through the same device helpers, the very
integers and scales the GEMM multiplies by). Float sums are the kernel's: products of
float32 ``x`` use IEEE float32 (``tl.dot(..., input_precision="ieee")`` or FMAs, never
tf32); bfloat16/float16 ``x`` go to tensor cores with the integers converted exactly to that
type (|d| <= 128 fits in 8 significant bits), accumulating in float32. Every output is within
``gamma(K + 2) * (sum_k |x_k d_k s_k| + |b|)`` of the exact value, ``gamma(n) = n u / (1 - n u)``,
``u = 2**-23`` (docs/gpu.md). With ``split_k > 1`` partial sums are added with float32
atomics, so the low bits may differ between runs (still within the bound).

Paths: ``block_m == 1`` is the GEMV path (M = 1 decode: elementwise FMAs, one reduction per
program, no padding of M to a tensor-core tile); ``block_m >= 16`` uses ``tl.dot``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...errors import check_finite, check_integer
from ...nn.weight_only import WeightOnlyLinear
from ._common import check_device, is_interpreted, launch_options
from .configs import TileConfig, default_weight_only

_FLOAT_INPUTS = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _int8_tile(wq_ptr, offs_n, n_mask, k0, K, stride_wn, BLOCK_K: tl.constexpr):
    """The (BLOCK_K, BLOCK_N) tile ``w_q[n, k0 + i]`` as int32 (0 outside the matrix)."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    ptrs = wq_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]
    w = tl.load(ptrs, mask=n_mask[None, :] & (offs_k[:, None] < K), other=0)
    return w.to(tl.int32)


@triton.jit
def _int4_tile(wq_ptr, zp_ptr, offs_n, n_mask, k0, stride_wn, stride_zn, GROUP: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """Two (BLOCK_K/2, BLOCK_N) int32 tiles ``q - zero_point`` for k = k0 + 2j (low nibbles) and k0 + 2j + 1 (high).

    Numerics: byte ``p = w_q[n, k0/2 + j]``; ``lo = p & 0xF``, ``hi = p >> 4`` in [0, 15]; the
    tile lies inside one group (``GROUP % BLOCK_K == 0``), whose zero point is subtracted
    exactly: results in [-15, 15]. Masked columns (n >= N) give 0.
    """
    offs_j = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    p = tl.load(wq_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + offs_j[:, None], mask=n_mask[None, :], other=0)
    p = p.to(tl.int32)  # uint8 -> int32, zero-extended
    zp = tl.load(zp_ptr + offs_n.to(tl.int64) * stride_zn + k0 // GROUP, mask=n_mask, other=0).to(tl.int32)
    return (p & 15) - zp[None, :], (p >> 4) - zp[None, :]


@triton.jit
def _weight_only_kernel(x_ptr, wq_ptr, s_ptr, zp_ptr, b_ptr, y_ptr, M, N, K,
                        stride_xm, stride_xk, stride_wn, stride_sn, stride_zn, stride_ym,
                        BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        SPLIT_K: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) output tile over the K-tiles of split ``program_id(1)``."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    n_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(n_tiles, SPLIT_K)
    t_begin = pid_k * per_split
    t_end = tl.minimum(t_begin + per_split, n_tiles)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm  # (BM, 1) row pointers
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # GEMV path only (BLOCK_M == 1): one row per k (int8) or per byte j (int4), reduced once at the end
    acc_k = tl.zeros((BLOCK_K * BITS // 8, BLOCK_N), dtype=tl.float32)
    for t in range(t_begin, t_end):
        k0 = t * BLOCK_K
        if BITS == 8:
            w = _int8_tile(wq_ptr, offs_n, n_mask, k0, K, stride_wn, BLOCK_K)  # (BK, BN) int32
            offs_k = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=m_mask[:, None] & (offs_k[None, :] < K),
                         other=0.0)  # (BM, BK)
            if BLOCK_M == 1:
                acc_k += w.to(tl.float32) * tl.reshape(xt.to(tl.float32), (BLOCK_K, 1))  # (BK, BN)
            elif DOT_F32:
                acc = tl.dot(xt.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(xt, w.to(xt.dtype), acc)  # bf16/f16 tensor cores, float32 accumulation
        else:
            lo, hi = _int4_tile(wq_ptr, zp_ptr, offs_n, n_mask, k0, stride_wn, stride_zn, GROUP, BLOCK_K)
            s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + k0 // GROUP, mask=n_mask, other=0.0)  # (BN,)
            offs_e = k0 + 2 * tl.arange(0, BLOCK_K // 2)  # even k; odd k = offs_e + 1
            xe = tl.load(x_rows + offs_e[None, :] * stride_xk, mask=m_mask[:, None], other=0.0)  # (BM, BK/2)
            xo = tl.load(x_rows + (offs_e + 1)[None, :] * stride_xk, mask=m_mask[:, None], other=0.0)
            if BLOCK_M == 1:
                xe1 = tl.reshape(xe.to(tl.float32), (BLOCK_K // 2, 1))
                xo1 = tl.reshape(xo.to(tl.float32), (BLOCK_K // 2, 1))
                acc_k += (lo.to(tl.float32) * xe1 + hi.to(tl.float32) * xo1) * s[None, :]  # (BK/2, BN)
            elif DOT_F32:
                part = tl.dot(xe.to(tl.float32), lo.to(tl.float32), input_precision="ieee")
                part = tl.dot(xo.to(tl.float32), hi.to(tl.float32), part, input_precision="ieee")
                acc += part * s[None, :]
            else:
                part = tl.dot(xe, lo.to(xe.dtype))  # (BM, BK/2) @ (BK/2, BN) -> (BM, BN) float32
                part = tl.dot(xo, hi.to(xo.dtype), part)
                acc += part * s[None, :]
    if BLOCK_M == 1:
        acc = tl.reshape(tl.sum(acc_k, axis=0), (1, BLOCK_N))  # (BK or BK/2, BN) -> (1, BN)
    if BITS == 8:
        sw = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn, mask=n_mask, other=0.0)
        acc = acc * sw[None, :]
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_n, mask=n_mask, other=0.0)
        acc = acc + tl.where(pid_k == 0, b, 0.0)[None, :]  # the first split adds the bias
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc, mask=out_mask)
    else:
        tl.atomic_add(y_ptrs, acc, mask=out_mask)


@triton.jit
def _unpack_kernel(wq_ptr, s_ptr, zp_ptr, d_ptr, sk_ptr, N, K, stride_wn, stride_sn, stride_zn,
                   BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Writes the integers d[n, k] and scales s[n, k] that ``_weight_only_kernel`` multiplies by (same helpers)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    n_mask = offs_n < N
    row = offs_n.to(tl.int64)[None, :] * K
    if BITS == 8:
        w = _int8_tile(wq_ptr, offs_n, n_mask, k0, K, stride_wn, BLOCK_K)  # (BK, BN)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = n_mask[None, :] & (offs_k[:, None] < K)
        sw = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn, mask=n_mask, other=0.0)
        tl.store(d_ptr + row + offs_k[:, None], w, mask=mask)
        tl.store(sk_ptr + row + offs_k[:, None], tl.broadcast_to(sw[None, :], (BLOCK_K, BLOCK_N)), mask=mask)
    else:
        lo, hi = _int4_tile(wq_ptr, zp_ptr, offs_n, n_mask, k0, stride_wn, stride_zn, GROUP, BLOCK_K)
        s = tl.load(s_ptr + offs_n.to(tl.int64) * stride_sn + k0 // GROUP, mask=n_mask, other=0.0)
        offs_e = k0 + 2 * tl.arange(0, BLOCK_K // 2)
        mask = n_mask[None, :] & (offs_e[:, None] < K)
        s2 = tl.broadcast_to(s[None, :], (BLOCK_K // 2, BLOCK_N))
        tl.store(d_ptr + row + offs_e[:, None], lo, mask=mask)
        tl.store(d_ptr + row + offs_e[:, None] + 1, hi, mask=mask)
        tl.store(sk_ptr + row + offs_e[:, None], s2, mask=mask)
        tl.store(sk_ptr + row + offs_e[:, None] + 1, s2, mask=mask)


def _check_weights(w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor | None, bits: int, group_size: int,
                   name: str) -> tuple[int, int, Tensor]:
    """Validate the stored formats; returns (N, K, scale as a 2-D float32 tensor)."""
    if bits == 8:
        check_integer(w_q, f"{name}: w_q", (torch.int8,))
    elif bits == 4:
        check_integer(w_q, f"{name}: w_q (packed int4)", (torch.uint8,))
    else:
        raise ValueError(f"{name}: bits must be 4 or 8, got {bits}")
    if w_q.dim() != 2 or w_q.stride(1) != 1:
        raise ValueError(f"{name}: w_q must be 2-D with unit stride along K, got {tuple(w_q.shape)} {w_q.stride()}")
    n = w_q.shape[0]
    k = w_q.shape[1] * (2 if bits == 4 else 1)
    groups = 1 if bits == 8 else k // group_size
    if bits == 4:
        if group_size < 2 or group_size & (group_size - 1) or k % group_size:
            raise ValueError(f"{name}: group_size must be a power of two dividing K = {k}, got {group_size}")
        if w_zero_point is None or w_zero_point.dtype != torch.uint8 or w_zero_point.shape != (n, groups):
            raise ValueError(f"{name}: w_zero_point must be uint8 ({n}, {groups})")
    s = torch.as_tensor(w_scale).to(device=w_q.device, dtype=torch.float32)
    if s.numel() != n * groups:
        raise ValueError(f"{name}: w_scale must have ({n}, {groups}) elements, got {tuple(s.shape)}")
    return n, k, s.reshape(n, groups).contiguous()


def linear(x: Tensor, w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor | None = None,
           bias: Tensor | None = None, bits: int = 8, group_size: int = 128, config: TileConfig | None = None,
           check: bool = True, name: str = "weight-only linear") -> Tensor:
    """Weight-only Linear on the GPU: float (..., K) -> float32 (..., N) (int8 per channel or int4 per group).

    Numerics: see the module docstring -- exact integers, float32 sums in the kernel's order,
    within ``gamma(K + 2) * (sum |x d s| + |b|)`` of the exact result. x float32, bfloat16 or
    float16 (..., K). ``check`` raises ``ValueError`` for NaN/Inf in ``x`` (a host sync).
    """
    n, k, s = _check_weights(w_q, w_scale, w_zero_point, bits, group_size, name)
    if x.dim() == 0 or x.shape[-1] != k or x.numel() == 0:
        raise ValueError(f"{name}: input has {x.shape[-1] if x.dim() else 0} features, layer expects {k}")
    if x.dtype not in _FLOAT_INPUTS:
        raise TypeError(f"{name}: input must be float32, bfloat16 or float16, got {x.dtype}")
    if check:
        check_finite(x, f"{name}: input")
    x2 = x.reshape(-1, k)  # (..., K) -> (M, K)
    m = x2.shape[0]
    if bias is not None:
        if bias.shape != (n,):
            raise ValueError(f"{name}: bias shape {tuple(bias.shape)} != ({n},)")
        bias = bias.to(torch.float32).contiguous()
    zp = w_zero_point if w_zero_point is not None else w_q  # any pointer; unused for int8
    check_device(_weight_only_kernel, name, x2, w_q, s, zp, bias)
    cfg = config or default_weight_only(m, n, k, bits, group_size)
    if bits == 4 and group_size % cfg.block_k:
        raise ValueError(f"{name}: int4 block_k must divide group_size {group_size}, got {cfg.block_k}")
    if 1 < cfg.block_m < 16 or cfg.block_n < 16 or cfg.block_k < 32:
        raise ValueError(f"{name}: tiles need block_m 1 (GEMV) or >= 16 (tensor cores), block_n >= 16 and "
                         f"block_k >= 32, got {cfg}")
    # the interpreter's bfloat16 dot is not a float product (numpy has no bfloat16): use float32 there
    dot_f32 = x2.dtype == torch.float32 or (x2.dtype == torch.bfloat16 and is_interpreted(_weight_only_kernel))
    alloc = torch.zeros if cfg.split_k > 1 else torch.empty  # atomics add into zeros
    y = alloc((m, n), dtype=torch.float32, device=x2.device)
    grid = (triton.cdiv(n, cfg.block_n), cfg.split_k, triton.cdiv(m, cfg.block_m))
    _weight_only_kernel[grid](x2, w_q, s, zp, s if bias is None else bias, y, m, n, k,
                              x2.stride(0), x2.stride(1), w_q.stride(0), s.stride(0), zp.stride(0), y.stride(0),
                              BITS=bits, GROUP=group_size if bits == 4 else 1, HAS_BIAS=bias is not None,
                              DOT_F32=dot_f32, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                              SPLIT_K=cfg.split_k, **launch_options(cfg.num_warps, cfg.num_stages, True))
    return y.reshape(*x.shape[:-1], n)


def unpack_weights(w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor | None = None, bits: int = 8,
                   group_size: int = 128, block_n: int = 32, block_k: int = 64) -> tuple[Tensor, Tensor]:
    """The integers and scales the GEMM kernel reads: ``(d int32 (N, K), scale float32 (N, K))``.

    ``d = w_q`` for int8, ``d = q - zero_point`` (unpacked nibbles) for int4; ``scale[n, k]``
    is the one multiplying element k (the row's, or its group's). Computed on the device
    by the same ``_int8_tile`` / ``_int4_tile`` helpers as :func:`linear`, so comparing
    them with the reference checks every integer the kernel multiplies by.
    """
    n, k, s = _check_weights(w_q, w_scale, w_zero_point, bits, group_size, "unpack_weights")
    if bits == 4 and group_size % block_k:
        raise ValueError(f"unpack_weights: block_k must divide group_size {group_size}, got {block_k}")
    zp = w_zero_point if w_zero_point is not None else w_q
    check_device(_unpack_kernel, "unpack_weights", w_q, s, zp)
    d = torch.empty((n, k), dtype=torch.int32, device=w_q.device)
    s_k = torch.empty((n, k), dtype=torch.float32, device=w_q.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    _unpack_kernel[grid](w_q, s, zp, d, s_k, n, k, w_q.stride(0), s.stride(0), zp.stride(0),
                         BITS=bits, GROUP=group_size if bits == 4 else 1, BLOCK_N=block_n, BLOCK_K=block_k)
    return d, s_k


def linear_module(layer: WeightOnlyLinear, x: Tensor, config: TileConfig | None = None) -> Tensor:
    """Run a :class:`glassquant.nn.weight_only.WeightOnlyLinear`'s buffers through :func:`linear`."""
    return linear(x, layer.w_q, layer.w_scale, layer.w_zero_point, layer.bias, bits=layer.bits,
                  group_size=layer.group_size, config=config, name=layer.name)


__all__ = ["linear", "linear_module", "unpack_weights"]
