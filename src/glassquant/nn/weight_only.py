"""Weight-only Linear: int8, int4 or any b-bit (2..8) weights, float32 activations and outputs.

``WeightOnlyLinear`` has two storage formats, both with float32 scales of shape (N, K / group_size):

- ``bits=8``: int8 per output channel, symmetric (one group per row, ``group_size = K``),
  torchao's ``Int8WeightOnlyConfig`` rule (``dialects.torchao``: ``scale = max(amax / 127.5, eps)``,
  ``q = clamp(rne(w * f32(1/scale)), -128, 127)``). ``w_q`` int8 (N, K), no zero point.
- ``bits=4``: per group of ``group_size`` (32, 64 or 128) consecutive values along K,
  **asymmetric** uint4 on [0, 15] with glassquant's eq. 2 (range widened to include 0,
  ``scale = max((hi - lo) / 15, eps)``, ``zero_point = clamp(-rne(lo / scale), 0, 15)``) and
  eq. 3 (``q = clamp(rne(w / scale) + zero_point, 0, 15)``). Asymmetric because a group's
  values are rarely centred on zero and the 16 levels are few; the zero point costs one
  uint8 per group. ``w_q`` is uint8 (N, K / 2), two values per byte, low nibble first
  (``kernels.int4``); ``w_zero_point`` uint8 (N, K / group_size). K must be a multiple of
  ``group_size`` (no padding: a ``ValueError`` says so).

Memory (weight bytes including scales and zero points): int8 ``N*K + 4*N``; int4
``N*K/2 + 5*N*K/group_size`` — 0.539 ``N*K`` for group 128.

``PackedWeightOnlyLinear`` (any b in 2..8, codes packed b bits each; the bit allocator's layer) lives
in :mod:`glassquant.nn.packed` and is re-exported here.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..affine import dequantize, quantize
from ..dialects import torchao
from ..errors import check_finite, check_integer
from ..kernels import weight_only as wo_kernels
from ..kernels.int4 import pack_int4, unpack_int4
from ..qparams import choose_qparams, observe_range
from ..scheme import QScheme
from .base import QuantModule, register
from .packed import INT4_GROUP_SIZES, weight_only_forward

#: int8 weights: symmetric, one scale per output channel (torchao's Int8WeightOnlyConfig).
INT8_PER_ROW = QScheme(bits=8, signed=True, symmetric=True, axis=0)


def int4_scheme(group_size: int) -> QScheme:
    """The int4 weight grid: unsigned [0, 15], asymmetric, one (scale, zero point) per group along K."""
    return QScheme(bits=4, signed=False, symmetric=False, group_size=group_size)


def quantize_int4_groupwise(weight: Tensor, group_size: int, name: str = "weight") -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric per-group uint4 weights: ``(w_q uint8 (N, K) in [0, 15], scale float32 (N, K/g), zero_point uint8)``.

    Numerics: exact float32 min/max per group; eq. 2 (affine, float32, ``scale >= eps``,
    zero point rounded half to even and clamped to [0, 15]); eq. 3 (one float32 division,
    half to even, zero point added in integers, clamp to [0, 15]). Worked example, a group
    with range (-1.0, 2.0): ``scale = 3/15 = 0.2``, ``zero_point = -rne(-5.0) = 5``;
    ``w = 0.0 -> 5``, ``w = 2.0 -> 15``, ``w = 0.3 -> rne(1.5) + 5 = 7``.
    """
    scheme = int4_scheme(group_size)
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty (N, K) weight, got shape {tuple(weight.shape)}")
    if weight.shape[1] % group_size:
        raise ValueError(f"{name}: in_features {weight.shape[1]} is not a multiple of group_size {group_size}; "
                         "pad the layer's input dimension or choose another group size")
    w_min, w_max = observe_range(weight, scheme, name)  # (N, K/g) each
    scale, zero_point = choose_qparams(w_min, w_max, scheme)
    w_q = quantize(weight.detach().to(torch.float32), scale, zero_point, scheme)  # uint8 (N, K)
    return w_q, scale, zero_point.to(torch.uint8)


@register
class WeightOnlyLinear(QuantModule):
    """Linear with int8 or int4 weights and float32 activations: ``y = x @ W.T + b``.

    Buffers: ``w_q`` int8 (N, K) for ``bits=8``, packed uint8 (N, K/2) for ``bits=4``;
    ``w_scale`` float32 (N, K/group_size); ``w_zero_point`` uint8 (N, K/group_size) for
    ``bits=4``, absent for ``bits=8``; ``bias`` float32 (N,) or absent.

    Numerics of ``forward`` (x float (..., K) -> float32 (..., N)):
      bits=8: ``y = f32(f32(x @ f32(w_q).T) * w_scale[n])``, then ``+ b`` — the one group of a
      row factors out of the sum, and this is torchao's order
      (``dialects.torchao.linear_weight_only``);
      bits=4: dequantize group by group, ``W = f32(q - zero_point) * scale`` (eq. 1, exact
      integer difference, one float32 multiply), then ``y = x @ W.T + b`` (float32 matmul, the
      BLAS library's summation order).
    """

    kind = "WeightOnlyLinear"
    meta_fields = ("bits", "group_size", "name")
    optional_tensors: ClassVar[tuple[str, ...]] = ("bias", "w_zero_point")
    w_q: Tensor
    w_scale: Tensor
    w_zero_point: Tensor | None
    bias: Tensor | None

    def __init__(self, w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor | None, bias: Tensor | None, *,
                 bits: int, group_size: int, name: str = "WeightOnlyLinear") -> None:
        super().__init__()
        self.bits, self.group_size, self.name = int(bits), int(group_size), name
        if self.bits not in (4, 8):
            raise ValueError(f"{name}: bits must be 4 or 8, got {bits}")
        if w_q.dim() != 2:
            raise ValueError(f"{name}: w_q must be 2-D, got shape {tuple(w_q.shape)}")
        n = w_q.shape[0]
        if self.bits == 8:
            check_integer(w_q, f"{name}: w_q", (torch.int8,))
            k = w_q.shape[1]
            if self.group_size != k:
                raise ValueError(f"{name}: int8 weights are per output channel, group_size must be K = {k}, "
                                 f"got {group_size}")
            if w_zero_point is not None:
                raise ValueError(f"{name}: int8 weights are symmetric and take no w_zero_point")
        else:
            check_integer(w_q, f"{name}: w_q (packed int4)", (torch.uint8,))
            k = 2 * w_q.shape[1]
            if self.group_size not in INT4_GROUP_SIZES:
                raise ValueError(f"{name}: int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
            if k % self.group_size:
                raise ValueError(f"{name}: K = {k} is not a multiple of group_size {group_size}")
            if w_zero_point is None:
                raise ValueError(f"{name}: int4 weights are asymmetric and need w_zero_point")
            check_integer(w_zero_point, f"{name}: w_zero_point", (torch.uint8,))
            if w_zero_point.shape != (n, k // self.group_size):
                raise ValueError(f"{name}: w_zero_point shape {tuple(w_zero_point.shape)} != "
                                 f"({n}, {k // self.group_size})")
            if w_zero_point.numel() and int(w_zero_point.max()) > 15:
                raise ValueError(f"{name}: w_zero_point values must be in [0, 15]")
        groups = k // self.group_size
        w_scale = torch.as_tensor(w_scale)
        if not w_scale.is_floating_point() or w_scale.shape != (n, groups):
            raise ValueError(f"{name}: w_scale must be float (N, K/group_size) = ({n}, {groups}), "
                             f"got {w_scale.dtype} {tuple(w_scale.shape)}")
        w_scale = w_scale.detach().to(torch.float32)
        check_finite(w_scale, f"{name}: w_scale")
        if w_scale.numel() and float(w_scale.min()) <= 0:
            raise ValueError(f"{name}: w_scale must be positive")
        if bias is not None:
            check_finite(bias, f"{name}: bias")
            if bias.shape != (n,):
                raise ValueError(f"{name}: bias shape {tuple(bias.shape)} != ({n},)")
        self._in_features = k
        self.register_buffer("w_q", w_q.detach().contiguous())
        self.register_buffer("w_scale", w_scale.contiguous())
        self.register_buffer("w_zero_point", None if w_zero_point is None else w_zero_point.detach().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self._grid: wo_kernels.PlanCache[wo_kernels.Grid] = wo_kernels.PlanCache()

    @property
    def in_features(self) -> int:
        return self._in_features

    def _kernel_grid(self) -> wo_kernels.Grid | None:
        """The packed weight as the compiled kernels read it: views of the buffers, no copy."""
        def build() -> wo_kernels.Grid | None:
            n, k = self.out_features, self.in_features
            ok = all(t.device.type == "cpu" and t.is_contiguous() for t in (self.w_q, self.w_scale))
            if not ok or (self.bias is not None and self.bias.device.type != "cpu"):
                return None
            if self.bits == 8:
                return wo_kernels.Grid(self.w_q.reshape(-1), 8, n, k, self.w_scale.reshape(-1), None, k, 1,
                                       signed_int8=True)
            assert self.w_zero_point is not None
            return wo_kernels.Grid(self.w_q.reshape(-1), 4, n, k, self.w_scale.reshape(-1),
                                   self.w_zero_point.reshape(-1), self.group_size, k // self.group_size)
        return self._grid.get(self.w_q, self.w_scale, self.w_zero_point, self.bias, (), build)

    @property
    def out_features(self) -> int:
        return int(self.w_q.shape[0])

    def weight_bytes(self) -> int:
        """Bytes of the quantized weight, its scales and zero points (not the bias)."""
        ts = [self.w_q, self.w_scale] + ([] if self.w_zero_point is None else [self.w_zero_point])
        return sum(t.numel() * t.element_size() for t in ts)

    def dequantize_weight(self) -> Tensor:
        """The float32 weight (N, K) the int4 path multiplies by: ``f32(q - zero_point) * scale`` per group.

        For ``bits=8``: ``f32(w_q) * w_scale[n]`` (what ``forward`` is equivalent to up to rounding).
        """
        if self.bits == 8:
            return self.w_q.to(torch.float32) * self.w_scale  # (N, K) * (N, 1)
        assert self.w_zero_point is not None
        q = unpack_int4(self.w_q, torch.uint8, f"{self.name}: w_q")  # (N, K) in [0, 15]
        return dequantize(q, self.w_scale, self.w_zero_point.to(torch.int32), int4_scheme(self.group_size))

    def forward(self, x: Tensor) -> Tensor:
        return weight_only_forward(self, x, self._int8_forward if self.bits == 8 else None)

    def _int8_forward(self, x: Tensor, grid: wo_kernels.Grid | None) -> Tensor:
        """int8 beyond the streaming kernel: torchao's order (``x @ f32(w).T``, then ``* s``, ``+ b``); the
        float32 conversion goes into the reused buffer when the kernels are built."""
        w_float = None if grid is None else wo_kernels.scratch(self.out_features, self.in_features).copy_(
            self.w_q).t()
        return torchao.linear_weight_only(x, self.w_q, self.w_scale.reshape(-1), self.bias, self.name,
                                          w_float=w_float)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}")

    @classmethod
    def from_float(cls, linear: nn.Linear, *, bits: int = 8, group_size: int | None = None,
                   name: str = "WeightOnlyLinear") -> WeightOnlyLinear:
        """Quantize a float ``nn.Linear``: ``bits=8`` per output channel (``group_size`` must be
        None), ``bits=4`` per group of ``group_size`` in (32, 64, 128) along K."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name}: from_float expects nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        bias = None if linear.bias is None else linear.bias.detach()
        if bits == 8:
            if group_size is not None:
                raise ValueError(f"{name}: int8 weight-only is per output channel; group_size must be None, "
                                 f"got {group_size}")
            w_q, scale, _ = torchao.quantize_weight(weight, INT8_PER_ROW, f"{name}.weight")
            return cls(w_q, scale.reshape(-1, 1), None, bias, bits=8, group_size=weight.shape[1], name=name)
        if bits != 4:
            raise ValueError(f"{name}: bits must be 4 or 8, got {bits}")
        if group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"{name}: int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
        q, scale, zero_point = quantize_int4_groupwise(weight, group_size, f"{name}.weight")
        return cls(pack_int4(q, f"{name}.weight"), scale, zero_point, bias, bits=4, group_size=group_size,
                   name=name)


# b-bit packed weights (nn/packed.py), importable from here as before
from .packed import (  # noqa: E402
    GRANULARITIES,
    MSE_CLIP_RATIOS,
    PACKED_BITS,
    PackedWeightOnlyLinear,
    clipped_qparams,
    group_rows,
    mse_clip_ratios,
    packed_scheme,
    qparam_shape,
    quantize_weight_packed,
    row_scheme,
)

__all__ = ["GRANULARITIES", "INT4_GROUP_SIZES", "INT8_PER_ROW", "MSE_CLIP_RATIOS", "PACKED_BITS",
           "PackedWeightOnlyLinear", "WeightOnlyLinear", "clipped_qparams", "group_rows", "int4_scheme",
           "mse_clip_ratios", "packed_scheme", "qparam_shape", "quantize_int4_groupwise", "quantize_weight_packed",
           "row_scheme"]
