"""Overflow certificates: for each integer layer, the worst-case accumulator against int32
and the worst-case int16 pair sum of fbgemm's AVX2 (non-VNNI) kernels.

A certificate is a proof over *every* input on the integer grid, not a measurement: the
bound is attained by some input (or, for the pair bound, is an upper bound on it), so a
layer marked safe can never overflow, whatever data arrives.

1. int32 (eq. 4): ``acc[n] = sum_k (x_k - zx) w'_k (+ bias_q[n])`` with ``w' = w - zw`` is
   bilinear, so its extremes over the grid are at corners, element by element:
   ``hi[n] = sum_k max(w'_k (qmin - zx), w'_k (qmax - zx))``, ``lo[n]`` the same with min —
   attained, not just bounds (tighter than ``dialects._base.worst_case_accumulator``, which
   uses ``max(|qmin - zx|, |qmax - zx|)`` for every k). Worked example: K = 4096 uint8
   inputs with zx = 0 against int8 weights all -128 gives ``lo = -4096 * 128 * 255 =
   -133,693,440``, 4 bits under 2**31; K = 2**17 would not fit.
2. int16 pairs: on CPUs without AVX512-VNNI fbgemm multiplies raw uint8 activations by raw
   int8 weights with ``vpmaddubsw``, which adds two products into int16 *with saturation*
   (DIALECTS.md; pytorch/pytorch#44939); the depthwise conv kernel does so on every CPU
   (``nn.conv.fbgemm_depthwise_accumulate``). Which two ``k`` form a pair depends on the
   packed layout, so the certificate uses a bound valid for any pairing: the two largest
   ``max(w*qmin, w*qmax)`` of a channel (and the two smallest ``min(...)``). With
   ``reduce_range`` (activations in [0, 127]) the bound is at most ``2*127*128 = 32,512 <
   32,767``: that is why PyTorch's x86 default uses it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..dialects._base import INT32_MAX

__all__ = ["INT16_MAX", "OverflowCertificate", "accumulator_range", "certificates_markdown", "certify", "certify_layer",
           "int16_pair_bound"]

INT16_MAX = 2**15 - 1
INT16_MIN = -(2**15)


@dataclass(frozen=True)
class OverflowCertificate:
    """One layer's certificate. ``verdict``: ``safe``, ``reduce_range`` (int32 is safe but
    fbgemm's int16 pairs can saturate on CPUs without VNNI) or ``wider accumulator`` (some
    input overflows int32)."""

    layer: str
    kind: str
    k: int
    x_range: tuple[int, int]
    x_zero_point: int
    bound: int
    channel: int
    headroom_bits: float
    pair_range: tuple[int, int] | None
    verdict: str
    advice: str


def int16_pair_bound(w_q: Tensor, x_qmin: int, x_qmax: int) -> tuple[int, int]:
    """Bounds ``(lo, hi)`` on any sum of two raw products ``x_a w_a + x_b w_b`` in one channel.

    Numerics: w_q int8 (N, K) raw (no zero point subtracted: fbgemm's ``vpmaddubsw`` sees raw
    bytes); x in [x_qmin, x_qmax] raw uint8. Per element ``hi_k = max(w*qmin, w*qmax)``,
    ``lo_k = min(...)``; the bound is the sum of the two largest ``hi_k`` (two smallest
    ``lo_k``) over the channel, the maximum (minimum) over channels; int64, exact. A pair
    saturates only if ``hi > 32767`` or ``lo < -32768``. K = 1 pairs with a 0.
    Example: w = [-128, 127], x in [0, 255]: hi = 0 + 127*255 = 32,385, lo = -128*255 = -32,640.
    """
    w = w_q.to(torch.int64)  # (N, K)
    a, b = w * x_qmin, w * x_qmax
    hi, lo = torch.maximum(a, b), torch.minimum(a, b)  # (N, K)
    if w.shape[1] == 1:
        hi, lo = torch.cat([hi, torch.zeros_like(hi)], 1), torch.cat([lo, torch.zeros_like(lo)], 1)
    top = hi.topk(2, dim=1).values.sum(1)  # (N,)
    bottom = (-lo).topk(2, dim=1).values.sum(1)  # (N,) = -(two smallest)
    return -int(bottom.max()), int(top.max())


def accumulator_range(w_q: Tensor, w_zero_point: Tensor | int, x_qmin: int, x_qmax: int, x_zero_point: int,
                      bias_q: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The exact ``(lo, hi)`` of ``acc[n]`` over every input on the grid, per output channel.

    Numerics: w_q int8 (N, K), zero points per tensor or per channel; x in [x_qmin, x_qmax]
    with zero point zx; bias_q int32 (N,) or None. int64 (N,) each, exact (|terms| < 2**17
    * 2**16 * K). Both ends are attained: ``x_k = qmax`` where ``w'_k > 0`` (else ``qmin``)
    gives ``hi``.
    """
    n = w_q.shape[0]
    zw = torch.as_tensor(w_zero_point, dtype=torch.int64).reshape(-1, 1).expand(n, 1)  # (N, 1)
    w = w_q.to(torch.int64) - zw  # (N, K)
    a, b = w * (x_qmin - x_zero_point), w * (x_qmax - x_zero_point)
    lo, hi = torch.minimum(a, b).sum(1), torch.maximum(a, b).sum(1)  # (N,)
    if bias_q is not None:
        lo, hi = lo + bias_q.to(torch.int64), hi + bias_q.to(torch.int64)
    return lo, hi


def _verdict(bound: int, pair: tuple[int, int] | None, reduce_range: bool) -> tuple[str, str]:
    if bound > INT32_MAX:
        return "wider accumulator", ("some input overflows int32: quantize activations to fewer bits "
                                     "(reduce_range halves the bound), split K, or accumulate in int64")
    if pair is not None and (pair[1] > INT16_MAX or pair[0] < INT16_MIN):
        hint = "" if reduce_range else "use reduce_range (activations in [0, 127]) or "
        return "reduce_range", (f"int32 is safe, but fbgemm's int16 pair sums can saturate for inputs above 127 "
                                f"on CPUs without AVX512-VNNI: {hint}run on a VNNI CPU (calibrating with "
                                f"reduce_range keeps typical data below 128, not outliers)")
    return "safe", "no input on the grid can overflow"


def _linear_params(layer: Any) -> tuple[Tensor, Tensor | int, int, int, int, Tensor | None] | None:
    """``(w (N, K), zw, x_qmin, x_qmax, zx, bias_q)`` of a layer with an integer accumulator, else None."""
    kind = getattr(layer, "kind", "")
    if kind == "QuantLinear":
        return layer.w_q, layer.w_zero_point, 0, 255, layer.x_zero_point, None
    if kind in ("QuantConv1d", "QuantConv2d"):
        return layer.w_q.reshape(layer.w_q.shape[0], -1), layer.w_zero_point, 0, 255, layer.x_zero_point, None
    if kind == "DynamicQuantLinear":
        if layer.engine == "torchao":
            return layer.w_q, layer.w_zero_point, -128, 127, 0, None
        qmax = 127 if layer.reduce_range and layer.engine != "qnnpack" else 255  # qnnpack ignores it
        return layer.w_q, layer.w_zero_point, 0, qmax, 0, None  # zx in [0, qmax]: see certify_layer
    if kind == "IntLinear":
        return layer.w_q, 0, -128, 127, layer.x_zero_point, layer.bias_q  # int8 activations
    return None


def certify_layer(name: str, layer: Any) -> OverflowCertificate | None:
    """The certificate of one glassquant integer layer (None for float / weight-only layers)."""
    p = _linear_params(layer)
    if p is None:
        return None
    w_q, zw, qmin, qmax, zx, bias_q = p
    # a dynamic zero point is chosen per call anywhere in [qmin, qmax]; the range is convex in
    # zx, so its worst case is at an end
    zxs = [qmin, qmax] if layer.kind == "DynamicQuantLinear" and layer.engine != "torchao" else [zx]
    per_channel = torch.zeros(w_q.shape[0], dtype=torch.int64)
    for z in zxs:
        lo, hi = accumulator_range(w_q, zw, qmin, qmax, z, bias_q)
        per_channel = torch.maximum(per_channel, torch.maximum(-lo, hi))  # (N,)
    channel = int(per_channel.argmax())
    bound = int(per_channel[channel])
    engine = getattr(layer, "engine", "")
    fbgemm_kernel = engine in ("x86", "fbgemm") and not (engine == "x86" and layer.kind.startswith("QuantConv")
                                                           and getattr(layer, "kernel_family", "") == "onednn")
    pair = int16_pair_bound(w_q, qmin, qmax) if fbgemm_kernel and qmin >= 0 else None
    reduce_range = bool(getattr(layer, "reduce_range", False))
    verdict, advice = _verdict(bound, pair, reduce_range)
    headroom = math.inf if bound == 0 else math.log2(INT32_MAX / bound)
    return OverflowCertificate(
        layer=name, kind=layer.kind, k=int(w_q.shape[1]), x_range=(qmin, qmax), x_zero_point=int(zx), bound=bound,
        channel=channel, headroom_bits=headroom, pair_range=pair, verdict=verdict, advice=advice)


def certify(model: nn.Module) -> list[OverflowCertificate]:
    """Certificates of every integer layer of ``model``, in module order."""
    out = []
    for name, module in model.named_modules():
        c = certify_layer(name or type(module).__name__, module)
        if c is not None:
            out.append(c)
    return out


def certificates_markdown(certs: list[OverflowCertificate]) -> str:
    """A Markdown table: one row per layer, the bound, its headroom under 2**31 and the verdict."""
    rows = ["| layer | K | input range | worst \\|acc\\| | headroom bits | int16 pair range | verdict |",
            "|---|---|---|---|---|---|---|"]
    for c in certs:
        pair = "–" if c.pair_range is None else f"[{c.pair_range[0]:,}, {c.pair_range[1]:,}]"
        rows.append(f"| {c.layer} | {c.k} | [{c.x_range[0]}, {c.x_range[1]}] | {c.bound:,} | {c.headroom_bits:.2f} | "
                    f"{pair} | {c.verdict} |")
    advice = sorted({f"- **{c.verdict}**: {c.advice}" for c in certs if c.verdict != "safe"})
    return "\n".join(rows + (["", *advice] if advice else []))


def as_dicts(certs: list[OverflowCertificate]) -> list[dict[str, Any]]:
    """JSON-able form of the certificates."""
    return [asdict(c) for c in certs]
