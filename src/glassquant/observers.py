"""Observers: running statistics of a tensor from which qparams are chosen.

Every observer has the same API: ``update(x)`` folds in a calibration batch;
``qparams() -> (scale float32, zero_point int32)`` applies eq. 2 (``choose_qparams``) to
``clip_range()``, the range the qparams represent; ``observed_range()`` is the raw range of
all data seen (``min``, ``max``); ``batches`` counts the batches. Shapes follow the scheme:
``()`` per tensor, ``(C,)`` per channel (``scheme.axis``), ``(..., K // g)`` per group; the
shape must not change between batches. ``make_observer(kind, scheme, name)`` builds one by
name. Errors name the observed tensor: NaN/Inf or empty batch, qparams before any data.

| kind             | clip range                                    | torch.ao twin (bit-exact)       |
|------------------|-----------------------------------------------|---------------------------------|
| "minmax"         | running min / max                             | (PerChannel)MinMaxObserver      |
| "moving_average" | exponential moving average of batch min / max | MovingAverage(PerChannel)MinMax |
| "percentile"     | percentiles of a bounded uniform sample       | —                               |
| "mse"            | shrunk min/max with least squared error       | —                               |
| "entropy"        | TensorRT KL-divergence threshold (histogram)  | —                               |
| "histogram"      | torch.ao's L2 histogram search                | HistogramObserver               |
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .errors import check_finite
from .histogram import Histogram, histogram_add, kl_clip_search, l2_clip_search
from .qparams import choose_qparams, observe_range
from .scheme import QScheme


def _rows(x: Tensor, scheme: QScheme) -> Tensor:
    """``x`` regrouped so that row ``r`` holds every value sharing qparams ``r`` (flattened
    order of ``observe_range``'s output). Shapes: per tensor ``(1, N)``; per channel
    ``(C, N / C)``; per group ``(N / g, g)``."""
    if scheme.granularity == "per_tensor":
        return x.reshape(1, -1)
    if scheme.granularity == "per_channel":
        axis = scheme.axis if scheme.axis is not None else 0
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)  # (C, rest)
    return x.reshape(-1, scheme.group_size or 1)  # (groups, g)


class Observer:
    """Base class: running raw min/max and batch count; subclasses choose ``clip_range``.

    Numerics: batches are converted to float32 first; ``min``/``max`` are exact float32
    running extremes (``None`` before the first batch).
    """

    kind = "observer"

    def __init__(self, scheme: QScheme, name: str = "tensor") -> None:
        self.scheme, self.name = scheme, name
        self.min: Tensor | None = None
        self.max: Tensor | None = None
        self.batches = 0

    def update(self, x: Tensor) -> None:
        """Fold one calibration batch in. NaN/Inf or an empty batch raise ``ValueError``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.name}: calibration batch must be a torch.Tensor, got {type(x).__name__}")
        check_finite(x, self.name)
        if x.numel() == 0:
            raise ValueError(f"{self.name}: empty calibration batch")
        x = x.detach().to(torch.float32)
        lo, hi = observe_range(x, self.scheme, self.name)
        if self.min is not None and lo.shape != self.min.shape:
            raise ValueError(f"{self.name}: batch gives qparams of shape {tuple(lo.shape)}, earlier batches "
                             f"{tuple(self.min.shape)} (per-channel/group shapes must not change)")
        self._observe(x, lo, hi)
        self.min = lo if self.min is None else torch.min(self.min, lo)
        self.max = hi if self.max is None else torch.max(self.max, hi)
        self.batches += 1

    def _observe(self, x: Tensor, lo: Tensor, hi: Tensor) -> None:
        """Subclass hook: the float32 batch and its range, before ``min``/``max`` absorb it."""

    def observed_range(self) -> tuple[Tensor, Tensor]:
        """``(min, max)`` float32 of every value seen (per channel/group: tensors)."""
        if self.min is None or self.max is None:
            raise ValueError(f"{self.name}: no calibration data was observed")
        return self.min, self.max

    def clip_range(self) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` float32 the qparams are chosen for (before eq. 2 widens it to include 0)."""
        return self.observed_range()

    def qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale float32, zero_point int32)`` for ``clip_range()`` (eq. 2, zero-range rule included)."""
        lo, hi = self.clip_range()
        return choose_qparams(lo, hi, self.scheme)


class MinMaxObserver(Observer):
    """Running minimum and maximum over calibration batches (torch.ao's MinMaxObserver rule).

    ``update(x)`` folds a batch in; ``qparams()`` applies eq. 2 to the running range.
    Numerics: float32 min/max, exact; NaN/Inf in a batch raise ``ValueError`` naming the
    observed tensor.
    """

    kind = "minmax"


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of each batch's min and max (torch.ao's rule, bit for bit).

    First batch: ``avg_min, avg_max = min(x), max(x)``; then
    ``avg_min = avg_min + c * (min(x) - avg_min)`` (same for max), ``c = averaging_constant``.
    ``clip_range()`` is ``(avg_min, avg_max)``; ``min``/``max`` stay the raw extremes.
    Numerics: float32, ``c`` rounded to float32, one subtract, one multiply, one add (torch.ao's
    order). Per channel/group the averages are per row.
    """

    kind = "moving_average"

    def __init__(self, scheme: QScheme, name: str = "tensor", averaging_constant: float = 0.01) -> None:
        super().__init__(scheme, name)
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"{name}: averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant
        self.avg_min: Tensor | None = None
        self.avg_max: Tensor | None = None

    def _observe(self, x: Tensor, lo: Tensor, hi: Tensor) -> None:
        if self.avg_min is None or self.avg_max is None:
            self.avg_min, self.avg_max = lo, hi
            return
        c = self.averaging_constant
        self.avg_min = self.avg_min + c * (lo - self.avg_min)
        self.avg_max = self.avg_max + c * (hi - self.avg_max)

    def clip_range(self) -> tuple[Tensor, Tensor]:
        self.observed_range()
        assert self.avg_min is not None and self.avg_max is not None
        return self.avg_min, self.avg_max


class _Sample:
    """A uniform random sample, without replacement, of each row's values: at most ``capacity``
    per row (bottom-k sampling — every value gets an i.i.d. uniform key, the ``capacity``
    smallest keys are kept, so every subset of the values seen is equally likely).

    ``exact`` stays True while nothing was dropped (then the sample is all the data).
    Numerics: float32 values, float64 keys from a seeded ``torch.Generator`` (reproducible).
    """

    def __init__(self, max_samples: int, seed: int) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.max_samples, self.exact = max_samples, True
        self.gen = torch.Generator().manual_seed(seed)
        self.values: Tensor | None = None  # (R, S)
        self.keys: Tensor | None = None  # (R, S)

    def add(self, rows: Tensor) -> None:
        r = rows.shape[0]
        capacity = max(1, math.ceil(self.max_samples / r))
        keys = torch.rand(rows.shape, generator=self.gen, dtype=torch.float64)  # (R, n)
        if self.keys is not None and self.keys.shape[1] == capacity:
            # full: a new value enters only if its key is below the row's largest kept key
            m = int((keys < self.keys.max(dim=1, keepdim=True).values).sum(1).max())
            if m < keys.shape[1]:
                keys, idx = keys.topk(m, dim=1, largest=False)
                rows = rows.gather(1, idx)
        values = rows if self.values is None else torch.cat([self.values, rows], dim=1)
        keys = keys if self.keys is None else torch.cat([self.keys, keys], dim=1)
        if values.shape[1] > capacity:
            self.exact = False
            kth = torch.kthvalue(keys, capacity, dim=1, keepdim=True).values  # (R, 1)
            keep = keys <= kth
            if bool((keep.sum(1) == capacity).all()):  # no tied keys: keep row order
                values, keys = values[keep].reshape(r, capacity), keys[keep].reshape(r, capacity)
            else:  # pragma: no cover - float64 keys tie with probability ~ n**2 / 2**53
                keys, idx = keys.topk(capacity, dim=1, largest=False)
                values = values.gather(1, idx)
        self.values, self.keys = values, keys


def _percentiles(v: Tensor, qs: list[float]) -> list[Tensor]:
    """Per-row ``q``-th percentiles of ``v`` (R, S), linear interpolation between order
    statistics (numpy's default): position ``q / 100 * (S - 1)``. Numerics: exact float32
    sort, float64 interpolation, float32 out ``(R,)`` each."""
    s = torch.sort(v, dim=1).values
    out = []
    for q in qs:
        pos = q / 100.0 * (s.shape[1] - 1)
        i = min(math.floor(pos), s.shape[1] - 1)
        j = min(i + 1, s.shape[1] - 1)
        a, b = s[:, i].to(torch.float64), s[:, j].to(torch.float64)
        out.append((a + (pos - i) * (b - a)).to(torch.float32))
    return out


class PercentileObserver(Observer):
    """Clip at percentiles of the observed values: ``(P(100 - p), P(p))``, or ``±P_|x|(p)`` for
    symmetric schemes (percentile of the magnitudes).

    Storage: a uniform random sample of at most ``max_samples`` values (split evenly over
    channels/groups), so memory is bounded. Error: exact (numpy's linear interpolation)
    while all values fit; beyond that the percentile is that of a uniform sample of size S,
    whose rank is off by about ``sqrt(p (1 - p) / S)`` of the data (p = 0.9999, S = 2**20:
    ±1e-5, i.e. the 100 largest values per million are found to about ±10).
    """

    kind = "percentile"

    def __init__(self, scheme: QScheme, name: str = "tensor", percentile: float = 99.99,
                 max_samples: int = 2**20, seed: int = 0) -> None:
        super().__init__(scheme, name)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"{name}: percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile
        self.sample = _Sample(max_samples, seed)

    def _observe(self, x: Tensor, lo: Tensor, hi: Tensor) -> None:
        self.sample.add(_rows(x, self.scheme))

    def clip_range(self) -> tuple[Tensor, Tensor]:
        x_min, _ = self.observed_range()
        v = self.sample.values
        assert v is not None
        if self.scheme.symmetric:
            (amax,) = _percentiles(v.abs(), [self.percentile])
            return (-amax).reshape(x_min.shape), amax.reshape(x_min.shape)
        lo, hi = _percentiles(v, [100.0 - self.percentile, self.percentile])
        return lo.reshape(x_min.shape), hi.reshape(x_min.shape)


def _fake_quantize_rows(v: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """``dequantize(quantize(v))`` with one scale/zero point per row (eqs. 3 then 1), the values
    of ``affine.quantize``/``dequantize`` without their per-call checks (``v`` is known finite).

    Numerics: ``v`` float32 (R, S), ``scale`` float32 (R,), ``zero_point`` int32 (R,); one float32
    division, round half-even, zero point added in float32 (exact: any sum beyond 2**24 is far
    outside [qmin, qmax] and clamps the same), clamp, ``(q - zero_point) * scale`` in float32.
    """
    s = scale.reshape(-1, 1)
    z = zero_point.reshape(-1, 1).to(torch.float32)
    q = torch.clamp(torch.round(v / s) + z, qmin, qmax)
    return (q - z) * s


class MSEObserver(Observer):
    """Clip range with the least mean squared quantization error on the observed data.

    Candidates: ``alpha_k * (lo, hi)`` with ``lo = min(min, 0)``, ``hi = max(max, 0)`` and
    ``alpha_k = (K - k) / K``, k = 0..K-1 (``K = candidates``, default 100: 1.00, 0.99, ..,
    0.01). For each, qparams by eq. 2 and ``mean((x - dequantize(quantize(x)))**2)`` (eqs. 3,
    1) over a uniform sample of at most ``max_samples`` values (exact while all fit). Per row
    the smallest error wins, ties to the widest candidate, so it is never worse than min/max
    (alpha = 1) on the sample. After ``clip_range()``: ``alphas`` float32 ``(K,)`` and
    ``errors`` float64 ``(K, R)`` hold the search.
    Numerics: ``alpha_k`` float32 (``arange / K`` in float32), clip ends ``alpha * lo`` in
    float32, quantize half-even, differences and squares in float64.
    """

    kind = "mse"

    def __init__(self, scheme: QScheme, name: str = "tensor", candidates: int = 100,
                 max_samples: int = 2**16, seed: int = 0) -> None:
        super().__init__(scheme, name)
        if candidates < 1:
            raise ValueError(f"{name}: candidates must be >= 1, got {candidates}")
        self.candidates = candidates
        self.sample = _Sample(max_samples, seed)
        self.alphas: Tensor | None = None
        self.errors: Tensor | None = None

    def _observe(self, x: Tensor, lo: Tensor, hi: Tensor) -> None:
        self.sample.add(_rows(x, self.scheme))

    def clip_range(self) -> tuple[Tensor, Tensor]:
        x_min, x_max = self.observed_range()
        v = self.sample.values
        assert v is not None
        lo = torch.min(x_min, torch.zeros_like(x_min)).reshape(-1)  # (R,)
        hi = torch.max(x_max, torch.zeros_like(x_max)).reshape(-1)
        k = self.candidates
        alphas = torch.arange(k, 0, -1, dtype=torch.float32) / k  # (K,) 1.00 .. 1/K
        errors = torch.empty(k, v.shape[0], dtype=torch.float64)  # (K, R)
        v64 = v.to(torch.float64)
        for i, a in enumerate(alphas):
            scale, zp = choose_qparams(a * lo, a * hi, self.scheme)  # (R,) each
            x_hat = _fake_quantize_rows(v, scale, zp, self.scheme.qmin, self.scheme.qmax)  # (R, S)
            errors[i] = ((x_hat.to(torch.float64) - v64) ** 2).mean(dim=1)  # exact differences
        best = alphas[torch.argmin(errors, dim=0)]  # (R,), first minimum = widest
        self.alphas, self.errors = alphas, errors
        return (best * lo).reshape(x_min.shape), (best * hi).reshape(x_max.shape)


class _HistogramRows(Observer):
    """Base for histogram observers: one running ``Histogram`` per row (channel/group)."""

    def __init__(self, scheme: QScheme, name: str = "tensor", bins: int = 2048, upsample_rate: int = 16) -> None:
        super().__init__(scheme, name)
        if bins < 1 or upsample_rate < 1:
            raise ValueError(f"{name}: bins and upsample_rate must be >= 1, got {bins}, {upsample_rate}")
        self.bins, self.upsample_rate = bins, upsample_rate
        self.histograms: list[Histogram | None] = []

    def _range_of(self, row: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(values, lo, hi)`` to histogram for one row."""
        lo, hi = torch.aminmax(row)
        return row, lo, hi

    def _observe(self, x: Tensor, lo: Tensor, hi: Tensor) -> None:
        rows = _rows(x, self.scheme)
        if not self.histograms:
            self.histograms = [None] * rows.shape[0]
        for r in range(rows.shape[0]):
            values, r_lo, r_hi = self._range_of(rows[r])
            self.histograms[r] = histogram_add(self.histograms[r], values, r_lo, r_hi, self.bins, self.upsample_rate)

    def _row_histograms(self) -> list[Histogram]:
        self.observed_range()
        return [h for h in self.histograms if h is not None]


class HistogramObserver(_HistogramRows):
    """torch.ao's HistogramObserver, bit for bit: a 2048-bin running histogram, clip range from
    its L2 search (``histogram.l2_clip_search``), then eq. 2.

    ``dst_nbins`` (levels of the modelled quantizer) defaults to torch.ao's rule,
    ``2**8`` up to 8 bits (so PyTorch's ``reduce_range`` 7-bit grid still searches with 256)
    and ``2**16`` above. Per channel/group: one independent histogram per row (torch.ao has
    only per tensor). Numerics: see ``glassquant.histogram``; torch.ao keeps the input dtype,
    glassquant converts to float32 first (same result for float32 inputs).
    """

    kind = "histogram"

    def __init__(self, scheme: QScheme, name: str = "tensor", bins: int = 2048, upsample_rate: int = 16,
                 dst_nbins: int | None = None) -> None:
        super().__init__(scheme, name, bins, upsample_rate)
        self.dst_nbins = dst_nbins if dst_nbins is not None else 2 ** (8 if scheme.bits <= 8 else 16)

    def clip_range(self) -> tuple[Tensor, Tensor]:
        x_min, _ = self.observed_range()
        ends = [l2_clip_search(h, self.dst_nbins) for h in self._row_histograms()]
        lo = torch.stack([e[0] for e in ends]).reshape(x_min.shape)
        hi = torch.stack([e[1] for e in ends]).reshape(x_min.shape)
        return lo, hi


class EntropyObserver(_HistogramRows):
    """TensorRT-style entropy calibration: the clip threshold minimising KL divergence.

    Algorithm (Migacz, "8-bit Inference with TensorRT", GTC 2017): build a ``bins``-bin
    (2048) histogram — of ``|x|`` over ``[0, max|x|]`` for symmetric schemes, of ``x`` over
    ``[min(x_min, 0), max(x_max, 0)]`` for affine ones; for every candidate window of
    ``levels..bins`` bins compare the reference distribution P (window counts, outliers
    folded into the end bins) with its quantized version Q (window merged into ``levels``
    groups, expanded back over P's non-empty bins) and take the window of least KL(P || Q)
    (``histogram.kl_clip_search``). Symmetric: clip ``(-t, t)`` with ``t`` the window's end;
    affine: the window's two edges (the window shrinks towards zero's bin).
    Exact zeros are left out of the histogram: eq. 2 represents 0 exactly, so they carry no
    error, and their spike (half of a ReLU output) would otherwise dominate the KL and pull
    the threshold in (pytorch-quantization copies bin 1 into bin 0 for the same reason).
    ``levels`` defaults to the magnitudes the grid has, ``(qmax - qmin + 1) // 2`` symmetric
    (128 for int8), ``qmax - qmin + 1`` affine; it must not exceed ``bins``.
    Storage: torch.ao's running histogram (``histogram.histogram_add``); when later batches
    widen the range, old counts are re-binned (moved by at most half a 1/16 sub-bin plus the
    new bin width). Numerics: float32 histogram, float64 KL; edges ``lo + bin_width * k``.
    """

    kind = "entropy"

    def __init__(self, scheme: QScheme, name: str = "tensor", bins: int = 2048, upsample_rate: int = 16,
                 levels: int | None = None) -> None:
        super().__init__(scheme, name, bins, upsample_rate)
        n = scheme.qmax - scheme.qmin + 1
        self.levels = levels if levels is not None else (n // 2 if scheme.symmetric else n)
        if not 2 <= self.levels <= bins:
            raise ValueError(f"{name}: entropy calibration with {self.levels} levels needs bins >= levels "
                             f"(got bins={bins}); pass bins= or use another observer for wide grids")
        self.divergences: list[Tensor] = []

    def _range_of(self, row: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        nonzero = row[row != 0]  # exact zeros cost nothing (eq. 2 keeps 0 on the grid)
        if self.scheme.symmetric:
            return nonzero.abs(), torch.zeros((), dtype=torch.float32), row.abs().max()
        lo, hi = torch.aminmax(row)
        return nonzero, torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)

    def clip_range(self) -> tuple[Tensor, Tensor]:
        x_min, _ = self.observed_range()
        los, his = [], []
        self.divergences = []
        for h in self._row_histograms():
            lo, hi = float(h.lo), float(h.hi)
            if lo == hi:  # every value was 0: eq. 2's zero-range rule
                los.append(lo)
                his.append(hi)
                continue
            zero_frac = -lo / (hi - lo)
            start, end, divergence = kl_clip_search(h.counts, self.levels, zero_frac)
            self.divergences.append(divergence)
            bin_width = (h.hi - h.lo) / h.bins  # float32
            c_lo, c_hi = float(h.lo + bin_width * start), float(h.lo + bin_width * end)
            los.append(-c_hi if self.scheme.symmetric else c_lo)
            his.append(c_hi)
        return (torch.tensor(los, dtype=torch.float32).reshape(x_min.shape),
                torch.tensor(his, dtype=torch.float32).reshape(x_min.shape))


OBSERVERS: dict[str, type[Observer]] = {
    cls.kind: cls for cls in (MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, MSEObserver,
                              EntropyObserver, HistogramObserver)
}


def make_observer(kind: str, scheme: QScheme, name: str = "tensor", **options: Any) -> Observer:
    """An observer of the named ``kind`` (see ``OBSERVERS``) for ``scheme``; ``options`` go to
    its constructor (e.g. ``averaging_constant``, ``percentile``, ``candidates``, ``bins``)."""
    if kind not in OBSERVERS:
        raise ValueError(f"{name}: unknown observer kind {kind!r}; choose one of {', '.join(OBSERVERS)}")
    cls = OBSERVERS[kind]
    try:
        return cls(scheme, name, **options)
    except TypeError as e:
        raise TypeError(f"{name}: bad option for observer {kind!r}: {e}") from None
