"""AVX512-VNNI W8A8 Linear: a whole layer forward in one compiled call (``_vnni*.c``), via ctypes.

One call quantizes the activations, accumulates uint8 x int8 -> int32 with VPDPBUSD straight
from the layer's row-major ``w_q`` (no packed copy: the layer keeps N*K weight bytes plus
int32 column sums and a few per-channel float32 constants), and applies the dialect's
epilogue, with the float32 operations of the reference dialect in the same order:

* ``plan_token`` -- :mod:`glassquant.dialects.torchao` dynamic (per-token int8 activations);
* ``plan_dynamic`` -- :mod:`glassquant.dialects.fbgemm` dynamic (per-tensor uint8, qparams
  chosen per call by fbgemm's ChooseQuantizationParams, ``reduce_range``);
* ``plan_static`` -- :mod:`glassquant.dialects.fbgemm` static (uint8 in, requantize, uint8 or
  dequantized float32 out).

A plan holds a layer's constants (and references to the tensors they came from); ``run_float``
/ ``run_uint8`` run it on one input. The numerics contract is in ``_vnni.h`` and the files it
names; tests/unit/test_kernels_vnni.py compares every path with the dialect (``torch.equal``).
:func:`available` is False when the library was not built or the CPU lacks AVX512-VNNI; the
layers then take their other paths (same numbers, slower).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from ..dialects import torchao
from ..dialects._base import as_column
from ..floatops import f32
from ._cache import PlanCache
from ._libs import load_extension

__all__ = ["Plan", "PlanCache", "accepts", "available", "im2col_u8", "plan_dynamic", "plan_onednn_conv",
           "plan_static", "plan_token", "quantize_u8", "run_float", "run_uint8"]

_c_i64, _c_i32, _c_f32, _c_ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_void_p
ACT_TOKEN_S8, ACT_TENSOR_U8, ACT_DYNAMIC_U8, ACT_GIVEN_U8 = 0, 1, 2, 3
OUT_TOKEN, OUT_DYNAMIC, OUT_STATIC_U8, OUT_STATIC_F32, OUT_ONEDNN_U8 = 0, 1, 2, 3, 4
BIAS_NONE, BIAS_ADD, BIAS_FMA = 0, 1, 2
#: kernel choice (``Plan.kernel``): by shape, dot kernel only, token-block kernel for full 16-row blocks
KERNEL_AUTO, KERNEL_DOT, KERNEL_BLOCK = 0, 1, 2


class _Args(ctypes.Structure):
    """``struct gq_linear`` of ``_vnni.h``, field for field."""

    _fields_ = [
        ("w", _c_ptr), ("col_sum", _c_ptr), ("w_scale", _c_ptr), ("bias", _c_ptr), ("multiplier", _c_ptr),
        ("bias_acc", _c_ptr), ("n", _c_i64), ("k", _c_i64),
        ("x", _c_ptr), ("m", _c_i64), ("ldx", _c_i64), ("y", _c_ptr), ("x_row_scale", _c_ptr), ("work", _c_ptr),
        ("act", _c_i32), ("out", _c_i32), ("relu", _c_i32), ("reduce_range", _c_i32), ("bias_mode", _c_i32),
        ("threads", _c_i32), ("kernel", _c_i32),
        ("x_scale", _c_f32), ("x_zero_point", _c_i32), ("bias_rcp", _c_f32), ("y_scale", _c_f32),
        ("y_zero_point", _c_i32),
    ]


def _load() -> ctypes.CDLL | None:
    lib = load_extension("_vnni")
    if lib is None:
        return None
    lib.gq_vnni_supported.restype = ctypes.c_int
    lib.gq_vnni_work_bytes.restype = _c_i64
    lib.gq_vnni_work_bytes.argtypes = [_c_i64, _c_i64]
    lib.gq_vnni_linear.restype = ctypes.c_int
    lib.gq_vnni_linear.argtypes = [ctypes.POINTER(_Args)]
    lib.gq_vnni_run.restype = ctypes.c_int
    lib.gq_vnni_run.argtypes = [ctypes.POINTER(_Args), _c_ptr, _c_i64, _c_i64, _c_ptr, _c_ptr, _c_i64,
                                _c_i32, _c_i32, _c_i32, _c_i32]
    lib.gq_vnni_peak_ops.restype = ctypes.c_double
    lib.gq_vnni_peak_ops.argtypes = [_c_i64, _c_i32]
    lib.gq_vnni_quantize_u8.restype = ctypes.c_int
    lib.gq_vnni_quantize_u8.argtypes = [_c_ptr, _c_i64, _c_ptr, _c_f32, _c_i32]
    lib.gq_im2col_u8.restype = None
    lib.gq_im2col_u8.argtypes = [_c_ptr, *([_c_i64] * 12), _c_i32, _c_i64, _c_i64, _c_ptr]
    lib.gq_vnni_choose_qparams_u8.restype = None
    lib.gq_vnni_choose_qparams_u8.argtypes = [_c_f32, _c_f32, _c_i32, _c_i32, _c_i32,
                                              ctypes.POINTER(_c_f32), ctypes.POINTER(_c_i32)]
    return lib


_LIB = _load()
# the per-token constants are compiled in (_vnni_quant.c); use the kernels only while they agree
_SUPPORTED = (_LIB is not None and bool(_LIB.gq_vnni_supported())
              and (torchao.QMIN, torchao.QMAX, torchao.SCALE_EPS) == (-128, 127, 2.0**-23))


def available() -> bool:
    """True when the compiled VNNI kernels are built and this CPU has AVX512-VNNI (checked once)."""
    return _SUPPORTED


@dataclass
class Plan:
    """A layer's constants for the compiled kernels: the call arguments that do not change, and the
    tensors they point into (kept alive here). ``kernel`` picks the integer kernel (tests, benchmarks)."""

    args: _Args
    tensors: tuple[Tensor, ...]
    out_features: int
    kernel: int = KERNEL_AUTO

    @property
    def nbytes(self) -> int:
        """Bytes this plan adds to the layer beyond ``w_q`` (column sums, per-channel float32 constants)."""
        return sum(t.numel() * t.element_size() for t in self.tensors[1:])


def _plan(w_q: Tensor, w_scale: Tensor, bias: Tensor | None, act: int, out: int, relu: bool,
          multiplier: Tensor | None = None, bias_acc: Tensor | None = None, **scalars: float | int) -> Plan:
    """The constant arguments of one layer: ``w_q`` used in place, its int32 column sums (exact:
    ``|sum| <= 128 K``), the weight scale expanded to (N,), the bias and the static constants."""
    n, k = w_q.shape
    w = w_q if w_q.is_contiguous() else w_q.contiguous()
    col_sum = w.sum(dim=1, dtype=torch.int32)  # (N,) |sum| <= 128 K, exact
    sw = f32(as_column(w_scale.reshape(-1), n, torch.float32)).contiguous()  # (N,) per-tensor expanded
    b = None if bias is None else f32(bias).contiguous()
    args = _Args(n=n, k=k, act=act, out=out, relu=int(relu), **scalars)
    kept: list[Tensor] = [w]
    for name, t in (("w", w), ("col_sum", col_sum), ("w_scale", sw), ("bias", b), ("multiplier", multiplier),
                    ("bias_acc", bias_acc)):
        if t is not None:
            setattr(args, name, t.data_ptr())
            kept += [t] if t is not w else []
    return Plan(args=args, tensors=tuple(kept), out_features=n)


def _symmetric(w_zero_point: Tensor) -> bool:
    return not bool(w_zero_point.any())


def plan_token(w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor, bias: Tensor | None, relu: bool) -> Plan | None:
    """Plan for the torchao per-token dynamic Linear (None unless the weight is symmetric)."""
    if not _symmetric(w_zero_point):
        return None
    return _plan(w_q, w_scale, bias, ACT_TOKEN_S8, OUT_TOKEN, relu)


def plan_dynamic(w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor, bias: Tensor | None, relu: bool,
                 reduce_range: bool) -> Plan | None:
    """Plan for the fbgemm/x86 dynamic Linear (None unless the weight is symmetric)."""
    if not _symmetric(w_zero_point):
        return None
    return _plan(w_q, w_scale, bias, ACT_DYNAMIC_U8, OUT_DYNAMIC, relu, reduce_range=int(reduce_range))


def plan_static(w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor, bias: Tensor | None, x_scale: float,
                x_zero_point: int, y_scale: float, y_zero_point: int, relu: bool) -> Plan | None:
    """Plan for the fbgemm/x86 static Linear: fbgemm's requantize constants, formed once.

    Numerics (as :func:`glassquant.dialects.fbgemm.prerounding`, float32 torch operations):
    ``atw = f32(sx) * sw[n]``; ``multiplier = atw / f32(sy)``; per channel ``bias_acc = f32(b) /
    atw``; per tensor ``bias_rcp = f32(1 / f64(atw))``. None when the weight is asymmetric or a
    constant is not finite and positive (those layers keep the reference path).
    """
    if not _symmetric(w_zero_point):
        return None
    n = w_q.shape[0]
    per_channel = w_scale.numel() > 1
    sw = f32(as_column(w_scale.reshape(-1), n, torch.float32))
    atw = f32(x_scale) * sw  # (N,) float32
    multiplier = (atw / f32(y_scale)).contiguous()  # (N,) float32
    scalars: dict[str, float | int] = {"x_scale": float(f32(x_scale)), "x_zero_point": int(x_zero_point),
                                       "y_scale": float(f32(y_scale)), "y_zero_point": int(y_zero_point),
                                       "bias_mode": BIAS_NONE}
    bias_acc, checks = None, [multiplier, atw]
    if bias is not None and per_channel:
        bias_acc = (f32(bias) / atw).contiguous()  # (N,) float32
        scalars["bias_mode"] = BIAS_ADD
        checks.append(bias_acc)
    elif bias is not None:
        rcp = f32(1.0 / atw[:1].to(torch.float64))
        scalars.update(bias_rcp=float(rcp), bias_mode=BIAS_FMA)
        checks.append(rcp)
    if not all(bool(torch.isfinite(t).all()) for t in checks) or not bool((multiplier > 0).all()) \
            or not bool((atw > 0).all()):
        return None
    return _plan(w_q, w_scale, bias, ACT_TENSOR_U8, OUT_STATIC_F32, relu, multiplier=multiplier,
                 bias_acc=bias_acc, **scalars)


def plan_onednn_conv(w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor, bias: Tensor | None, x_scale_rt: float,
                     x_zero_point: int, inv_y_scale: float, y_zero_point: int, relu: bool) -> Plan | None:
    """Plan for oneDNN's int8 convolution as a Linear over im2col rows (uint8 in, uint8 out).

    ``w_q`` int8 (C_out, K) (the kernel flattened, one group); ``x_scale_rt`` = ``f32(1 / f32(1 /
    f64(sx)))`` and ``inv_y_scale`` = ``f32(1 / that of sy)`` formed by the caller
    (``nn.conv.onednn_conv_prerounding``); the epilogue is GQ_OUT_ONEDNN_U8 (_vnni_epilogue.c).
    None when the weight is asymmetric or a constant is not finite and positive.
    """
    if not _symmetric(w_zero_point):
        return None
    consts = torch.tensor([x_scale_rt, inv_y_scale], dtype=torch.float32)
    sw = f32(w_scale.reshape(-1))
    if not bool(torch.isfinite(consts).all()) or not bool((consts > 0).all()) or not bool(torch.isfinite(sw).all()):
        return None
    return _plan(w_q, w_scale, bias, ACT_GIVEN_U8, OUT_ONEDNN_U8, relu, x_scale=float(consts[0]),
                 x_zero_point=int(x_zero_point), y_scale=float(consts[1]), y_zero_point=int(y_zero_point))


_SCRATCH = threading.local()


def _scratch(nbytes: int) -> int:
    """A 64-byte aligned scratch buffer of at least ``nbytes`` for this thread (kept and grown:
    at most the largest call's ``2 M K64 + 4 M`` bytes stay allocated per thread)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.numel() < nbytes + 64:
        buf = _SCRATCH.buf = torch.empty(max(nbytes + 64, 1 << 16), dtype=torch.uint8)
    return (buf.data_ptr() + 63) // 64 * 64


def _call(plan: Plan, x: Tensor, y: Tensor, act: int, out: int) -> int:
    assert _LIB is not None, "glassquant: the VNNI library is not built"
    m, k = x.shape
    nbytes = 2 * m * ((k + 63) // 64 * 64) + 4 * m + 64  # gq_vnni_work_bytes + the per-token scales
    work = _scratch(nbytes)
    rc = int(_LIB.gq_vnni_run(ctypes.byref(plan.args), x.data_ptr(), m, x.stride(0), y.data_ptr(), work, nbytes,
                              act, out, torch.get_num_threads(), plan.kernel))
    assert rc != -2, "glassquant: VNNI scratch size mismatch"
    return rc


def accepts(plan: Plan, x: Tensor) -> bool:
    """Whether ``x`` (..., K) can go through ``plan``: a non-empty CPU tensor with K features, at
    least 1-D. (dtype is the caller's test: float32 for :func:`run_float`, uint8 for :func:`run_uint8`.)"""
    return x.dim() > 0 and x.shape[-1] == plan.args.k and x.numel() > 0 and x.device.type == "cpu"


def _rows(x: Tensor, k: int) -> Tensor:
    """``x`` (..., K) as (M, K) with unit column stride (a view when it can be)."""
    x2 = x if x.dim() == 2 else x.reshape(-1, k)  # (M, K)
    return x2 if x2.stride(1) == 1 else x2.contiguous()


def _check(plan: Plan, x: Tensor, dtype: torch.dtype, name: str) -> None:
    if x.dtype != dtype or not accepts(plan, x):
        raise ValueError(f"{name}: expected a non-empty CPU {dtype} (..., {plan.args.k}) tensor, got "
                         f"{x.dtype} {tuple(x.shape)} on {x.device}")


def run_float(plan: Plan, x: Tensor) -> Tensor | None:
    """Float32 (..., K) -> float32 (..., N) through the plan (static plans dequantize their output).

    Returns None when ``x`` holds NaN or Inf: the caller then takes its reference path, which
    raises its named error.
    """
    _check(plan, x, torch.float32, "vnni.run_float: x")
    x2 = _rows(x, plan.args.k)  # (M, K)
    y = torch.empty((x2.shape[0], plan.out_features), dtype=torch.float32)  # (M, N)
    if _call(plan, x2, y, plan.args.act, plan.args.out) != 0:
        return None
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], plan.out_features)


def run_uint8(plan: Plan, x_q: Tensor) -> Tensor:
    """Static plans only: uint8 (..., K) -> uint8 (..., N), the integers of ``forward_int`` (fbgemm's
    requantize, or oneDNN's convolution for a :func:`plan_onednn_conv` plan)."""
    if plan.args.out not in (OUT_STATIC_U8, OUT_STATIC_F32, OUT_ONEDNN_U8):
        raise ValueError("vnni.run_uint8: the plan is not a static (uint8 in, uint8 out) plan")
    _check(plan, x_q, torch.uint8, "vnni.run_uint8: x_q")
    x2 = _rows(x_q, plan.args.k)  # (M, K)
    y = torch.empty((x2.shape[0], plan.out_features), dtype=torch.uint8)  # (M, N)
    rc = _call(plan, x2, y, ACT_GIVEN_U8, OUT_ONEDNN_U8 if plan.args.out == OUT_ONEDNN_U8 else OUT_STATIC_U8)
    assert rc == 0, rc  # uint8 inputs cannot be non-finite
    return y if x_q.dim() == 2 else y.reshape(*x_q.shape[:-1], plan.out_features)


def quantize_u8(x: Tensor, scale: float, zero_point: int) -> Tensor | None:
    """``dialects.pytorch.quantize(x, scale, zero_point, torch.uint8)`` for a float32 CPU tensor of any
    shape, bit for bit, in one compiled pass (``gq_vnni_quantize_u8``). Returns None without the
    kernels, or when ``x`` holds NaN or Inf (the caller's torch path then raises its named error)."""
    if not _SUPPORTED or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    assert _LIB is not None
    xc = x.contiguous()
    q = torch.empty(x.shape, dtype=torch.uint8)
    rc = _LIB.gq_vnni_quantize_u8(xc.data_ptr(), xc.numel(), q.data_ptr(), float(scale), int(zero_point))
    return q if rc == 0 else None


def im2col_u8(x_q: Tensor, zero_point: int, kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """Patches of a uint8 (N, C, H, W) input, channels last (``gq_im2col_u8``): uint8 (N * OH * OW,
    kH * kW * C), column ``(i, j, c)`` = ``x_pad[n, c, oh * sh + i * dh, ow * sw + j * dw]``, the padding
    read as ``zero_point``. ``nn.conv.im2col(...)[0]`` with its ``(c, i, j)`` columns reordered to
    ``(i, j, c)`` (a weight permuted to (C_out, kH, kW, C) multiplies it). Exact (a gather)."""
    assert _LIB is not None, "glassquant: the VNNI library is not built"
    if x_q.dtype != torch.uint8 or x_q.dim() != 4 or x_q.device.type != "cpu":
        raise ValueError(f"vnni.im2col_u8: expected a CPU uint8 (N, C, H, W) tensor, got {x_q.dtype} "
                         f"{tuple(x_q.shape)}")
    n, c, h, w = x_q.shape
    x = x_q.permute(0, 2, 3, 1).contiguous()  # (N, H, W, C)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = torch.empty((n * oh * ow, kh * kw * c), dtype=torch.uint8)
    if out.numel():
        _LIB.gq_im2col_u8(x.data_ptr(), n, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, int(zero_point), oh, ow,
                          out.data_ptr())
    return out


def choose_qparams_u8(x_min: float, x_max: float, reduce_range: bool) -> tuple[float, int]:
    """The compiled ``ChooseQuantizationParams`` (uint8, [0, 255]); for tests against the dialect."""
    assert _LIB is not None, "glassquant: the VNNI library is not built"
    scale, zp = _c_f32(), _c_i32()
    _LIB.gq_vnni_choose_qparams_u8(x_min, x_max, 0, 255, int(reduce_range), ctypes.byref(scale), ctypes.byref(zp))
    return float(scale.value), int(zp.value)


def peak_ops_per_second(threads: int, seconds: float = 0.01, tries: int = 40) -> float:
    """This machine's VPDPBUSD throughput bound in int8 ops/s on ``threads`` threads (the best of
    ``tries`` timed runs of about ``seconds`` each): the 100% of the benchmarks' "% of peak".
    On a shared machine the best run is the one the other processes disturbed least."""
    import time

    assert _SUPPORTED and _LIB is not None, "glassquant: the VNNI kernels are not available"
    iters = 10_000
    for _ in range(3):  # size the run on one thread
        t = time.perf_counter()
        _LIB.gq_vnni_peak_ops(iters, 1)
        iters = max(10_000, int(iters * seconds / max(time.perf_counter() - t, 1e-6)))
    best = 0.0
    for _ in range(tries):
        t = time.perf_counter()
        ops = _LIB.gq_vnni_peak_ops(iters, threads)
        best = max(best, ops / (time.perf_counter() - t))
    return best
