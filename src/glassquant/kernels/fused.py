"""Fused CPU passes for the per-token dynamic W8A8 Linear (torchao dialect), via ctypes.

The compiled library (``_fused.c``, built by ``pip install``) does the activation
quantization in one pass and the int32 -> float32 rescale in one pass, with the float32
operations of :mod:`glassquant.dialects.torchao` in the same order, so the results are
bit-identical to it (tests/unit/test_kernels_fused.py). Between them ``torch._int_mm``
computes the int32 accumulators. When the library is missing (no C compiler at install
time) :func:`available` is False and callers use the pure-torch dialect path.

Only plain pointers and sizes cross the boundary; tensors are checked here (dtype,
device, contiguity, shape) before any pointer is passed.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from ._libs import load_extension

__all__ = ["available", "quantize_rows", "rescale_rows"]

_c_i64, _c_ptr = ctypes.c_int64, ctypes.c_void_p


def _load() -> ctypes.CDLL | None:
    lib = load_extension("_fused")
    if lib is None:
        return None
    lib.gq_quantize_rows.restype = ctypes.c_int
    lib.gq_quantize_rows.argtypes = [_c_ptr, _c_i64, _c_i64, _c_i64, _c_ptr, _c_ptr,
                                     ctypes.c_int32, ctypes.c_int32, ctypes.c_float, ctypes.c_float]
    lib.gq_rescale_rows.restype = None
    lib.gq_rescale_rows.argtypes = [_c_ptr, _c_i64, _c_i64, _c_ptr, _c_ptr, _c_i64, _c_ptr,
                                    ctypes.c_int, _c_ptr]
    return lib


_LIB = _load()


def available() -> bool:
    """True when the compiled fused passes were built and load."""
    return _LIB is not None


def _check_rows(x: Tensor, dtype: torch.dtype, name: str) -> None:
    if x.dtype != dtype or x.device.type != "cpu" or x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"{name}: expected a CPU {dtype} (M, K) tensor with unit column stride, got "
                         f"{x.dtype} {tuple(x.shape)} strides {x.stride()} on {x.device}")


def quantize_rows(x: Tensor, qmin: int, qmax: int, eps: float, divisor: float) -> tuple[Tensor, Tensor] | None:
    """Per-row symmetric int8 quantization of float32 ``x`` (M, K) in one fused pass.

    Numerics: ``scale[m] = max(f32(max_k |x[m,k]| / divisor), eps)``; ``q = clamp(rne(f32(x *
    f32(1 / scale))), qmin, qmax)`` -- torchao's ``choose_qparams_affine`` + ``quantize_affine``
    for int8 with ``divisor = (qmax - qmin) / 2``. Returns ``(q int8 (M, K), scale float32
    (M, 1))``, or None when ``x`` holds NaN or Inf (the caller reports it by name).
    """
    assert _LIB is not None, "glassquant: the fused CPU library is not built"
    _check_rows(x, torch.float32, "quantize_rows: x")
    if not -128 <= qmin <= qmax <= 127:
        raise ValueError(f"quantize_rows: [{qmin}, {qmax}] is not an int8 range")
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8)
    scale = torch.empty((m, 1), dtype=torch.float32)
    bad = _LIB.gq_quantize_rows(x.data_ptr(), m, k, x.stride(0), q.data_ptr(), scale.data_ptr(),
                                qmin, qmax, eps, divisor)
    return None if bad else (q, scale)


def rescale_rows(acc: Tensor, x_scale: Tensor, w_scale: Tensor, bias: Tensor | None, relu: bool = False,
                 in_place: bool = False) -> Tensor:
    """``y = f32(f32(f32(acc) * sx[m]) * sw[n])``, then ``+ b[n]``, then ReLU, in one fused pass.

    Numerics: acc int32 (M, N) contiguous; x_scale float32 (M, 1) or (M,); w_scale float32
    (N,) or one element; bias float32 (N,) or None. The same three float32 roundings in
    the same order as :func:`glassquant.dialects.torchao.dynamic_output`. Returns float32 (M, N):
    with ``in_place`` it is ``acc``'s own storage reinterpreted (``acc`` is consumed).
    """
    assert _LIB is not None, "glassquant: the fused CPU library is not built"
    if acc.dtype != torch.int32 or acc.dim() != 2 or not acc.is_contiguous():
        raise ValueError(f"rescale_rows: expected a contiguous int32 (M, N) accumulator, got {acc.dtype} "
                         f"{tuple(acc.shape)}")
    m, n = acc.shape
    sx = x_scale.reshape(-1)
    if sx.dtype != torch.float32 or sx.numel() != m or not sx.is_contiguous():
        raise ValueError(f"rescale_rows: x_scale must be {m} contiguous float32 values, got {tuple(x_scale.shape)}")
    sw = w_scale.reshape(-1)
    if sw.dtype != torch.float32 or sw.numel() not in (1, n) or not sw.is_contiguous():
        raise ValueError(f"rescale_rows: w_scale must be 1 or {n} contiguous float32 values, got "
                         f"{tuple(w_scale.shape)}")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (n,) or not bias.is_contiguous()):
        raise ValueError(f"rescale_rows: bias must be ({n},) contiguous float32, got {tuple(bias.shape)}")
    y = acc.view(torch.float32) if in_place else torch.empty((m, n), dtype=torch.float32)
    _LIB.gq_rescale_rows(acc.data_ptr(), m, n, sx.data_ptr(), sw.data_ptr(), 0 if sw.numel() == 1 else 1,
                         None if bias is None else bias.data_ptr(), int(relu), y.data_ptr())
    return y
