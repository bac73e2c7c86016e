"""Running histograms and the two clip-range searches that read them.

* ``histogram_add`` / ``rebin``: torch.ao's ``HistogramObserver`` accumulation — a fixed
  number of equal-width bins whose range grows with the data; when it grows, the old counts
  are moved into the new bins through ``upsample_rate`` sub-bins.
* ``l2_clip_search``: torch.ao's ``_non_linear_param_search`` (from caffe2's
  ``NormMinimization``), the clip range that minimises a modelled L2 quantization error.
* ``kl_clip_search``: TensorRT's entropy calibration (Migacz 2017), the clip range whose
  quantized histogram is closest to the reference in KL divergence.

The first two repeat torch.ao's float32 operations in the same order (same torch ops), so a
glassquant ``HistogramObserver`` returns bit-identical qparams (tests/equivalence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Histogram:
    """``counts`` float32 ``(bins,)``: how many values fell in each of ``bins`` equal-width bins
    spanning ``[lo, hi]`` (float32 0-d tensors). Counts are exact integers below 2**24."""

    counts: Tensor
    lo: Tensor
    hi: Tensor

    @property
    def bins(self) -> int:
        return self.counts.numel()


def histogram_add(h: Histogram | None, x: Tensor, x_min: Tensor, x_max: Tensor, bins: int = 2048,
                  upsample_rate: int = 16) -> Histogram:
    """Fold the values ``x`` (all inside ``[x_min, x_max]``) into ``h`` (torch.ao's rule).

    The first batch makes ``bins`` bins over ``[x_min, x_max]``. Later batches widen the range
    to ``[min(lo, x_min), max(hi, x_max)]``; the batch is binned on the new range and the old
    counts are moved there by ``rebin`` (or, when the old range is one value, put whole into
    that value's bin). Numerics: float32 counts and ranges; ``torch.histc`` binning (a value
    on an inner edge goes to the upper bin, ``hi`` to the last bin; a zero-width range is
    widened to ``[lo - 1, hi + 1]`` by histc).
    """
    if h is None:
        return Histogram(torch.histc(x, bins, min=float(x_min), max=float(x_max)), x_min, x_max)
    new_min = torch.min(h.lo, x_min)
    new_max = torch.max(h.hi, x_max)
    update = torch.histc(x, h.bins, min=float(new_min), max=float(new_max))
    if new_min == h.lo and new_max == h.hi:
        return Histogram(h.counts + update, h.lo, h.hi)
    if h.lo == h.hi:
        old = torch.histc(h.lo, h.bins, min=float(new_min), max=float(new_max)) * torch.sum(h.counts)
        return Histogram(old + update, new_min, new_max)
    return Histogram(update + rebin(h, new_min, new_max, upsample_rate), new_min, new_max)


def rebin(h: Histogram, new_min: Tensor, new_max: Tensor, upsample_rate: int = 16) -> Tensor:
    """``h``'s counts moved onto ``h.bins`` bins over ``[new_min, new_max] ⊇ [h.lo, h.hi]``.

    Each old bin is cut into ``upsample_rate`` sub-bins of equal count; a sub-bin's count goes
    whole to the new bin holding its midpoint. Error: a count moves at most half a sub-bin
    from where it was, plus the re-binning to the new width. Numerics: float32 linspace,
    bucketize (``right=True``), bincount with float32 weights; out ``(bins,)`` float32.
    """
    bins = h.bins
    sub_counts = h.counts.repeat_interleave(upsample_rate) / upsample_rate  # (bins * upsample_rate,)
    sub_width = (h.hi - h.lo) / (bins * upsample_rate)
    mids = torch.linspace(h.lo, h.hi, bins * upsample_rate + 1)[:-1] + 0.5 * sub_width  # type: ignore[arg-type]
    edges = torch.linspace(new_min, new_max, bins + 1)  # type: ignore[arg-type]
    idx = torch.bucketize(mids, edges, right=True) - 1
    idx[idx >= bins] = bins - 1  # a midpoint past the last edge by rounding
    idx[idx < 0] = 0
    return torch.bincount(idx, weights=sub_counts, minlength=bins)


def _uniform_l2(delta_begin: Tensor, delta_end: Tensor, density: Tensor) -> Tensor:
    """``density * ∫ t² dt`` over ``[delta_begin, delta_end]``: the squared error of values spread
    uniformly there, measured from a bin centre at 0. Numerics: float32, ``(e³ - b³) / 3``."""
    norm = (delta_end * delta_end * delta_end - delta_begin * delta_begin * delta_begin) / 3
    return density * norm


def quantization_error(h: Histogram, start_bin: int, end_bin: int, dst_nbins: int) -> float:
    """Modelled L2 error of quantizing ``h`` to ``dst_nbins`` levels spread over bins
    ``start_bin..end_bin`` (torch.ao ``_compute_quantization_error``).

    Each source bin is a uniform density; its error is the integral of the squared distance to
    the centres of the destination bins it overlaps (clamped to the first/last level, so
    values outside the clip range count their distance to the end level). Numerics: bin
    widths in float64 (Python floats), everything per bin in float32, summed in float32.
    """
    bins = h.bins
    bin_width = (h.hi.item() - h.lo.item()) / bins
    dst_bin_width = bin_width * (end_bin - start_bin + 1) / dst_nbins
    if dst_bin_width == 0.0:
        return 0.0
    src_bin = torch.arange(bins)
    src_begin = (src_bin - start_bin) * bin_width  # (bins,) float32, from the first level's edge
    src_end = src_begin + bin_width
    dst_of_begin = torch.clamp(torch.div(src_begin, dst_bin_width, rounding_mode="floor"), 0, dst_nbins - 1)
    dst_of_begin_center = (dst_of_begin + 0.5) * dst_bin_width
    dst_of_end = torch.clamp(torch.div(src_end, dst_bin_width, rounding_mode="floor"), 0, dst_nbins - 1)
    density = h.counts / bin_width
    norm = torch.zeros(bins)
    norm += _uniform_l2(src_begin - dst_of_begin_center, torch.ones(bins) * (dst_bin_width / 2), density)
    norm += (dst_of_end - dst_of_begin - 1) * _uniform_l2(torch.tensor(-dst_bin_width / 2),
                                                         torch.tensor(dst_bin_width / 2), density)
    dst_of_end_center = dst_of_end * dst_bin_width + dst_bin_width / 2
    norm += _uniform_l2(torch.tensor(-dst_bin_width / 2), src_end - dst_of_end_center, density)
    return norm.sum().item()


def l2_clip_search(h: Histogram, dst_nbins: int = 256) -> tuple[Tensor, Tensor]:
    """Clip range ``(lo, hi)`` float32 0-d chosen by torch.ao's ``_non_linear_param_search``.

    Greedy: step the lower and upper quantiles inward by 1e-5 of the total count, move
    whichever end frees more bins, and stop as soon as ``quantization_error`` grows. The
    range is returned on bin edges: ``h.lo + bin_width * start``, ``h.lo + bin_width * (end + 1)``.
    Numerics: float32 cumulative sum compared with ``alpha * total`` rounded to float32 (torch's
    scalar comparison); alpha/beta stepped in float64 exactly as torch.ao does.
    """
    bins = h.bins
    bin_width = (h.hi - h.lo) / bins
    total = torch.sum(h.counts).item()
    c_sum = torch.cumsum(h.counts, dim=0).tolist()  # float32 values, exact as Python floats
    stepsize, alpha, beta = 1e-5, 0.0, 1.0
    start_bin, end_bin = 0, bins - 1
    norm_min = float("inf")
    while alpha < beta:
        next_alpha, next_beta = alpha + stepsize, beta - stepsize
        lo_count = float(np.float32(next_alpha * total))  # torch compares float32 with the scalar cast to float32
        hi_count = float(np.float32(next_beta * total))
        left, right = start_bin, end_bin
        while left < end_bin and c_sum[left] < lo_count:
            left += 1
        while right > start_bin and c_sum[right] > hi_count:
            right -= 1
        next_start, next_end = start_bin, end_bin
        if (left - start_bin) > (end_bin - right):
            next_start, alpha = left, next_alpha
        else:
            next_end, beta = right, next_beta
        if next_start == start_bin and next_end == end_bin:
            continue
        norm = quantization_error(h, next_start, next_end, dst_nbins)
        if norm > norm_min:
            break
        norm_min, start_bin, end_bin = norm, next_start, next_end
    return h.lo + bin_width * start_bin, h.lo + bin_width * (end_bin + 1)


def _xlogx(v: Tensor) -> Tensor:
    """``v * ln(v)`` with ``0 ln 0 = 0``. Numerics: float64, v >= 0."""
    return torch.where(v > 0, v * torch.log(torch.where(v > 0, v, 1.0)), 0.0)


def kl_clip_search(counts: Tensor, levels: int, zero_frac: float = 0.0,
                   eps: float = 1e-4) -> tuple[int, int, Tensor]:
    """Bins ``[start, end)`` of the window whose ``levels``-level quantization loses the least
    information (TensorRT entropy calibration, Migacz 2017, "8-bit Inference with TensorRT").

    For every width ``w`` in ``levels..B`` (``B = len(counts)``) the window starts at
    ``round(zero_frac * (B - w))`` — 0 for a histogram of ``|x|``; for a signed histogram the
    window shrinks towards the bin holding zero, keeping zero's relative position.
      P: the window's counts, with the counts left of it added to its first bin and those
         right of it to its last bin (outliers clip to the ends);
      Q: the window's own counts (outliers not added) merged into ``levels`` groups of
         ``w // levels`` bins, the last group taking the remainder; each group's total is
         spread evenly over the group's bins where P is non-zero (zero where P is zero);
      D(w) = KL(P || Q) = Σ p ln(p / q) over p > 0, both normalised to sum 1. Where outliers
         were folded onto a group that held nothing (p > 0, q = 0), q is set to ``eps = 1e-4``
         of one count (MXNet's smoothing), so such windows are penalised, not forbidden.
    The smallest D wins; ties (within 1e-9 relative, e.g. windows that differ by empty end
    bins) go to the widest window.

    Evaluated per group, not per bin: with ``P, Q`` unnormalised, ``D = Σ p ln p / ΣP - ln ΣP
    - Σ_g P_g ln q̄_g / ΣP + ln ΣQ`` (``P_g`` the group's P mass, ``q̄_g`` its per-bin Q), all
    sums from prefix sums of the histogram, so the search costs O((B - levels) * levels).
    Numerics: float64, counts pre-divided by their total (absolute error about 1e-13 in D).
    Returns ``(start, end, D)``, ``D`` float64 ``(B - levels + 1,)`` indexed by ``w - levels``.
    """
    n_bins = counts.numel()
    if not 2 <= levels <= n_bins:
        raise ValueError(f"kl_clip_search: levels must be in [2, bins={n_bins}], got {levels}")
    total = float(counts.to(torch.float64).sum())
    h = counts.to(torch.float64) / total  # (B,) probabilities
    zero = torch.zeros(1, dtype=torch.float64)
    cum_h = torch.cat([zero, torch.cumsum(h, 0)])  # (B + 1,)
    cum_nz = torch.cat([zero, torch.cumsum((h > 0).to(torch.float64), 0)])
    h_logh = _xlogx(h)
    cum_hlogh = torch.cat([zero, torch.cumsum(h_logh, 0)])
    width = torch.arange(levels, n_bins + 1)  # (K,)
    start = torch.round((n_bins - width).to(torch.float64) * zero_frac).to(torch.int64)  # (K,)
    end = start + width
    left, right = cum_h[start], cum_h[n_bins] - cum_h[end]  # outlier mass folded to each end (K,)
    g_start = start.reshape(-1, 1) + torch.arange(levels).reshape(1, -1) * (width // levels).reshape(-1, 1)
    g_end = torch.cat([g_start[:, 1:], end.reshape(-1, 1)], dim=1)  # (K, levels)
    q_sum = cum_h[g_end] - cum_h[g_start]  # (K, levels): each group's own mass
    n_support = cum_nz[g_end] - cum_nz[g_start]
    h_first, h_last = h[start], h[end - 1]
    n_support[:, 0] += ((h_first == 0) & (left > 0)).to(torch.float64)  # end bins non-zero only by folding
    n_support[:, -1] += ((h_last == 0) & (right > 0)).to(torch.float64)
    p_mass = q_sum.clone()
    p_mass[:, 0] += left
    p_mass[:, -1] += right
    eps_p = eps / total
    q_bin = torch.where(q_sum > 0, q_sum / n_support.clamp(min=1), eps_p)  # (K, levels) per support bin
    q_total = torch.where(q_sum > 0, q_sum, eps_p * n_support).sum(1)  # (K,)
    p_logp = (cum_hlogh[end] - cum_hlogh[start] - h_logh[start] - h_logh[end - 1]
              + _xlogx(h_first + left) + _xlogx(h_last + right))  # Σ p ln p, end bins folded
    p_logq = torch.where(p_mass > 0, p_mass * torch.log(q_bin), 0.0).sum(1)
    divergence = p_logp - p_logq + torch.log(q_total)  # (K,), Σ P = 1
    tied = divergence <= divergence.min() + 1e-9 * divergence.min().abs() + 1e-13
    best = int(tied.nonzero().max())  # widest of the (near-)minimal windows
    return int(start[best]), int(end[best]), divergence
