"""Weight-only Linear with b-bit weights, 2 <= b <= 8, packed densely (the bit allocator's layer).

``PackedWeightOnlyLinear`` (the layer the bit allocator of ``analysis.allocate`` places) takes any
``b`` in 2..8 and one (scale, zero point) per tensor, per output channel or per group of 32 / 64 / 128:
asymmetric, unsigned [0, 2**b - 1], eq. 2 on the range optionally clipped to a ratio of itself (or the
per-group MSE-optimal ratio), eq. 3. Codes and zero points are packed densely, ``b`` bits each, into
uint8 bitstreams (``kernels.int4.pack_bits``): the layer stores exactly
``ceil(N*K*b/8) + 4*G + ceil(G*b/8)`` bytes for G groups (3 bits, group 128: 0.41 ``N*K``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..affine import dequantize, quantize
from ..errors import check_finite, check_integer
from ..kernels import weight_only as wo_kernels
from ..kernels.int4 import pack_bits, packed_bytes, unpack_bits
from ..qparams import choose_qparams, observe_range
from ..scheme import QScheme
from .base import QuantModule, register

#: int4 group sizes accepted (those of torchao's int4 weight-only configs); also the b-bit group sizes.
INT4_GROUP_SIZES = (32, 64, 128)

#: Bit widths of :class:`PackedWeightOnlyLinear`.
PACKED_BITS = (2, 3, 4, 5, 6, 7, 8)
#: How its (scale, zero point) pairs are shared; per-group sizes are those of ``INT4_GROUP_SIZES``.
GRANULARITIES = ("per_tensor", "per_channel", "per_group")
#: Clipping ratios the ``clip="mse"`` rule searches, largest first (ties keep the larger ratio).
MSE_CLIP_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))  # 1.0, 0.95, ..., 0.5


def packed_scheme(bits: int, granularity: str, group_size: int | None = None) -> QScheme:
    """The grid of a b-bit packed weight: unsigned [0, 2**bits - 1], asymmetric, shared as named.

    ``per_tensor``: one (scale, zero point); ``per_channel``: one per output row (axis 0);
    ``per_group``: one per ``group_size`` consecutive values along K.
    """
    if bits not in PACKED_BITS:
        raise ValueError(f"packed weights: bits must be in 2..8, got {bits}")
    if granularity == "per_tensor":
        return QScheme(bits=bits, signed=False)
    if granularity == "per_channel":
        return QScheme(bits=bits, signed=False, axis=0)
    if granularity == "per_group":
        if group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"packed weights: group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
        return QScheme(bits=bits, signed=False, group_size=group_size)
    raise ValueError(f"packed weights: granularity must be one of {GRANULARITIES}, got {granularity!r}")


def qparam_shape(n: int, k: int, scheme: QScheme) -> tuple[int, int]:
    """Shape of the stored scales and zero points of an (N, K) weight: (1, 1), (N, 1) or (N, K/g)."""
    if scheme.granularity == "per_tensor":
        return (1, 1)
    if scheme.granularity == "per_channel":
        return (n, 1)
    return (n, k // (scheme.group_size or 1))


def group_rows(w: Tensor, scheme: QScheme) -> Tensor:
    """An (N, K) tensor viewed as (G, values): one row per (scale, zero point), in stored order.

    Per tensor (1, N*K), per channel (N, K), per group (N*K/g, g). On this view every granularity is
    "one scale per row" (``row_scheme``), which is how the layer quantizes and dequantizes.
    """
    if scheme.granularity == "per_tensor":
        return w.reshape(1, -1)  # (1, N*K)
    if scheme.granularity == "per_channel":
        return w
    return w.reshape(-1, scheme.group_size or 1)  # (N, K) -> (N*K/g, g)


def row_scheme(bits: int) -> QScheme:
    """Unsigned ``bits``-bit affine grid, one (scale, zero point) per row (axis 0) of :func:`group_rows`."""
    return QScheme(bits=bits, signed=False, axis=0)


def clipped_qparams(w_min: Tensor, w_max: Tensor, scheme: QScheme, clip: float | Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 2 on a clipped range: ``lo = min(w_min, 0)``, ``hi = max(w_max, 0)``, then
    ``choose_qparams(f32(lo * clip), f32(hi * clip))``.

    Numerics: float32; ``clip`` in (0, 1] (a float, or a float32 tensor shaped like ``w_min``);
    ``clip = 1`` is eq. 2 unchanged. Values beyond the clipped range saturate in eq. 3.
    Example, 4 bits, range (-1.0, 2.0), clip 0.9: (-0.9, 1.8), scale = 2.7 / 15 = 0.18,
    zero point = -rne(-0.9 / 0.18) = 5.
    """
    c = torch.as_tensor(clip, dtype=torch.float32)
    zero = torch.zeros((), dtype=torch.float32)
    lo, hi = torch.minimum(w_min, zero), torch.maximum(w_max, zero)
    return choose_qparams(lo * c, hi * c, scheme)


def mse_clip_ratios(rows: Tensor, w_min: Tensor, w_max: Tensor, bits: int) -> Tensor:
    """Per row of :func:`group_rows`, the ratio of :data:`MSE_CLIP_RATIOS` whose round trip
    ``dequantize(quantize(w))`` has the least squared error against ``w``.

    Numerics: each candidate quantized exactly as :func:`clipped_qparams` + eq. 3 would; errors
    summed in float64; on a tie the larger ratio wins. Returns float32 (G,).
    """
    scheme = row_scheme(bits)
    w64 = rows.to(torch.float64)
    best_err = torch.full(w_min.shape, float("inf"), dtype=torch.float64)
    best = torch.ones(w_min.shape, dtype=torch.float32)
    for r in MSE_CLIP_RATIOS:
        scale, zero_point = clipped_qparams(w_min, w_max, scheme, r)
        back = dequantize(quantize(rows, scale, zero_point, scheme), scale, zero_point, scheme)  # (G, values)
        err = ((back.to(torch.float64) - w64) ** 2).sum(dim=1)  # (G,)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.tensor(r, dtype=torch.float32), best)
    return best


def quantize_weight_packed(weight: Tensor, bits: int, granularity: str, group_size: int | None = None,
                           clip: float | str = 1.0, name: str = "weight") -> tuple[Tensor, Tensor, Tensor]:
    """b-bit asymmetric weights: ``(codes uint8 (N, K) in [0, 2**bits - 1], scale float32, zero_point uint8)``,
    scale and zero point shaped by :func:`qparam_shape`.

    Numerics: exact float32 min/max per tensor / row / group; :func:`clipped_qparams` (eq. 2 on
    the range times ``clip``; ``clip="mse"``: per group the ratio of :func:`mse_clip_ratios`);
    eq. 3 (one float32 division, half to even, zero point added in integers, clamp to the grid).
    """
    scheme = packed_scheme(bits, granularity, group_size)
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty (N, K) weight, got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if scheme.granularity == "per_group" and k % (group_size or 1):
        raise ValueError(f"{name}: in_features {k} is not a multiple of group_size {group_size}")
    rows = group_rows(weight.detach().to(torch.float32), scheme)  # (G, values)
    w_min, w_max = observe_range(rows, row_scheme(bits), name)  # (G,) each
    if clip == "mse":
        ratio: float | Tensor = mse_clip_ratios(rows, w_min, w_max, bits)
    elif isinstance(clip, (int, float)) and 0 < clip <= 1:
        ratio = float(clip)
    else:
        raise ValueError(f"{name}: clip must be a ratio in (0, 1] or 'mse', got {clip!r}")
    scale, zero_point = clipped_qparams(w_min, w_max, row_scheme(bits), ratio)
    codes = quantize(rows, scale, zero_point, row_scheme(bits)).reshape(n, k)  # uint8 (G, values) -> (N, K)
    shape = qparam_shape(n, k, scheme)
    return codes, scale.reshape(shape), zero_point.to(torch.uint8).reshape(shape)


def weight_only_forward(layer: Any, x: Tensor,
                        expanded: Callable[[Tensor, wo_kernels.Grid | None], Tensor] | None = None) -> Tensor:
    """The float forward of the weight-only layers (``PackedWeightOnlyLinear``, ``WeightOnlyLinear``).

    Checks the input (float, K features, finite: errors name the layer); up to
    ``kernels.weight_only.GEMV_MAX_ROWS`` rows of a CPU float32 input the compiled kernel streams the
    packed weight (within float32 summation error of the reference). Otherwise ``expanded(x, grid)``
    when given (``WeightOnlyLinear``'s int8: torchao's order, scale after the sum), else the reference:
    ``W = layer.dequantize_weight()`` (the compiled expansion into a reused buffer gives the same
    floats), ``y = x @ W.T``, ``y += b``. ``layer``: ``in_features``, ``out_features``, ``bias``,
    ``name``, ``dequantize_weight()`` and ``_kernel_grid()``. Returns float32 (..., N).
    """
    k, n = layer.in_features, layer.out_features
    if x.shape[-1:] != (k,):
        raise ValueError(f"{layer.name}: input has {x.shape[-1] if x.dim() else 0} features, layer expects {k}")
    if not x.is_floating_point():
        raise TypeError(f"{layer.name}: input must be a float tensor, got {x.dtype}")
    check_finite(x, f"{layer.name}: input")
    grid = layer._kernel_grid() if wo_kernels.usable(x) else None
    if grid is not None and x.numel() // max(1, k) <= wo_kernels.GEMV_MAX_ROWS:  # stream (kernels/_wo.c)
        return wo_kernels.linear(x.reshape(-1, k), grid, layer.bias).reshape(*x.shape[:-1], n)
    if expanded is not None:
        return expanded(x, grid)
    # (N, K) float32; the compiled expansion is bit-identical to dequantize_weight()
    w = layer.dequantize_weight() if grid is None else wo_kernels.dequantize(grid, wo_kernels.scratch(n, k))
    y = x.to(torch.float32).reshape(-1, k) @ w.T  # (M, K) @ (K, N) -> (M, N) float32
    if layer.bias is not None:
        y = y.add_(layer.bias)  # in place: the same float32 sums as y + b, no second (M, N) tensor
    return y.reshape(*x.shape[:-1], n)


@register
class PackedWeightOnlyLinear(QuantModule):
    """Linear with b-bit weights (2 <= b <= 8) packed densely, float32 activations: ``y = x @ W.T + b``.

    Buffers: ``w_q`` uint8 (ceil(N*K*b/8),), the codes of the (N, K) weight in row-major order as
    one LSB-first bitstream (``kernels.int4.pack_bits``); ``w_scale`` float32, (1, 1) per tensor,
    (N, 1) per channel, (N, K/g) per group; ``w_zero_point`` uint8 (ceil(G*b/8),), the G zero
    points, b bits each, packed the same way; ``bias`` float32 (N,) or absent. Codes and zero
    points lie on [0, 2**b - 1].

    Numerics of ``forward`` (x float (..., K) -> float32 (..., N)): unpack, dequantize
    ``W = f32(code - zero_point) * scale`` (eq. 1, exact integer difference, one float32
    multiply), then ``y = x @ W.T + b`` (float32 matmul, the BLAS library's summation order).
    Bytes (``weight_bytes``): ``ceil(N*K*b/8) + 4*G + ceil(G*b/8)``.
    """

    kind = "PackedWeightOnlyLinear"
    meta_fields = ("bits", "granularity", "group_size", "in_features", "out_features", "name")
    optional_tensors: ClassVar[tuple[str, ...]] = ("bias",)
    w_q: Tensor
    w_scale: Tensor
    w_zero_point: Tensor
    bias: Tensor | None

    def __init__(self, w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor, bias: Tensor | None, *, bits: int,
                 granularity: str, group_size: int | None, in_features: int, out_features: int,
                 name: str = "PackedWeightOnlyLinear") -> None:
        super().__init__()
        self.name = name
        try:
            self.scheme = packed_scheme(int(bits), granularity, None if group_size is None else int(group_size))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        if granularity != "per_group" and group_size is not None:
            raise ValueError(f"{name}: group_size is only for per_group weights, got {group_size} for {granularity}")
        self.bits, self.granularity = int(bits), granularity
        self.group_size = None if group_size is None else int(group_size)
        self.in_features, self.out_features = int(in_features), int(out_features)
        n, k = self.out_features, self.in_features
        if n < 1 or k < 1:
            raise ValueError(f"{name}: in_features and out_features must be >= 1, got {k} and {n}")
        if self.group_size is not None and k % self.group_size:
            raise ValueError(f"{name}: in_features {k} is not a multiple of group_size {self.group_size}")
        check_integer(w_q, f"{name}: w_q (packed codes)", (torch.uint8,))
        if w_q.shape != (packed_bytes(n * k, self.bits),):
            raise ValueError(f"{name}: w_q must be 1-D with ceil({n} * {k} * {self.bits} / 8) = "
                             f"{packed_bytes(n * k, self.bits)} bytes, got shape {tuple(w_q.shape)}")
        shape = qparam_shape(n, k, self.scheme)
        w_scale = torch.as_tensor(w_scale)
        if not w_scale.is_floating_point() or w_scale.shape != shape:
            raise ValueError(f"{name}: w_scale must be float {shape}, got {w_scale.dtype} {tuple(w_scale.shape)}")
        w_scale = w_scale.detach().to(torch.float32)
        check_finite(w_scale, f"{name}: w_scale")
        if float(w_scale.min()) <= 0:
            raise ValueError(f"{name}: w_scale must be positive")
        groups = shape[0] * shape[1]
        check_integer(w_zero_point, f"{name}: w_zero_point (packed)", (torch.uint8,))
        if w_zero_point.shape != (packed_bytes(groups, self.bits),):
            raise ValueError(f"{name}: w_zero_point must be 1-D with ceil({groups} * {self.bits} / 8) = "
                             f"{packed_bytes(groups, self.bits)} bytes, got shape {tuple(w_zero_point.shape)}")
        if bias is not None:
            check_finite(bias, f"{name}: bias")
            if bias.shape != (n,):
                raise ValueError(f"{name}: bias shape {tuple(bias.shape)} != ({n},)")
        self.register_buffer("w_q", w_q.detach().contiguous())
        self.register_buffer("w_scale", w_scale.contiguous())
        self.register_buffer("w_zero_point", w_zero_point.detach().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self._grid: wo_kernels.PlanCache[wo_kernels.Grid] = wo_kernels.PlanCache()

    def _kernel_grid(self) -> wo_kernels.Grid | None:
        """The packed codes as the compiled kernels read them; the zero points unpacked once (G bytes)."""
        def build() -> wo_kernels.Grid | None:
            if any(t.device.type != "cpu" for t in (self.w_q, self.w_scale, self.w_zero_point)):
                return None
            n, k = self.out_features, self.in_features
            row_groups = {"per_tensor": 0, "per_channel": 1}.get(self.granularity, k // (self.group_size or k))
            return wo_kernels.Grid(self.w_q, self.bits, n, k, self.w_scale.reshape(-1).contiguous(),
                                   self.zero_points().reshape(-1).contiguous(), self.group_size or k, row_groups)
        return self._grid.get(self.w_q, self.w_scale, self.w_zero_point, self.bias, (), build)

    def codes(self) -> Tensor:
        """The unpacked weight codes, uint8 (N, K) in [0, 2**bits - 1]."""
        n, k = self.out_features, self.in_features
        return unpack_bits(self.w_q, self.bits, n * k, f"{self.name}: w_q").reshape(n, k)  # (N*K,) -> (N, K)

    def zero_points(self) -> Tensor:
        """The unpacked zero points, uint8 shaped like ``w_scale``."""
        shape = tuple(self.w_scale.shape)
        return unpack_bits(self.w_zero_point, self.bits, shape[0] * shape[1],
                           f"{self.name}: w_zero_point").reshape(shape)

    def weight_bytes(self) -> int:
        """Bytes of the packed codes, scales and packed zero points (not the bias)."""
        return sum(t.numel() * t.element_size() for t in (self.w_q, self.w_scale, self.w_zero_point))

    def dequantize_weight(self) -> Tensor:
        """The float32 weight (N, K): ``f32(code - zero_point) * scale`` (eq. 1) per tensor / row / group."""
        codes = group_rows(self.codes(), self.scheme)  # (G, values)
        zero_point = self.zero_points().reshape(-1).to(torch.int32)  # (G,)
        w = dequantize(codes, self.w_scale.reshape(-1), zero_point, row_scheme(self.bits))  # (G, values)
        return w.reshape(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return weight_only_forward(self, x)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"{self.granularity}{g}")

    @classmethod
    def from_float(cls, linear: nn.Linear, *, bits: int, granularity: str = "per_group", group_size: int | None = 128,
                   clip: float | str = 1.0, name: str = "PackedWeightOnlyLinear") -> PackedWeightOnlyLinear:
        """Quantize a float ``nn.Linear`` with :func:`quantize_weight_packed` and pack the codes."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name}: from_float expects nn.Linear, got {type(linear).__name__}")
        group_size = group_size if granularity == "per_group" else None
        codes, scale, zero_point = quantize_weight_packed(linear.weight, bits, granularity, group_size, clip,
                                                          f"{name}.weight")
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(pack_bits(codes, bits, f"{name}.weight"), scale, pack_bits(zero_point, bits, f"{name}.zero_point"),
                   bias, bits=bits, granularity=granularity, group_size=group_size,
                   in_features=linear.in_features, out_features=linear.out_features, name=name)
