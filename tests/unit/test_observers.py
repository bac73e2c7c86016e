"""Tests for glassquant.observers and glassquant.histogram: API contract, bad input, and the
behaviour of the clipping observers (percentile, MSE, entropy) against independent numpy
computations. torch.ao bit-exactness lives in tests/equivalence/test_torch_ao_observers.py."""

from __future__ import annotations

import ast
import math
import pathlib

import numpy as np
import pytest
import torch

import glassquant.histogram
import glassquant.observers
from glassquant.histogram import histogram_add, kl_clip_search
from glassquant.observers import (
    OBSERVERS,
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    make_observer,
)
from glassquant.qparams import SCALE_EPS
from glassquant.scheme import QScheme

KINDS = ["minmax", "moving_average", "percentile", "mse", "entropy", "histogram"]
UINT8 = QScheme(8, signed=False)
INT8_SYM = QScheme(8, signed=True, symmetric=True)
SCHEMES = [UINT8, INT8_SYM, QScheme(8, signed=True), QScheme(4, signed=True, symmetric=True),
           QScheme(8, signed=False, symmetric=True), QScheme(7, signed=False)]


# ---- independent numpy references -------------------------------------------------------------------

def np_qparams(lo: float, hi: float, s: QScheme) -> tuple[np.float32, int]:
    """Eq. 2 in numpy float32 (one IEEE rounding per operation)."""
    lo32 = min(np.float32(lo), np.float32(0))
    hi32 = max(np.float32(hi), np.float32(0))
    eps = np.float32(np.finfo(np.float32).eps)
    if s.symmetric:
        scale = max(np.float32(max(-lo32, hi32) / np.float32((s.qmax - s.qmin) / 2)), eps)
        return np.float32(scale), (0 if s.signed else (s.qmin + s.qmax + 1) // 2)
    scale = max(np.float32(np.float32(hi32 - lo32) / np.float32(s.qmax - s.qmin)), eps)
    zp = s.qmin - int(np.rint(np.float32(lo32 / scale)))
    return np.float32(scale), min(max(zp, s.qmin), s.qmax)


def np_mse(x: np.ndarray, scale: float, zp: int, s: QScheme) -> float:
    """Mean squared error of eq. 3 then eq. 1 (float32 divide, half-even, clamp), in float64."""
    x = np.asarray(x, dtype=np.float32)
    q = np.clip(np.rint(x / np.float32(scale)) + zp, s.qmin, s.qmax)
    x_hat = (q - zp).astype(np.float32) * np.float32(scale)
    return float(np.mean((x_hat.astype(np.float64) - x.astype(np.float64)) ** 2))


def np_kl_reference(hist: np.ndarray, levels: int, zero_frac: float, eps: float = 1e-4) -> np.ndarray:
    """TensorRT's KL(P || Q) per candidate width, written again with numpy loops and reduceat."""
    hist = np.asarray(hist, dtype=np.float64)
    n_bins = len(hist)
    out = []
    for w in range(levels, n_bins + 1):
        a = int(np.rint((n_bins - w) * zero_frac))
        b = a + w
        sliced = hist[a:b]
        p = sliced.copy()
        p[0] += hist[:a].sum()
        p[-1] += hist[b:].sum()
        m = w // levels
        starts = np.arange(levels) * m
        q_sum = np.add.reduceat(sliced, starts)
        nonzero = np.add.reduceat((p != 0).astype(np.float64), starts)
        grp = np.minimum(np.arange(w) // m, levels - 1)
        q = np.where(p != 0, q_sum[grp] / np.maximum(nonzero[grp], 1), 0.0)
        q[(p != 0) & (q == 0)] = eps
        p, q = p / p.sum(), q / q.sum()
        keep = p > 0
        out.append(float(np.sum(p[keep] * np.log(p[keep] / q[keep]))))
    return np.array(out)


def outlier_data(seed: int, n: int = 2**16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(data, bulk)``: N(0, 1) bulk plus 4 rare outliers at -60, -45, 50, 80 sigma."""
    g = torch.Generator().manual_seed(seed)
    bulk = torch.randn(n, generator=g)
    data = bulk.clone()
    data[torch.randperm(n, generator=g)[:4]] = torch.tensor([-60.0, -45.0, 50.0, 80.0])
    return data, bulk


# ---- make_observer and the shared contract ----------------------------------------------------------

@pytest.mark.parametrize("module", [glassquant.observers, glassquant.histogram])
def test_no_torch_ao_at_run_time(module) -> None:
    """The torch.ao twins are reimplemented, not called: neither module imports torch.ao."""
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not any(m.startswith("torch.ao") for m in names), names


def test_make_observer_kinds() -> None:
    assert list(OBSERVERS) == KINDS
    for kind in KINDS:
        obs = make_observer(kind, UINT8, "layer1.input")
        assert obs.kind == kind and obs.name == "layer1.input" and obs.scheme == UINT8 and obs.batches == 0
    assert isinstance(make_observer("moving_average", UINT8, averaging_constant=0.5), MovingAverageMinMaxObserver)
    assert make_observer("percentile", UINT8, percentile=99.0).percentile == 99.0  # type: ignore[attr-defined]


def test_make_observer_unknown_kind_lists_kinds() -> None:
    with pytest.raises(ValueError, match="unknown observer kind 'kl'") as e:
        make_observer("kl", UINT8, "fc1.output")
    assert all(k in str(e.value) for k in KINDS) and "fc1.output" in str(e.value)


def test_make_observer_bad_option() -> None:
    with pytest.raises(TypeError, match="'minmax'"):
        make_observer("minmax", UINT8, "x", percentile=99.0)
    with pytest.raises(ValueError, match="averaging_constant"):
        make_observer("moving_average", UINT8, "x", averaging_constant=0.0)
    with pytest.raises(ValueError, match="percentile"):
        make_observer("percentile", UINT8, "x", percentile=20.0)
    with pytest.raises(ValueError, match="bins >= levels"):
        make_observer("entropy", QScheme(16, signed=False), "x")


@pytest.mark.parametrize("kind", KINDS)
def test_bad_batches_raise_naming_the_tensor(kind: str) -> None:
    obs = make_observer(kind, UINT8, "enc.3.out")
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=r"enc\.3\.out"):
            obs.update(torch.tensor([1.0, bad]))
    with pytest.raises(ValueError, match=r"enc\.3\.out: empty"):
        obs.update(torch.zeros(0, 3))
    with pytest.raises(TypeError, match=r"enc\.3\.out"):
        obs.update([1.0, 2.0])  # type: ignore[arg-type]
    for call in (obs.qparams, obs.observed_range, obs.clip_range):
        with pytest.raises(ValueError, match=r"enc\.3\.out: no calibration data"):
            call()
    assert obs.batches == 0


@pytest.mark.parametrize("kind", KINDS)
def test_channel_count_may_not_change(kind: str) -> None:
    obs = make_observer(kind, QScheme(8, signed=True, symmetric=True, axis=0), "conv.weight")
    obs.update(torch.randn(4, 10))
    with pytest.raises(ValueError, match=r"conv\.weight: .*shape"):
        obs.update(torch.randn(5, 10))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_zero_range_follows_choose_qparams_rule(kind: str, scheme: QScheme) -> None:
    """All-zero data: every observer gives scale = eps_f32 and the zero point that represents 0."""
    obs = make_observer(kind, scheme)
    obs.update(torch.zeros(3, 5))
    obs.update(torch.zeros(7))
    scale, zp = obs.qparams()
    want_scale, want_zp = np_qparams(0.0, 0.0, scheme)
    assert float(scale) == SCALE_EPS == float(want_scale) and int(zp) == want_zp
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32 and scale.shape == zp.shape == ()


@pytest.mark.parametrize("kind", KINDS)
def test_constant_data(kind: str) -> None:
    """A constant 2.5 is widened to [0, 2.5] by eq. 2 whatever the clip rule (nothing to clip)."""
    obs = make_observer(kind, UINT8)
    obs.update(torch.full((50,), 2.5))
    scale, zp = obs.qparams()
    lo, hi = obs.clip_range()
    if kind == "histogram":  # torch.ao's histc widens a one-value range to [v - 1, v + 1]: edges are inexact
        assert 2.49 < float(hi) <= 3.5 and int(zp) == 0
        return
    want = np_qparams(float(lo), float(hi), UINT8)
    assert float(hi) == 2.5 and float(scale) == float(want[0]) == float(np.float32(2.5) / np.float32(255))
    assert int(zp) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_observed_range_is_raw_range(kind: str) -> None:
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(40, 3, generator=g) * (i + 1) + i for i in range(4)]
    obs = make_observer(kind, QScheme(8, signed=False, axis=1))
    for b in batches:
        obs.update(b.to(torch.float64))  # converted to float32
    lo, hi = obs.observed_range()
    allx = torch.cat(batches).to(torch.float32)
    assert torch.equal(lo, allx.min(dim=0).values) and torch.equal(hi, allx.max(dim=0).values)
    assert obs.batches == 4
    c_lo, c_hi = obs.clip_range()
    assert c_lo.shape == c_hi.shape == (3,) and bool((c_lo <= c_hi).all())
    if kind == "minmax":
        assert torch.equal(c_lo, lo) and torch.equal(c_hi, hi)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("granularity", ["channel", "group"])
def test_per_row_equals_per_tensor_on_each_row(kind: str, granularity: str) -> None:
    """Per-channel (axis 1) / per-group qparams equal a per-tensor observer run on each row alone."""
    g = torch.Generator().manual_seed(6)
    batches = [torch.randn(64, 3, 8, generator=g) * torch.tensor([0.5, 2.0, 9.0]).reshape(1, 3, 1)
               + i * 0.3 for i in range(3)]
    if granularity == "channel":
        scheme = QScheme(8, signed=False, axis=1)
        rows = [[b[:, c].reshape(-1) for b in batches] for c in range(3)]
    else:
        scheme = QScheme(4, signed=True, symmetric=True, group_size=4)
        batches = [b.reshape(-1, 3, 8)[:2] for b in batches]
        flat = [b.reshape(-1, 4) for b in batches]  # (groups, 4)
        rows = [[f[r] for f in flat] for r in range(flat[0].shape[0])]
    options = {"bins": 256} if kind in ("entropy", "histogram") else {}  # keeps the 12-group case fast
    obs = make_observer(kind, scheme, **options)
    for b in batches:
        obs.update(b)
    scale, zp = obs.qparams()
    tensor_scheme = QScheme(scheme.bits, scheme.signed, scheme.symmetric)
    want = []
    for row in rows:
        o = make_observer(kind, tensor_scheme, **options)
        for part in row:
            o.update(part)
        want.append(o.qparams())
    assert scale.shape == zp.shape == ((3,) if granularity == "channel" else (2, 3, 2))
    assert torch.equal(scale.reshape(-1), torch.stack([w[0] for w in want]))
    assert torch.equal(zp.reshape(-1), torch.stack([w[1] for w in want]))


# ---- min/max and moving average ----------------------------------------------------------------------

def test_minmax_keeps_its_api() -> None:
    obs = MinMaxObserver(UINT8, "x")
    obs.update(torch.tensor([-1.0, 2.0]))
    obs.update(torch.tensor([3.0]))
    assert float(obs.min) == -1.0 and float(obs.max) == 3.0 and obs.batches == 2  # type: ignore[arg-type]
    scale, zp = obs.qparams()
    assert float(scale) == float(np.float32(4) / np.float32(255)) and int(zp) == 64


def test_moving_average_rule_in_float32() -> None:
    """First batch sets the averages; then avg + c * (batch - avg), each step one float32 rounding."""
    g = torch.Generator().manual_seed(7)
    c = 0.01
    obs = MovingAverageMinMaxObserver(QScheme(8, signed=True, axis=0), averaging_constant=c)
    batches = [torch.randn(2, 30, generator=g) * (1 + i) for i in range(6)]
    want_lo = want_hi = None
    for b in batches:
        obs.update(b)
        lo, hi = b.numpy().min(axis=1), b.numpy().max(axis=1)
        if want_lo is None:
            want_lo, want_hi = lo, hi
        else:
            want_lo = want_lo + np.float32(c) * (lo - want_lo)
            want_hi = want_hi + np.float32(c) * (hi - want_hi)
    c_lo, c_hi = obs.clip_range()
    assert c_lo.numpy().tobytes() == want_lo.astype(np.float32).tobytes()
    assert c_hi.numpy().tobytes() == want_hi.astype(np.float32).tobytes()
    scale, zp = obs.qparams()
    for ch in range(2):
        ws, wz = np_qparams(float(want_lo[ch]), float(want_hi[ch]), obs.scheme)
        assert float(scale[ch]) == float(ws) and int(zp[ch]) == wz
    assert float(obs.max[0]) == max(float(b[0].max()) for b in batches)  # type: ignore[index]


# ---- percentile ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [99.99, 99.0, 100.0])
def test_percentile_exact_while_sample_holds_everything(p: float) -> None:
    g = torch.Generator().manual_seed(8)
    batches = [torch.randn(3000, generator=g) ** 3, torch.rand(2000, generator=g) * 4 - 1]
    x = np.concatenate([b.numpy() for b in batches]).astype(np.float64)
    for scheme in (UINT8, INT8_SYM):
        obs = PercentileObserver(scheme, percentile=p)
        for b in batches:
            obs.update(b)
        assert obs.sample.exact
        lo, hi = obs.clip_range()
        if scheme.symmetric:
            want_hi = np.float32(np.percentile(np.abs(x), p))
            want_lo = -want_hi
        else:
            want_lo, want_hi = np.float32(np.percentile(x, 100 - p)), np.float32(np.percentile(x, p))
        ulp = float(np.spacing(np.float32(max(abs(want_lo), abs(want_hi)))))
        assert abs(float(lo) - float(want_lo)) <= ulp and abs(float(hi) - float(want_hi)) <= ulp
    if p == 100.0:
        assert float(hi) == float(np.abs(x).max())


def test_percentile_bounded_sample_rank_error() -> None:
    """With 2**17 values and room for 2**12, the estimate's rank in the full data is within
    5 standard errors, 5 * sqrt(p (1 - p) / S) + 1/S, of the requested quantile (here 0.0079)."""
    g = torch.Generator().manual_seed(9)
    batches = [torch.randn(2**15, generator=g).exp() for _ in range(4)]
    obs = PercentileObserver(UINT8, percentile=99.0, max_samples=2**12, seed=3)
    for b in batches:
        obs.update(b)
    assert not obs.sample.exact and obs.sample.values is not None and obs.sample.values.shape == (1, 2**12)
    _, hi = obs.clip_range()
    allx = torch.cat(batches)
    rank = float((allx <= hi).double().mean())
    assert abs(rank - 0.99) <= 5 * math.sqrt(0.99 * 0.01 / 2**12) + 2**-12
    again = PercentileObserver(UINT8, percentile=99.0, max_samples=2**12, seed=3)
    for b in batches:
        again.update(b)
    assert torch.equal(again.clip_range()[1], hi)  # seeded: reproducible


def test_sample_is_bottom_k_of_all_keys() -> None:
    """The bounded sample (with its pre-filter of hopeless new values) keeps exactly the values
    whose keys are the ``capacity`` smallest of each row, replaying the same seeded keys naively."""
    g = torch.Generator().manual_seed(18)
    batches = [torch.randn(3, n, generator=g) for n in (50, 400, 7, 900, 1, 300)]
    obs = PercentileObserver(QScheme(8, signed=False, axis=0), max_samples=3 * 64, seed=5)
    for b in batches:
        obs.update(b)
    replay = torch.Generator().manual_seed(5)
    keys = torch.cat([torch.rand(b.shape, generator=replay, dtype=torch.float64) for b in batches], dim=1)
    values = torch.cat(batches, dim=1)
    want = values.gather(1, keys.topk(64, dim=1, largest=False).indices)  # (3, 64)
    got = obs.sample.values
    assert got is not None and got.shape == (3, 64) and not obs.sample.exact
    assert torch.equal(got.sort(dim=1).values, want.sort(dim=1).values)


# ---- rare outliers: percentile, MSE and entropy clip them, min/max does not ---------------------------

@pytest.mark.parametrize("kind, scheme, max_fraction", [
    ("percentile", UINT8, 0.1), ("percentile", INT8_SYM, 0.1),
    ("mse", QScheme(4, signed=True, symmetric=True), 0.1), ("mse", QScheme(6, signed=False), 0.5),
    ("entropy", INT8_SYM, 0.25), ("entropy", UINT8, 0.25)], ids=str)
def test_rare_outliers_are_clipped(kind: str, scheme: QScheme, max_fraction: float) -> None:
    """4 outliers (at -60..80 sigma) in 2**16 N(0, 1) values: the clip range is a small fraction
    of min/max's and the bulk's quantization MSE is less than half of min/max's.

    Expected fractions: percentile 99.99 clips at about +-3.9 sigma of a 140 sigma span (0.056).
    MSE trades clipping error (the outliers' squared distance / n) against rounding noise
    ((span / (2**bits - 1))**2 / 12): 4-bit noise is large, so the outliers are clipped almost
    to the bulk; at 6 bits the balance, worked by hand, lies near 0.36 of the span (at 8 bits
    near 0.86: outliers must be rarer than about 1 in 2**(2 bits) for clipping to pay).
    Entropy: the narrowest window is ``levels / bins`` of the histogram's range (128/2048 of
    80 sigma symmetric, 256/2048 of 140 sigma affine), so 0.25 leaves room above that floor.
    """
    data, bulk = outlier_data(10)
    obs = make_observer(kind, scheme, "act")
    ref = make_observer("minmax", scheme, "act")
    for part in data.chunk(4):
        obs.update(part)
        ref.update(part)
    lo, hi = obs.clip_range()
    r_lo, r_hi = ref.clip_range()
    assert float(hi - lo) < max_fraction * float(r_hi - r_lo)
    s, z = obs.qparams()
    rs, rz = ref.qparams()
    bulk_np = bulk.numpy()
    assert np_mse(bulk_np, float(s), int(z), scheme) < 0.5 * np_mse(bulk_np, float(rs), int(rz), scheme)


# ---- MSE ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", [QScheme(8, signed=False), INT8_SYM, QScheme(4, signed=True)], ids=str)
def test_mse_choice_is_minimal_among_candidates(scheme: QScheme) -> None:
    """Every candidate's MSE recomputed in numpy (float32 clip ends, eq. 2, eqs. 3/1): the chosen
    clip's is the least, it is <= min/max's (alpha = 1), and the observer's errors agree."""
    data, _ = outlier_data(11, n=2**14)
    obs = MSEObserver(scheme, candidates=50)
    obs.update(data[: 2**13])
    obs.update(data[2**13:] * 1.5)
    lo, hi = obs.clip_range()
    x = np.concatenate([data[: 2**13].numpy(), (data[2**13:] * 1.5).numpy()])
    base_lo = np.float32(min(float(x.min()), 0.0))
    base_hi = np.float32(max(float(x.max()), 0.0))
    alphas = np.arange(50, 0, -1, dtype=np.float32) / np.float32(50)
    errs = []
    for a in alphas:
        s, z = np_qparams(float(a * base_lo), float(a * base_hi), scheme)
        errs.append(np_mse(x, float(s), z, scheme))
    errs_np = np.array(errs)
    assert obs.errors is not None and np.allclose(obs.errors[:, 0].numpy(), errs_np, rtol=1e-9, atol=0)
    s, z = obs.qparams()
    chosen = np_mse(x, float(s), int(z), scheme)
    assert chosen <= errs_np.min() * (1 + 1e-12) and chosen <= errs_np[0]
    a_best = alphas[int(np.argmin(errs_np))]
    assert float(lo) == float(a_best * base_lo) and float(hi) == float(a_best * base_hi)


def test_mse_gaussian_matches_analytic_optimum() -> None:
    """4-bit symmetric on N(0, 1): the observer's clip c has a true (integrated) MSE within 3% of
    the best candidate's. True MSE computed by numerical integration over the Gaussian density,
    independently of the sample (the known optimum is near 2.5 sigma, Banner et al. 2019)."""
    g = torch.Generator().manual_seed(12)
    scheme = QScheme(4, signed=True, symmetric=True)
    obs = MSEObserver(scheme)
    obs.update(torch.randn(2**16, generator=g))
    scale, _ = obs.qparams()
    t = np.linspace(-9, 9, 400_001)
    dens = np.exp(-t * t / 2) / math.sqrt(2 * math.pi)

    def true_mse(step: float) -> float:
        x_hat = np.clip(np.rint(t / step), scheme.qmin, scheme.qmax) * step
        return float(np.trapezoid((t - x_hat) ** 2 * dens, t))

    amax = max(-float(obs.min), float(obs.max))  # type: ignore[arg-type]
    assert obs.alphas is not None
    cands = [true_mse(float(a) * amax / 7.5) for a in obs.alphas]
    clip = float(scale) * 7.5
    assert 2.0 < clip < 3.2
    assert true_mse(float(scale)) <= 1.03 * min(cands)


# ---- entropy ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["gauss_abs", "relu_abs", "signed_affine", "relu_affine"])
def test_kl_search_matches_numpy_reference(case: str) -> None:
    g = torch.Generator().manual_seed(13)
    x = torch.randn(20000, generator=g)
    if case.startswith("relu"):
        x = x.relu() * 3
    if case == "signed_affine":
        x = torch.cat([x * 0.5 - 0.3, torch.rand(50, generator=g) * 9])  # skewed right tail
    scheme = INT8_SYM if case.endswith("abs") else UINT8
    obs = EntropyObserver(scheme, bins=512, levels=64 if scheme.symmetric else 128)
    obs.update(x)
    lo, hi = obs.clip_range()
    h = obs.histograms[0]
    assert h is not None
    zero_frac = -float(h.lo) / (float(h.hi) - float(h.lo))
    ref = np_kl_reference(h.counts.numpy(), obs.levels, zero_frac)
    assert np.allclose(obs.divergences[0].numpy(), ref, rtol=1e-9, atol=1e-12)
    start, end, _ = kl_clip_search(h.counts, obs.levels, zero_frac)
    best = int(np.flatnonzero(ref <= ref.min() + 1e-9 * abs(ref.min()) + 1e-13).max())  # widest near-minimum
    assert end - start == obs.levels + best
    width = (h.hi - h.lo) / h.bins
    assert float(hi) == float(h.lo + width * end)
    if not scheme.symmetric:
        assert float(lo) == float(h.lo + width * start)


@pytest.mark.parametrize("relu", [False, True])
def test_entropy_threshold_on_gaussian_in_band(relu: bool) -> None:
    """int8 symmetric (128 levels, 2048 bins of |x|) on 2**18 N(0, 1) values: 2.5 sigma < t < 6 sigma.
    With ``relu`` the data is ReLU(N(0, 1)): half exact zeros (left out of the histogram), the
    rest half-normal, which is the distribution of |x| again, so the same band holds.

    Upper bound: candidates end inside [0, max|x|] and max|x| < 6 sigma (P = n * 2Q(6) ≈ 5e-4).
    Lower bound: for t <= 2.5 sigma the folded tail (mass m = 2Q(t) >= 0.0124) sits in the last
    bin while Q gives that bin at most its group's own mass, q <= 2 phi(t) t / 128; merging all
    other bins into one cell can only lower KL (log-sum inequality), so
    KL >= m ln(m / q) + (1 - m) ln((1 - m) / (1 - q)) = kl2(t), which grows as t falls
    (m / q ~ 128 / t^2). kl2(2.5) ≈ 0.024 nats is checked here to exceed the divergence of the
    full-width window (no clipping, the numpy reference) — so no t <= 2.5 sigma can be the minimum.
    """
    g = torch.Generator().manual_seed(14)
    x = torch.randn(2**18, generator=g)
    if relu:
        x = x.relu()
    obs = EntropyObserver(INT8_SYM)
    obs.update(x)
    _, t = obs.clip_range()
    q_tail = math.erfc(2.5 / math.sqrt(2))  # 2 Q(2.5)
    q_group = 2 * math.exp(-2.5**2 / 2) / math.sqrt(2 * math.pi) * 2.5 / 128
    kl2 = q_tail * math.log(q_tail / q_group) + (1 - q_tail) * math.log((1 - q_tail) / (1 - q_group))
    h = obs.histograms[0]
    assert h is not None
    full_width_kl = np_kl_reference(h.counts.numpy(), 128, 0.0)[-1]
    assert kl2 > 0.02 > full_width_kl
    assert 2.5 < float(t) < min(6.0, float(x.abs().max()) + 1e-6)


@pytest.mark.parametrize("scheme", [INT8_SYM, UINT8], ids=str)
def test_entropy_ignores_exact_zeros(scheme: QScheme) -> None:
    """Zeros are exact on every grid: the clip range is the same for the non-zero values alone,
    for the ReLU output with its zeros, and with all-zero batches before or after it."""
    g = torch.Generator().manual_seed(17)
    x = torch.randn(5000, generator=g).relu() * 2
    nz = x[x != 0]
    clips = []
    for batches in ([nz], [x], [torch.zeros(300), x], [x, torch.zeros(7)]):
        obs = EntropyObserver(scheme)
        for b in batches:
            obs.update(b)
        clips.append(obs.clip_range())
    for lo, hi in clips[1:]:
        assert torch.equal(lo, clips[0][0]) and torch.equal(hi, clips[0][1])
    assert 1.5 * 2 < float(clips[0][1]) <= float(x.max())  # a ReLU(N(0, 2)) threshold, not pulled in by zeros


# ---- histogram maths ----------------------------------------------------------------------------------

def test_running_histogram_keeps_every_count() -> None:
    """Re-binning as the range grows moves counts but never loses them (sum = values seen)."""
    g = torch.Generator().manual_seed(15)
    h = None
    total = 0
    for i in range(8):
        x = torch.randn(1000, generator=g) * 2.0**i + i
        total += x.numel()
        h = histogram_add(h, x, x.min(), x.max())
    assert h is not None
    assert abs(float(h.counts.double().sum()) - total) < 1e-3 and bool((h.counts >= 0).all())


def test_histogram_first_batch_counts_match_numpy() -> None:
    """One batch: counts equal numpy's histogram on the same edges (data kept off the edges)."""
    g = torch.Generator().manual_seed(16)
    x = torch.randint(0, 640, (5000,), generator=g).to(torch.float32) / 64 + 1 / 128 - 5.0  # bin centres
    x = torch.cat([x, torch.tensor([-5.0, 5.0])])
    h = histogram_add(None, x, x.min(), x.max(), bins=640)
    want, _ = np.histogram(x.numpy().astype(np.float64), bins=640, range=(-5.0, 5.0))
    assert np.array_equal(h.counts.numpy().astype(np.int64), want)


def test_histogram_observer_per_channel_and_dst_nbins() -> None:
    obs = HistogramObserver(QScheme(7, signed=False))
    assert obs.dst_nbins == 256  # torch.ao's rule: storage dtype bits, not the reduced grid
    assert HistogramObserver(QScheme(12, signed=True)).dst_nbins == 2**16
