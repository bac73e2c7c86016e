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

``PackedWeightOnlyLinear`` (the layer the bit allocator of ``analysis.allocate`` places) takes any
``b`` in 2..8 and one (scale, zero point) per tensor, per output channel or per group of 32 / 64 / 128:
asymmetric, unsigned [0, 2**b - 1], eq. 2 on the range optionally clipped to a ratio of itself (or the
per-group MSE-optimal ratio), eq. 3. Codes and zero points are packed densely, ``b`` bits each, into
uint8 bitstreams (``kernels.int4.pack_bits``): the layer stores exactly
``ceil(N*K*b/8) + 4*G + ceil(G*b/8)`` bytes for G groups (3 bits, group 128: 0.41 ``N*K``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..affine import dequantize, quantize
from ..dialects import torchao
from ..errors import check_finite, check_integer
from ..kernels import weight_only as wo_kernels
from ..kernels.int4 import pack_bits, pack_int4, packed_bytes, unpack_bits, unpack_int4
from ..qparams import choose_qparams, observe_range
from ..scheme import QScheme
from .base import QuantModule, register

#: int8 weights: symmetric, one scale per output channel (torchao's Int8WeightOnlyConfig).
INT8_PER_ROW = QScheme(bits=8, signed=True, symmetric=True, axis=0)
#: int4 group sizes accepted (those of torchao's int4 weight-only configs).
INT4_GROUP_SIZES = (32, 64, 128)


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
        self._grid = wo_kernels.GridCache()

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
        return self._grid.get((self.w_q, self.w_scale, self.w_zero_point, self.bias), build)

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
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"{self.name}: input has {x.shape[-1] if x.dim() else 0} features, "
                             f"layer expects {self.in_features}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name}: input must be a float tensor, got {x.dtype}")
        check_finite(x, f"{self.name}: input")
        grid = self._kernel_grid() if wo_kernels.usable(x) else None
        rows = x.numel() // max(1, self.in_features)
        if grid is not None and rows <= wo_kernels.GEMV_MAX_ROWS:  # stream the packed weight (kernels/_wo.c)
            y = wo_kernels.linear(x.reshape(-1, self.in_features), grid, self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        n, k = self.out_features, self.in_features
        if self.bits == 8:  # torchao's float32 conversion, into the reused buffer when the kernels are built
            w_float = None if grid is None else wo_kernels.scratch(n, k).copy_(self.w_q).t()
            return torchao.linear_weight_only(x, self.w_q, self.w_scale.reshape(-1), self.bias, self.name,
                                              w_float=w_float)
        # (N, K) float32; the compiled expansion is bit-identical to dequantize_weight()
        w = self.dequantize_weight() if grid is None else wo_kernels.dequantize(grid, wo_kernels.scratch(n, k))
        x2 = x.to(torch.float32).reshape(-1, self.in_features)  # (M, K)
        y = x2 @ w.T  # (M, K) @ (K, N) -> (M, N) float32
        if self.bias is not None:
            y = y.add_(self.bias)  # in place: the same float32 sums as y + b, no second (M, N) tensor
        return y.reshape(*x.shape[:-1], self.out_features)

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


# ---- b-bit weights, 2 <= b <= 8, packed densely -----------------------------------------------------

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
        self._grid = wo_kernels.GridCache()

    def _kernel_grid(self) -> wo_kernels.Grid | None:
        """The packed codes as the compiled kernels read them; the zero points unpacked once (G bytes)."""
        def build() -> wo_kernels.Grid | None:
            if any(t.device.type != "cpu" for t in (self.w_q, self.w_scale, self.w_zero_point)):
                return None
            n, k = self.out_features, self.in_features
            row_groups = {"per_tensor": 0, "per_channel": 1}.get(self.granularity, k // (self.group_size or k))
            return wo_kernels.Grid(self.w_q, self.bits, n, k, self.w_scale.reshape(-1).contiguous(),
                                   self.zero_points().reshape(-1).contiguous(), self.group_size or k, row_groups)
        return self._grid.get((self.w_q, self.w_scale, self.w_zero_point, self.bias), build)

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
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"{self.name}: input has {x.shape[-1] if x.dim() else 0} features, "
                             f"layer expects {self.in_features}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name}: input must be a float tensor, got {x.dtype}")
        check_finite(x, f"{self.name}: input")
        grid = self._kernel_grid() if wo_kernels.usable(x) else None
        rows = x.numel() // max(1, self.in_features)
        if grid is not None and rows <= wo_kernels.GEMV_MAX_ROWS:  # stream the packed weight (kernels/_wo.c)
            y = wo_kernels.linear(x.reshape(-1, self.in_features), grid, self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        # (N, K) float32; the compiled expansion is bit-identical to dequantize_weight()
        w = self.dequantize_weight() if grid is None else wo_kernels.dequantize(
            grid, wo_kernels.scratch(self.out_features, self.in_features))
        x2 = x.to(torch.float32).reshape(-1, self.in_features)  # (M, K)
        y = x2 @ w.T  # (M, K) @ (K, N) -> (M, N) float32
        if self.bias is not None:
            y = y.add_(self.bias)  # in place: the same float32 sums as y + b, no second (M, N) tensor
        return y.reshape(*x.shape[:-1], self.out_features)

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
