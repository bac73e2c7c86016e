"""The fbgemm dialect against PyTorch's real `fbgemm` engine (and `x86`, which routes Linear to fbgemm), bit for bit.

Static: integers compared with torch.equal over >= 100,000 outputs per engine and weight
scheme, random, full-range (accumulators past 2**24) and adversarial inputs (power-of-two
scales, bias re-chosen so a value lands exactly on a .5 tie). Dynamic: float outputs.
"""

from __future__ import annotations

import pytest
import torch

from glassquant.dialects import fbgemm as dialect

from gq_testing import HalfAwayMutant, dynamic_suite, needs_torch_ao, static_suite

pytestmark = needs_torch_ao
ENGINES = ["fbgemm", "x86"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_static_linear_bit_exact(engine: str, per_channel: bool) -> None:
    stats = static_suite(engine, dialect, per_channel, seed=1 + per_channel)
    assert stats["outputs"] >= 100_000
    assert stats["exact_ties"] >= 3_000, stats  # the adversarial cases really produced ties
    assert stats["mismatches"] == 0, stats


@pytest.mark.parametrize("engine", ENGINES)
def test_suite_catches_a_wrong_tie_rule(engine: str) -> None:
    stats = static_suite(engine, HalfAwayMutant(dialect), per_channel=False, seed=1)
    assert stats["mismatches"] > 100, stats


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_dynamic_linear_bit_exact(engine: str, per_channel: bool) -> None:
    outputs = mismatches = 0
    for ref, got, _ in dynamic_suite(engine, dialect, per_channel, seed=3 + per_channel):
        assert ref.dtype == got.dtype == torch.float32
        outputs += ref.numel()
        mismatches += int((ref != got).sum())
    assert outputs >= 100_000
    assert mismatches == 0
