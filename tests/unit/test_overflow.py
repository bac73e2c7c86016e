"""Overflow certificates: the bounds are attained (int32) or hold for every pairing (int16).

Each bound is checked against an input built in the test to reach it, with the exact
int64 sum computed independently; verdicts on layers built to be safe, to saturate int16
pairs, and to overflow int32.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from glassquant.analysis.overflow import INT16_MAX, certificates_markdown, certify, certify_layer, int16_pair_bound
from glassquant.dialects._base import INT32_MAX
from glassquant.nn.linear import DynamicQuantLinear, QuantLinear


def _static(w_q: torch.Tensor, zx: int = 0, engine: str = "x86") -> QuantLinear:
    n = w_q.shape[0]
    return QuantLinear(w_q, torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int32), None, 0.1, zx, 0.2, 3,
                       engine=engine, check_overflow=False)


def test_int32_bound_is_attained() -> None:
    g = torch.Generator().manual_seed(0)
    w_q = torch.randint(-128, 128, (6, 300), generator=g, dtype=torch.int8)
    zx = 77
    c = certify_layer("fc", _static(w_q, zx))
    assert c is not None
    w = w_q[c.channel].to(torch.int64)
    x_hi, x_lo = torch.where(w > 0, 255, 0), torch.where(w > 0, 0, 255)  # the two corner inputs
    acc = max(int(((x_hi - zx) * w).sum()), -int(((x_lo - zx) * w).sum()))
    assert acc == c.bound  # attained: the bound is tight, not just safe
    # and no other input on the grid exceeds it (random probe)
    xs = torch.randint(0, 256, (2000, 300), generator=g)
    assert int(((xs - zx) @ w_q.to(torch.int64).T).abs().max()) <= c.bound


def test_verdicts() -> None:
    small = torch.tensor([[1, -2, 3, 0]], dtype=torch.int8)
    assert certify_layer("a", _static(small, engine="qnnpack")).verdict == "safe"
    c = certify_layer("b", _static(torch.full((2, 8), 127, dtype=torch.int8)))  # pairs up to 2*127*255
    assert c.verdict == "reduce_range" and c.pair_range[1] == 2 * 127 * 255 > INT16_MAX
    assert certify_layer("c", _static(torch.full((2, 8), 127, dtype=torch.int8), engine="qnnpack")).verdict == "safe"
    big_k = 2**31 // (128 * 255) + 1  # K past which -128 weights and 255 inputs overflow int32
    c = certify_layer("d", _static(torch.full((1, big_k), -128, dtype=torch.int8)))
    assert c.verdict == "wider accumulator" and c.bound == big_k * 128 * 255 > INT32_MAX and c.headroom_bits < 0


def test_pair_bound_holds_for_every_pairing() -> None:
    g = torch.Generator().manual_seed(1)
    w_q = torch.randint(-128, 128, (3, 7), generator=g, dtype=torch.int8)
    lo, hi = int16_pair_bound(w_q, 0, 255)
    exact_lo, exact_hi = 0, 0
    for n in range(3):
        for a, b in itertools.combinations(range(7), 2):
            for xa, xb in itertools.product((0, 255), repeat=2):  # extremes of a bilinear form
                v = xa * int(w_q[n, a]) + xb * int(w_q[n, b])
                exact_lo, exact_hi = min(exact_lo, v), max(exact_hi, v)
    assert (lo, hi) == (exact_lo, exact_hi)  # the any-pairing bound is exactly the worst pair
    assert int16_pair_bound(torch.tensor([[-128]], dtype=torch.int8), 0, 127) == (-128 * 127, 0)  # K = 1
    assert int16_pair_bound(torch.full((1, 4), -128, dtype=torch.int8), 0, 127)[0] == -2 * 128 * 127  # fits


def test_dynamic_and_model_level() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    model[0] = DynamicQuantLinear.from_float(model[0], engine="x86")  # reduce_range: [0, 127]
    model[2] = DynamicQuantLinear.from_float(model[2], engine="torchao")
    certs = certify(model)
    assert [c.layer for c in certs] == ["0", "2"]
    assert certs[0].x_range == (0, 127) and certs[0].pair_range is not None
    assert certs[0].pair_range[1] <= INT16_MAX and certs[0].verdict == "safe"
    assert certs[1].x_range == (-128, 127) and certs[1].pair_range is None
    w = model[2].w_q.to(torch.int64)
    hi = torch.where(w > 0, w * 127, w * -128).sum(1)
    lo = torch.where(w > 0, w * -128, w * 127).sum(1)
    assert certs[1].bound == int(torch.maximum(hi, -lo).max())
    table = certificates_markdown(certs)
    assert "| 0 | 16 | [0, 127]" in table and "safe" in table


@pytest.mark.parametrize("engine", ["x86", "qnnpack"])
def test_digits_mlp_certificates(engine: str) -> None:
    import copy

    import glassquant as gq
    from glassquant.demo import digits

    data = digits.load_digits_split()
    qmodel = gq.quantize(copy.deepcopy(digits.digits_mlp(data)), engine, list(data.x_train.split(200)),
                         progress=False)
    certs = certify(qmodel)
    assert len(certs) == 2 and all(0 < c.bound <= INT32_MAX and c.verdict != "wider accumulator" for c in certs)
    assert all((c.pair_range is None) == (engine == "qnnpack") for c in certs)
