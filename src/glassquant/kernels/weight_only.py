"""Compiled weight-only Linear for the CPU (``_wo.c``, built by ``pip install``), via ctypes.

Two entry points, chosen by the number of rows M (:data:`GEMV_MAX_ROWS`):

- **few rows** (decode, M <= 16): :func:`linear` streams the packed weight once, row by row,
  dequantizing each row into a K-float buffer and taking its dot product with every input
  row. The weight is read in its packed form (0.5 byte per int4 value, 1 per int8), never
  expanded in memory. The float32 sums run in the kernel's own order (64 partial sums, or 32
  when four input rows share one pass over a weight row, then a fixed tree; FMA where the CPU
  has it): within float32 summation error of the reference (the BLAS library's order), not
  bit-identical to it.
- **many rows**: :func:`dequantize` writes the float32 weight exactly as the reference computes
  it (``f32(code - zero_point) * scale``, bit-identical) into a reused per-thread buffer
  (:func:`scratch`), and the caller runs the reference's own matmul on it, so the result is
  bit-identical to the pure-torch path; only the expansion is compiled (one pass, all threads).

Weights: an (N, K) matrix of codes as one LSB-first bitstream of ``bits`` per code (the int4
layer's two-per-byte layout is that stream for bits = 4); scales float32 and zero points uint8
per group, group index ``n * row_groups + k // group`` (:class:`Grid`). When the library is
missing, :func:`available` is False and the layers keep their pure-torch paths.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from ._cache import PlanCache
from ._libs import load_extension

__all__ = ["GEMV_MAX_ROWS", "Grid", "PlanCache", "available", "dequantize", "linear", "release_scratch", "scratch",
           "usable"]

#: Rows up to which :func:`linear` (the streaming kernel) is used; above, dequantize + the reference matmul.
GEMV_MAX_ROWS = 16

_c_i64, _c_ptr, _c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


def _load() -> ctypes.CDLL | None:
    lib = load_extension("_wo")
    if lib is None:
        return None
    lib.gq_wo_linear.restype = _c_int
    lib.gq_wo_linear.argtypes = [_c_ptr, _c_i64, _c_i64, _c_i64, _c_i64, _c_ptr, _c_i64, _c_int, _c_int, _c_ptr,
                                 _c_ptr, _c_i64, _c_i64, _c_ptr, _c_ptr]
    lib.gq_wo_dequantize.restype = None
    lib.gq_wo_dequantize.argtypes = [_c_ptr, _c_i64, _c_int, _c_i64, _c_i64, _c_ptr, _c_ptr, _c_i64, _c_i64, _c_ptr]
    return lib


_LIB = _load()


def available() -> bool:
    """True when the compiled weight-only kernels were built and load."""
    return _LIB is not None


@dataclass(frozen=True)
class Grid:
    """One packed weight as the kernels read it (tensors contiguous on the CPU, checked at construction).

    ``codes`` uint8 bitstream of the (N, K) codes, ``bits`` per code (8 with ``signed_int8``: int8
    codes, one scale per row, the scale applied after the sum); ``scale`` float32 and ``zero_point``
    uint8 per group, ``G = N * row_groups`` groups (1 when ``row_groups`` is 0); ``group`` codes per
    group along K (K for per tensor and per row).
    """

    codes: Tensor
    bits: int
    n: int
    k: int
    scale: Tensor
    zero_point: Tensor | None
    group: int
    row_groups: int
    signed_int8: bool = False

    def __post_init__(self) -> None:
        n, k, name = self.n, self.k, "weight-only kernel"
        if not 2 <= self.bits <= 8 or (self.signed_int8 and self.bits != 8):
            raise ValueError(f"{name}: bits must be in 2..8 (8 for signed int8), got {self.bits}")
        if self.group < 1 or k % self.group or self.row_groups not in (0, 1, k // self.group):
            raise ValueError(f"{name}: group {self.group} / row_groups {self.row_groups} do not fit K = {k}")
        if self.bits == 4 and k % 2:
            raise ValueError(f"{name}: int4 rows need an even K, got {k}")
        groups = max(1, n * self.row_groups)
        want = (n * k * self.bits + 7) // 8
        for t, dtype, numel, label in ((self.codes, torch.int8 if self.signed_int8 else torch.uint8, None, "codes"),
                                       (self.scale, torch.float32, groups, "scale")):
            if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError(f"{name}: {label} must be contiguous CPU {dtype}, got {t.dtype} on {t.device}")
            if label == "codes" and t.numel() != want:
                raise ValueError(f"{name}: codes must hold {want} bytes for ({n}, {k}) x {self.bits} bits, "
                                 f"got {t.numel()}")
            if numel is not None and t.numel() != numel:
                raise ValueError(f"{name}: {label} must have {numel} values, got {t.numel()}")
        if not self.signed_int8:
            zp = self.zero_point
            if zp is None or zp.dtype != torch.uint8 or not zp.is_contiguous() or zp.numel() != groups:
                raise ValueError(f"{name}: zero_point must be contiguous uint8 with {groups} values")
        elif self.row_groups != 1:
            raise ValueError(f"{name}: signed int8 weights have one scale per row")


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def linear(x: Tensor, grid: Grid, bias: Tensor | None) -> Tensor:
    """``y`` float32 (M, N) from float32 ``x`` (M, K); see the module docstring."""
    if _LIB is None:
        raise RuntimeError("the compiled weight-only kernels are not built")
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 2 or x.shape[1] != grid.k:
        raise ValueError(f"weight-only kernel: x must be a CPU float32 (M, {grid.k}) tensor, got {x.dtype} "
                         f"{tuple(x.shape)} on {x.device}")
    if x.stride(1) != 1 or x.stride(0) < grid.k:
        x = x.contiguous()
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous() or bias.numel() != grid.n):
        raise ValueError(f"weight-only kernel: bias must be contiguous float32 ({grid.n},)")
    m = x.shape[0]
    y = torch.empty(m, grid.n, dtype=torch.float32)
    if m == 0:
        return y
    rc = _LIB.gq_wo_linear(x.data_ptr(), m, grid.k, x.stride(0), grid.n, grid.codes.data_ptr(), grid.codes.numel(),
                           grid.bits, 1 if grid.signed_int8 else 0, grid.scale.data_ptr(), _ptr(grid.zero_point),
                           grid.group, grid.row_groups, _ptr(bias), y.data_ptr())
    if rc != 0:
        raise MemoryError(f"weight-only kernel: no memory for a {grid.k}-float row buffer")
    return y


_SCRATCH = threading.local()


def scratch(n: int, k: int) -> Tensor:
    """A float32 (N, K) buffer reused from call to call by this Python thread (grown when too small).

    Why: a fresh 64 MB tensor costs its page faults on every call (measured here: 19 ms of a 26 ms
    int4 4096 x 4096 expansion; 7 ms into a buffer already touched). The buffer is transient working
    memory, not part of any layer: it holds the largest weight expanded so far (4 N K bytes) until
    :func:`release_scratch`. Valid only until the next call on this thread."""
    buf: Tensor | None = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.numel() < n * k:
        buf = torch.empty(n * k, dtype=torch.float32)
        _SCRATCH.buf = buf
    return buf[: n * k].view(n, k)


def release_scratch() -> None:
    """Free this thread's expansion buffer (:func:`scratch`)."""
    _SCRATCH.buf = None


def dequantize(grid: Grid, out: Tensor | None = None) -> Tensor:
    """The float32 weight (N, K): ``f32(code - zero_point) * scale`` per group, bit-identical to
    ``affine.dequantize``, written into ``out`` (contiguous float32 (N, K); e.g. :func:`scratch`) or a
    new tensor. Not for ``signed_int8`` grids (their reference converts, then scales after)."""
    if _LIB is None:
        raise RuntimeError("the compiled weight-only kernels are not built")
    if grid.signed_int8:
        raise ValueError("weight-only kernel: dequantize is for asymmetric unsigned grids")
    if out is None:
        out = torch.empty(grid.n, grid.k, dtype=torch.float32)
    elif out.shape != (grid.n, grid.k) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"weight-only kernel: out must be contiguous float32 ({grid.n}, {grid.k})")
    _LIB.gq_wo_dequantize(grid.codes.data_ptr(), grid.codes.numel(), grid.bits, grid.n, grid.k,
                          grid.scale.data_ptr(), _ptr(grid.zero_point), grid.group, grid.row_groups, out.data_ptr())
    return out


def usable(x: Tensor) -> bool:
    """Whether the compiled kernels may serve this input: built, a CPU float32 tensor, and no
    autograd graph to record (the kernels have no backward; training takes the torch path)."""
    return _LIB is not None and x.device.type == "cpu" and x.dtype == torch.float32 and not (
        x.requires_grad and torch.is_grad_enabled())
