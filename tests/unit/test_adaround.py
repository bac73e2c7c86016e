"""``glassquant.adaround``: the rectified sigmoid, the schedule, the hard rounding rule, the
reconstruction error, and the layers the integers become.

References are independent: numpy float64 / float32 restatements of eqs. 1-3 and (A1), the
output error ``mean_t ||(W - Wq) x_t||^2`` computed directly from the inputs (no Gram matrix),
and PyTorch's own ``conv2d`` for the patch layout. Integers compare with ``torch.equal``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import glassquant as gq
from glassquant.adaround import (
    AdaRoundConfig,
    adaround_model,
    adaround_weight,
    beta_at,
    collect_grams,
    dequantized_module,
    gram_factor,
    gram_from_inputs,
    layer_rows,
    rectified_sigmoid,
    rounding_regularizer,
    v_from_fraction,
    weight_only_linear,
)
from glassquant.affine import quantize
from glassquant.nn.linear import QuantLinear
from glassquant.nn.weight_only import PackedWeightOnlyLinear, WeightOnlyLinear
from glassquant.scheme import QScheme

UINT3_ROW = QScheme(bits=3, signed=False, symmetric=False, axis=0)
UINT4_G32 = QScheme(bits=4, signed=False, symmetric=False, group_size=32)
INT8_ROW = QScheme(bits=8, signed=True, symmetric=True, axis=0)
FAST = AdaRoundConfig(iterations=300)


def correlated_layer(seed: int, n: int = 24, k: int = 64, tokens: int = 512) -> tuple[Tensor, Tensor]:
    """A weight (N, K) and inputs (T, K) whose features are strongly correlated (low-rank plus noise):
    the case where rounding each weight alone is far from the best output."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, k, generator=g)
    x = torch.randn(tokens, 8, generator=g) @ basis + 0.1 * torch.randn(tokens, k, generator=g)  # (T, 8) @ (8, K)
    w = torch.randn(n, k, generator=g) * 0.1
    return w, x


def np_rtn(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row asymmetric unsigned RTN in numpy: eq. 2 in float32, eq. 3 with np.rint (half to even)."""
    f32 = np.float32
    qmax = 2**bits - 1
    lo = np.minimum(w.min(axis=1), 0).astype(f32)
    hi = np.maximum(w.max(axis=1), 0).astype(f32)
    scale = np.maximum((hi - lo) / f32(qmax), f32(2.0**-23)).astype(f32)
    zp = np.clip(0 - np.rint(lo / scale), 0, qmax)
    q = np.clip(np.rint(w.astype(f32) / scale[:, None]) + zp[:, None], 0, qmax)
    return q, scale, zp


def direct_error(w: Tensor, wq: Tensor, x: Tensor) -> float:
    """mean_t ||(W - Wq) x_t||^2 in float64, straight from the inputs."""
    d = (w.to(torch.float64) - wq.to(torch.float64))
    return float(((x.to(torch.float64) @ d.T) ** 2).sum(dim=1).mean())  # (T, K) @ (K, N) -> (T, N)


# ----- (A1), (A5) pieces ---------------------------------------------------------------------------


def test_rectified_sigmoid_reaches_0_and_1_and_inverts() -> None:
    ln11 = math.log(11.0)
    v = torch.tensor([-50.0, -ln11 - 1e-3, 0.0, ln11 + 1e-3, 50.0])
    assert torch.equal(rectified_sigmoid(v), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    frac = torch.linspace(0.0, 0.999, 1000)
    back = rectified_sigmoid(v_from_fraction(frac))
    ref = 1.0 / (1.0 + np.exp(-v_from_fraction(frac).double().numpy())) * 1.2 - 0.1  # (A1) in float64
    assert float((back - frac).abs().max()) < 1e-5
    assert np.abs(back.double().numpy() - np.clip(ref, 0, 1)).max() < 1e-6
    assert float(v_from_fraction(torch.tensor(0.5))) == 0.0


def test_regularizer_and_beta_schedule() -> None:
    h = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert float(rounding_regularizer(h, 2.0)) == 0.0
    assert float(rounding_regularizer(torch.full((3,), 0.5), 20.0)) == 1.0
    assert abs(float(rounding_regularizer(torch.tensor([0.25]), 2.0)) - 0.75) < 1e-7  # 1 - 0.5^2
    cfg = AdaRoundConfig(iterations=101, warmup=0.2, beta_start=20.0, beta_end=2.0)
    assert beta_at(0, cfg) is None and beta_at(19, cfg) is None
    assert beta_at(20, cfg) == 20.0 and beta_at(100, cfg) == 2.0
    assert beta_at(60, cfg) == pytest.approx(11.0)


def test_gram_and_factor_are_the_mean_outer_product() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 16, generator=g)  # rank <= 120 > 16: full rank
    gram = gram_from_inputs([x[0], x[1:]])
    ref = np.einsum("ti,tj->ij", x.reshape(-1, 16).double().numpy(), x.reshape(-1, 16).double().numpy()) / 120
    assert np.abs(gram.numpy() - ref).max() < 1e-12
    low = gram_from_inputs(torch.randn(5, 16, generator=g))  # rank 5
    f = gram_factor(low)
    assert f.shape == (16, 5) and float((f.double() @ f.double().T - low).abs().max()) < 1e-5


# ----- the rounding rule ----------------------------------------------------------------------------


def test_zero_iterations_is_rtn_except_ties_up() -> None:
    w, x = correlated_layer(0)
    r = adaround_weight(w, gram_from_inputs(x), UINT3_ROW, AdaRoundConfig(iterations=0))
    q_np, scale_np, zp_np = np_rtn(w.numpy(), 3)
    assert torch.equal(r.w_q, torch.from_numpy(q_np).to(torch.uint8))
    assert torch.equal(r.scale, torch.from_numpy(scale_np)) and torch.equal(r.zero_point,
                                                                             torch.from_numpy(zp_np).to(torch.int32))
    # a tie: w / scale = 2.5 exactly (scale 1 from range [-3, 4] over 7 levels... use a power-of-two grid)
    tie = torch.tensor([[0.0, 1.25, 3.5]])  # range [0, 3.5]: scale 0.5, zp 0; 1.25 / 0.5 = 2.5
    r_tie = adaround_weight(tie, torch.eye(3, dtype=torch.float64), UINT3_ROW, AdaRoundConfig(iterations=0))
    rtn = quantize(tie, r_tie.scale, r_tie.zero_point, UINT3_ROW)
    assert float(r_tie.scale[0]) == 0.5
    assert r_tie.w_q.tolist() == [[0, 3, 7]] and rtn.tolist() == [[0, 2, 7]]  # h(V) = 0.5 rounds up; RTN to even


def test_adaround_only_picks_a_neighbour_and_beats_rtn_on_outputs() -> None:
    w, x = correlated_layer(1)
    r = adaround_weight(w, gram_from_inputs(x), UINT3_ROW, FAST)
    ratio = w.double() / r.scale.double()[:, None]  # float64 w / scale
    lo = torch.floor(ratio) + r.zero_point[:, None]
    q = r.w_q.to(torch.float64)
    assert bool(((q == lo.clamp(0, 7)) | (q == (lo + 1).clamp(0, 7))).all())  # (A6): floor or floor + 1
    wq = r.dequantize()
    rtn_wq = (quantize(w, r.scale, r.zero_point, UINT3_ROW).to(torch.float32)
              - r.zero_point[:, None].to(torch.float32)) * r.scale[:, None]
    err, err_rtn = direct_error(w, wq, x), direct_error(w, rtn_wq, x)
    assert r.error == pytest.approx(err, rel=1e-9) and r.error_rtn == pytest.approx(err_rtn, rel=1e-9)
    assert err < 0.5 * err_rtn, (err, err_rtn)
    assert int((r.w_q != quantize(w, r.scale, r.zero_point, UINT3_ROW)).sum()) > 0  # mutant: it is not RTN


def test_uncorrelated_inputs_keep_round_to_nearest() -> None:
    """G = I: (A4) is the sum of per-weight squared errors, minimized by RTN; AdaRound must find it
    (and rounding down everywhere — the mutant — must not)."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 32, generator=g) * 0.1
    r = adaround_weight(w, torch.eye(32, dtype=torch.float64), UINT3_ROW, FAST)
    rtn = quantize(w, r.scale, r.zero_point, UINT3_ROW)
    assert torch.equal(r.w_q, rtn) and r.error == pytest.approx(r.error_rtn, rel=1e-12)
    floor = quantize(w, r.scale, r.zero_point, UINT3_ROW, rounding="floor")
    assert not torch.equal(floor, rtn)


def test_deterministic_and_per_group() -> None:
    w, x = correlated_layer(3, n=8, k=64)
    gram = gram_from_inputs(x)
    a = adaround_weight(w, gram, UINT4_G32, FAST)
    b = adaround_weight(w, gram, UINT4_G32, FAST)
    assert torch.equal(a.w_q, b.w_q) and a.scale.shape == (8, 2) and a.zero_point.shape == (8, 2)
    assert int(a.w_q.max()) <= 15 and a.error < a.error_rtn


# ----- layers ---------------------------------------------------------------------------------------


def test_conv_rows_match_conv2d() -> None:
    g = torch.Generator().manual_seed(4)
    conv = nn.Conv2d(3, 5, 3, padding=1, stride=2, bias=False)
    x = torch.randn(2, 3, 7, 7, generator=g)
    rows = layer_rows(conv, x)  # (2 * 16, 27)
    y = (rows @ conv.weight.detach().reshape(5, -1).T).reshape(2, 16, 5).transpose(1, 2).reshape(2, 5, 4, 4)
    assert torch.allclose(y, conv(x), atol=1e-5)
    with pytest.raises(ValueError, match="groups=1"):
        layer_rows(nn.Conv2d(4, 4, 3, groups=2), torch.zeros(1, 4, 5, 5))


def test_layers_formats_and_file_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(256, 64)
    grams = collect_grams(model, [x])
    r4 = adaround_model(model, None, UINT4_G32, FAST, grams=grams)
    q = nn.Sequential(weight_only_linear(model[0], r4["0"], "0"), nn.ReLU(), weight_only_linear(model[2], r4["2"], "2"))
    assert all(isinstance(q[i], WeightOnlyLinear) for i in (0, 2))
    for i in ("0", "2"):
        assert torch.equal(q.get_submodule(i).dequantize_weight(), r4[i].dequantize())  # same integers and scales
    deq = nn.Sequential(dequantized_module(model[0], r4["0"]), nn.ReLU(), dequantized_module(model[2], r4["2"]))
    with torch.no_grad():
        assert torch.allclose(q(x), deq(x), atol=1e-5)
        path = tmp_path / "adaround.safetensors"
        gq.save(q, path)
        assert torch.equal(gq.load(path)(x), q(x))
    r8 = adaround_model(model, [x], INT8_ROW, FAST, include=["0"])
    w8 = weight_only_linear(model[0], r8["0"], "0")
    assert isinstance(w8, WeightOnlyLinear) and w8.bits == 8 and torch.equal(w8.w_q, r8["0"].w_q)
    # the same int8 per-channel integers are a static layer's weights
    ql = QuantLinear(r8["0"].w_q, r8["0"].scale, r8["0"].zero_point, model[0].bias, 0.05, 128, 0.1, 0)
    assert ql.w_q.dtype == torch.int8 and torch.equal(ql.w_zero_point, torch.zeros(32, dtype=torch.int32))
    # any other unsigned b-bit grid: the packed layer, the same integers and scales, saved and reloaded
    for scheme in (UINT3_ROW, QScheme(bits=3, signed=False, symmetric=False, group_size=32),
                   QScheme(bits=5, signed=False, symmetric=False)):
        r3 = adaround_model(model, [x], scheme, AdaRoundConfig(iterations=20), include=["0"])
        p3 = weight_only_linear(model[0], r3["0"], "0")
        assert isinstance(p3, PackedWeightOnlyLinear) and p3.bits == scheme.bits
        assert torch.equal(p3.codes(), r3["0"].w_q.to(torch.uint8))
        assert torch.equal(p3.dequantize_weight(), r3["0"].dequantize())
        assert p3.w_q.numel() == math.ceil(32 * 64 * scheme.bits / 8)  # packed, not a byte per code
        gq.save(nn.Sequential(p3), tmp_path / "p3.safetensors")
        with torch.no_grad():
            assert torch.equal(gq.load(tmp_path / "p3.safetensors")(x), nn.Sequential(p3)(x))
    signed3 = QScheme(bits=3, signed=True, symmetric=True, axis=0)
    r3 = adaround_model(model, [x], signed3, AdaRoundConfig(iterations=0), include=["2"])
    with pytest.raises(ValueError, match="no weight-only layer"):
        weight_only_linear(model[2], r3["2"], "2")


def test_bad_input() -> None:
    w = torch.zeros(4, 64)
    with pytest.raises(ValueError, match="Gram matrix shape"):
        adaround_weight(w, torch.eye(32, dtype=torch.float64), UINT3_ROW)
    with pytest.raises(ValueError, match="multiple of group_size"):
        adaround_weight(torch.zeros(4, 48), torch.eye(48, dtype=torch.float64), UINT4_G32)
    with pytest.raises(ValueError, match="iterations"):
        AdaRoundConfig(iterations=-1)
    with pytest.raises(ValueError, match="beta"):
        AdaRoundConfig(beta_start=1.0, beta_end=2.0)
    with pytest.raises(ValueError, match="batches is empty"):
        collect_grams(nn.Linear(4, 4), [])
    with pytest.raises(ValueError, match="finite"):
        adaround_weight(torch.full((2, 4), float("nan")), torch.eye(4, dtype=torch.float64), UINT3_ROW)
