"""Rounding on the digits MLP: RTN vs AdaRound (and the benchmark's GPTQ) at 4 and 3 bits, weight-only.

Grid: asymmetric unsigned per output channel (eq. 2 min/max qparams, the same for both methods;
only the rounding differs). Calibration: the training split; accuracy on the test split. At 4 bits
the integers run in ``WeightOnlyLinear`` (group = K: 64 and 128 are group sizes it stores); at
3 bits the float layers hold the dequantized integers (eq. 1) — the weight-only arithmetic up to the
matmul's summation order. The full table (GPTQ, the CNN, MiniLM) is ``benchmarks/rounding.py``.

Measured (AdaRound defaults, 1000 steps per layer): 4 bits RTN 96.88 %, AdaRound 97.77 %;
3 bits RTN 97.77 %, AdaRound 98.00 % (float 97.77 %); summed output reconstruction error on the
calibration inputs 0.1-0.2 of RTN's.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from glassquant.adaround import adaround_model, collect_grams, dequantized_module, weight_only_linear
from glassquant.affine import quantize
from glassquant.demo import digits
from glassquant.gptq import gptq_quantize
from glassquant.nn.weight_only import WeightOnlyLinear
from glassquant.scheme import QScheme

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import rounding

TOLERANCE = 0.005  # two of the 449 test digits


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def mlp(data: digits.Digits) -> nn.Sequential:
    return digits.digits_mlp(data)


def with_layers(model: nn.Sequential, layers: dict[str, nn.Module]) -> nn.Sequential:
    q = copy.deepcopy(model)
    for n, m in layers.items():
        setattr(q, n, m)
    return q.eval()


@pytest.mark.parametrize("bits", [4, 3])
def test_adaround_beats_rtn_on_digits(bits: int, data: digits.Digits, mlp: nn.Sequential) -> None:
    scheme = QScheme(bits=bits, signed=False, symmetric=False, axis=0)
    grams = collect_grams(mlp, [data.x_train])
    rounded = adaround_model(mlp, None, scheme, grams=grams)
    rtn_layers, ada_layers = {}, {}
    for n, r in rounded.items():
        layer = mlp.get_submodule(n)
        q_rtn = quantize(layer.weight.detach(), r.scale, r.zero_point, scheme)  # same qparams, nearest
        assert r.error < r.error_rtn, (n, r.error, r.error_rtn)  # strictly better output reconstruction
        assert int((q_rtn != r.w_q).sum()) > 0
        rtn_r = copy.copy(r)
        rtn_r.w_q = q_rtn
        rtn_layers[n] = dequantized_module(layer, rtn_r)
        ada_layers[n] = dequantized_module(layer, r)
        if bits == 4:  # the layer glassquant stores: int4 with one group per row
            wo = weight_only_linear(layer, r, n)
            assert isinstance(wo, WeightOnlyLinear) and wo.group_size == layer.in_features
            with torch.no_grad():
                assert torch.allclose(wo(data.x_test if n == "0" else mlp[:2](data.x_test)),
                                      ada_layers[n](data.x_test if n == "0" else mlp[:2](data.x_test)), atol=1e-5)
            ada_layers[n] = wo
    with torch.no_grad():
        acc_f = digits.accuracy(mlp(data.x_test), data.y_test)
        acc_rtn = digits.accuracy(with_layers(mlp, rtn_layers)(data.x_test), data.y_test)
        acc_ada = digits.accuracy(with_layers(mlp, ada_layers)(data.x_test), data.y_test)
    print(f"\n{bits}-bit: float {acc_f:.4f} RTN {acc_rtn:.4f} AdaRound {acc_ada:.4f}; error / RTN "
          + ", ".join(f"{n}: {r.error / r.error_rtn:.3f}" for n, r in rounded.items()))
    assert acc_ada >= acc_rtn - TOLERANCE, (acc_rtn, acc_ada)
    assert acc_ada >= acc_f - 0.02


def test_benchmark_gptq_equals_glassquant_gptq_at_4_bits(data: digits.Digits, mlp: nn.Sequential) -> None:
    """The benchmark's any-grid GPTQ (used for the 3-bit rows) is glassquant.gptq on the int4 grid."""
    grams = collect_grams(mlp, [data.x_train])
    for n, g in grams.items():
        w = mlp.get_submodule(n).weight.detach()
        q, s, zp = rounding.gptq_grid(w, 2.0 * g, rounding.grid(4, None))
        q_ref, s_ref, zp_ref = gptq_quantize(w, 2.0 * g, 4, w.shape[1], act_order=True, percdamp=rounding.PERCDAMP)
        assert torch.equal(q.to(torch.uint8), q_ref) and torch.equal(s, s_ref[:, 0])
        assert torch.equal(zp.to(torch.uint8), zp_ref[:, 0])
        q3, _, _ = rounding.gptq_grid(w, 2.0 * g, rounding.grid(3, None))
        assert int(q3.max()) <= 7
