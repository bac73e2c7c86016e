"""Triton W8A8 dynamic Linear (torchao dialect): per-token int8 activations, int8 weights, exact int32 GEMM.

Two kernels, bit-exact with :mod:`glassquant.dialects.torchao` (``quantize_activation``,
``accumulate``, ``dynamic_output``):

1. ``_quantize_rows_kernel`` -- a few rows per program: ``amax = max |x|`` per row;
   ``scale = max(f32(amax / 127.5), 2**-23)`` (``div_rn``: one correctly rounded division);
   ``inv = f32(1 / scale)`` (``div_rn``); ``q = clamp(rne(f32(x * inv)), -128, 127)`` with
   ``rne`` written out (``_common.round_half_even``). It also counts NaN/Inf per row.
2. ``_w8a8_gemm_kernel`` -- ``acc = x_q @ w_q.T`` with ``tl.dot`` int8 x int8 -> int32 (tensor
   cores; exact: |acc| <= 16384 K < 2**31 for K <= 131071), then the epilogue
   ``y = f32(f32(f32(acc) * sx[m]) * sw[n])``, ``y = f32(y + b[n])``; optionally rounded to
   bfloat16 (nearest-even, by bit arithmetic) or returned as the raw int32 accumulators.

Both launch with ``enable_fp_fusion=False``: an FMA would fuse ``x * inv`` into the rounding
add, or ``(.) * sw + b`` into one rounding, and change results (tests/unit/test_triton_kernels.py
shows inputs where it would). Inputs may be float32, bfloat16 or float16 (converted exactly to
float32 first, so the result equals the reference on ``x.float()``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...dialects import torchao
from ...errors import check_finite, check_integer
from ._common import check_device, launch_options, round_half_even, to_bf16_rne
from .configs import TileConfig, default_w8a8

#: Largest K whose int32 accumulators cannot overflow: 128 * 128 * K <= 2**31 - 1.
MAX_K = (2**31 - 1) // (128 * 128)
#: Output modes of the GEMM epilogue.
OUT_FLOAT32, OUT_BFLOAT16, OUT_ACC = 0, 1, 2
_OUT_MODES = {torch.float32: OUT_FLOAT32, torch.bfloat16: OUT_BFLOAT16, torch.int32: OUT_ACC}
_FLOAT_INPUTS = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, bad_ptr, M, K, stride_xm, stride_xk, stride_qm,
                          BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """BLOCK_M rows: scale = max(f32(amax / 127.5), 2**-23); q = clamp(rne(f32(x * f32(1/scale))), -128, 127)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    offs = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm  # (BM, 1)
    amax = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    bad = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        mask = row_mask[:, None] & (offs[None, :] < K - k0)
        x = tl.load(x_rows + (k0 + offs)[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
        ax = tl.abs(x)
        bad += ((x != x) | (ax > 3.4028234663852886e38)).to(tl.int32)  # NaN or +-Inf
        amax = tl.maximum(amax, ax)
    row_amax = tl.max(amax, axis=1)  # (BM,) exact
    scale = tl.maximum(tl.math.div_rn(row_amax, 127.5), 1.1920928955078125e-07)  # max(f32(amax/127.5), 2**-23)
    inv_scale = tl.math.div_rn(tl.full((BLOCK_M,), 1.0, tl.float32), scale)  # f32(1 / scale)
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_qm
    for k0 in range(0, K, BLOCK_K):
        mask = row_mask[:, None] & (offs[None, :] < K - k0)
        x = tl.load(x_rows + (k0 + offs)[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
        v = x * inv_scale[:, None]  # one float32 multiply; |v| <= 127.5 (1 + 2**-22)
        r = tl.minimum(tl.maximum(round_half_even(v), -128.0), 127.0)
        tl.store(q_rows + (k0 + offs)[None, :], r.to(tl.int8), mask=mask)
    tl.store(scale_ptr + rows, scale, mask=row_mask)
    tl.store(bad_ptr + rows, tl.sum(bad, axis=1), mask=row_mask)


@triton.jit
def _w8a8_gemm_kernel(xq_ptr, wq_ptr, sx_ptr, sw_ptr, b_ptr, y_ptr, M, N, K,
                      stride_xm, stride_wn, stride_ym,
                      HAS_BIAS: tl.constexpr, OUT_MODE: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) output tile: exact int32 acc = x_q @ w_q.T, then the float32 epilogue."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n  # GROUP_M M-blocks walk the N-blocks together (L2 reuse)
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m % M  # wrapped rows/columns load valid memory; the store is masked
    cols = offs_n % N
    a_ptrs = xq_ptr + rows.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]  # (BM, BK) int8, K contiguous
    b_ptrs = wq_ptr + cols.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]  # (BK, BN) int8 = w_q.T tile
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k0, other=0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k0, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)  # (BM, BK) @ (BK, BN) -> (BM, BN) int32, exact
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if OUT_MODE == 2:
        tl.store(y_ptrs, acc, mask=out_mask)
    else:
        sx = tl.load(sx_ptr + rows)  # (BM,) float32
        sw = tl.load(sw_ptr + cols)  # (BN,) float32
        y = acc.to(tl.float32) * sx[:, None]  # f32(acc) rounds past 2**24; then one float32 multiply
        y = y * sw[None, :]  # second multiply (no FMA: launched with enable_fp_fusion=False)
        if HAS_BIAS:
            y = y + tl.load(b_ptr + cols)[None, :]
        if OUT_MODE == 1:
            tl.store(y_ptrs, to_bf16_rne(y), mask=out_mask)
        else:
            tl.store(y_ptrs, y, mask=out_mask)


def _pow2_at_least(n: int, lo: int, hi: int) -> int:
    p = lo
    while p < n and p < hi:
        p *= 2
    return p


def quantize_activation(x: Tensor, block_k: int | None = None, block_m: int | None = None, check: bool = True,
                        name: str = "w8a8 linear: input") -> tuple[Tensor, Tensor]:
    """Per-token int8 activations on the GPU: ``(x_q int8 (M, K), x_scale float32 (M, 1))``.

    Numerics: exactly :func:`glassquant.dialects.torchao.quantize_activation` on ``x.float()``
    (see the module docstring). x float32/bfloat16/float16 (M, K), any strides. ``check``
    raises ``ValueError`` naming ``name`` if a row holds NaN or Inf (one device -> host sync);
    with ``check=False`` such rows give unspecified integers. A program handles ``block_m``
    rows (default ``4096 // block_k``, at most 16), ``block_k`` columns per step (default
    ``min(next_pow2(K), 2048)``); both powers of two, neither changes a result.
    """
    if x.dim() != 2 or x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty (M, K) tensor, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_INPUTS:
        raise TypeError(f"{name}: expected float32, bfloat16 or float16, got {x.dtype}")
    check_device(_quantize_rows_kernel, name, x)
    m, k = x.shape
    bk = block_k or _pow2_at_least(k, 16, 2048)
    bm = block_m or max(1, min(16, 4096 // bk))
    if bk < 1 or bk & (bk - 1) or bm < 1 or bm & (bm - 1):
        raise ValueError(f"{name}: block_k and block_m must be powers of two, got {bk}, {bm}")
    x_q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    x_scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    bad = torch.empty((m,), dtype=torch.int32, device=x.device)
    warps = 8 if bm * bk >= 2048 else 4
    _quantize_rows_kernel[(triton.cdiv(m, bm),)](x, x_q, x_scale, bad, m, k, x.stride(0), x.stride(1), x_q.stride(0),
                                                 BLOCK_M=bm, BLOCK_K=bk, **launch_options(warps, 1, False))
    if check and bool(bad.any()):
        check_finite(x, name)  # raises, with the NaN/Inf counts
    return x_q, x_scale


def _check_weight(w_q: Tensor, w_scale: Tensor, bias: Tensor | None, k: int, name: str) -> tuple[Tensor, Tensor | None]:
    check_integer(w_q, f"{name}: w_q", (torch.int8,))
    if w_q.dim() != 2 or w_q.shape[1] != k or w_q.stride(1) != 1:
        raise ValueError(f"{name}: w_q must be (N, K={k}) with unit stride along K, got {tuple(w_q.shape)} "
                         f"strides {w_q.stride()}")
    if k > MAX_K:
        raise ValueError(f"{name}: K = {k} > {MAX_K} could overflow the int32 accumulators; split K")
    n = w_q.shape[0]
    sw = torch.as_tensor(w_scale).to(device=w_q.device, dtype=torch.float32).reshape(-1)
    if sw.numel() == 1:
        sw = sw.expand(n)
    if sw.shape != (n,):
        raise ValueError(f"{name}: w_scale must be a scalar or have {n} elements, got {tuple(sw.shape)}")
    if bias is not None:
        if bias.shape != (n,):
            raise ValueError(f"{name}: bias shape {tuple(bias.shape)} != ({n},)")
        bias = bias.to(torch.float32).contiguous()
    return sw.contiguous(), bias


def gemm(x_q: Tensor, x_scale: Tensor, w_q: Tensor, w_scale: Tensor | float, bias: Tensor | None = None,
         out_dtype: torch.dtype = torch.float32, config: TileConfig | None = None,
         name: str = "w8a8 gemm") -> Tensor:
    """Exact int8 GEMM with torchao's float32 epilogue: ``(M, K) x (N, K) -> (M, N)``.

    Numerics: ``acc[m, n] = sum_k x_q[m, k] * w_q[n, k]`` in int32 (exact, K <= ``MAX_K``);
    ``out_dtype=torch.int32`` returns ``acc``; float32 returns
    ``f32(f32(f32(f32(acc) * x_scale[m]) * w_scale[n]) + bias[n])`` (= ``torchao.dynamic_output``);
    bfloat16 rounds that float32 value once more, to nearest-even. x_q int8 (M, K) contiguous
    along K; x_scale float32 (M, 1) or (M,); w_q int8 (N, K) contiguous along K; w_scale
    float32 scalar or (N,); bias (N,) or None.
    """
    if out_dtype not in _OUT_MODES:
        raise ValueError(f"{name}: out_dtype must be torch.float32, torch.bfloat16 or torch.int32, got {out_dtype}")
    check_integer(x_q, f"{name}: x_q", (torch.int8,))
    if x_q.dim() != 2 or x_q.stride(1) != 1:
        raise ValueError(f"{name}: x_q must be (M, K) with unit stride along K, got {tuple(x_q.shape)}")
    m, k = x_q.shape
    sw, b = _check_weight(w_q, torch.as_tensor(w_scale), bias, k, name)
    sx = x_scale.to(torch.float32).reshape(-1).contiguous()
    if sx.shape != (m,):
        raise ValueError(f"{name}: x_scale must have M = {m} elements, got {tuple(x_scale.shape)}")
    check_device(_w8a8_gemm_kernel, name, x_q, sx, w_q, sw, b)
    n = w_q.shape[0]
    cfg = config or default_w8a8(m, n, k)
    if cfg.block_m < 16 or cfg.block_n < 16 or cfg.block_k < 32:
        raise ValueError(f"{name}: int8 tensor-core tiles need block_m, block_n >= 16 and block_k >= 32, got {cfg}")
    y = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _w8a8_gemm_kernel[grid](x_q, w_q, sx, sw, sw if b is None else b, y, m, n, k,
                            x_q.stride(0), w_q.stride(0), y.stride(0),
                            HAS_BIAS=b is not None, OUT_MODE=_OUT_MODES[out_dtype], BLOCK_M=cfg.block_m,
                            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
                            **launch_options(cfg.num_warps, cfg.num_stages, False))
    return y


def linear_dynamic(x: Tensor, w_q: Tensor, w_scale: Tensor | float, bias: Tensor | None = None,
                   out_dtype: torch.dtype = torch.float32, config: TileConfig | None = None,
                   check: bool = True, name: str = "w8a8 linear") -> Tensor:
    """Dynamic W8A8 Linear on the GPU: float (..., K) -> (..., N), bit-exact with ``torchao.linear_dynamic``.

    Numerics: :func:`quantize_activation` (per token) then :func:`gemm`; float32 output equal
    to ``dialects.torchao.linear_dynamic(x.float(), w_q, w_scale, 0, bias)`` element for element
    (bfloat16 output: that value rounded to nearest-even). ``check`` as in
    :func:`quantize_activation`.
    """
    if x.dim() == 0 or x.shape[-1] != w_q.shape[-1]:
        raise ValueError(f"{name}: input has {x.shape[-1] if x.dim() else 0} features, "
                         f"weight expects {w_q.shape[-1]}")
    x2 = x.reshape(-1, x.shape[-1])  # (..., K) -> (M, K)
    x_q, x_scale = quantize_activation(x2, check=check, name=f"{name}: input")
    y = gemm(x_q, x_scale, w_q, w_scale, bias, out_dtype, config, name)
    return y.reshape(*x.shape[:-1], w_q.shape[0])


def reference_dynamic(x: Tensor, w_q: Tensor, w_scale: Tensor | float, bias: Tensor | None = None) -> Tensor:
    """The reference these kernels equal: ``dialects.torchao.linear_dynamic`` on ``x.float()`` (any device)."""
    return torchao.linear_dynamic(x.float(), w_q, w_scale, 0, bias)


__all__ = ["MAX_K", "gemm", "linear_dynamic", "quantize_activation", "reference_dynamic"]
