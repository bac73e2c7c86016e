"""Every layer kind survives copy.deepcopy (users copy models; a stored module object would not)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import glassquant as gq


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 64), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


@pytest.mark.parametrize("preset", ["x86", "qnnpack", "onednn", "w8a8-dynamic", "w8a8-dynamic-per-tensor",
                                    "w8-weight-only", "w4g32-weight-only"])
def test_deepcopy_of_quantized_model(preset: str) -> None:
    idx = torch.randint(0, 10, (16, 5))
    q = gq.quantize(mlp(), preset, [idx], progress=False)
    c = copy.deepcopy(q)
    with torch.no_grad():
        assert torch.equal(q(idx), c(idx))


def test_deepcopy_of_conv() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    m[1].running_mean.uniform_(-1, 1)
    x = torch.randn(8, 1, 4, 4)
    q = gq.quantize(m.eval(), "x86", [x], progress=False)
    with torch.no_grad():
        assert torch.equal(q(x), copy.deepcopy(q)(x))


def test_conv_without_overflow_check_survives_a_record_round_trip() -> None:
    """check_overflow=False is part of the record: a conv over the certificate can be rebuilt."""
    from glassquant.nn import QuantConv2d

    w_q = torch.full((1, 128, 24, 24), 127, dtype=torch.int8)  # K = 73,728: 73,728*127*255 > 2**31
    layer = QuantConv2d(w_q, torch.tensor([0.01]), torch.tensor([0]), None, 0.1, 0, 0.2, 0, check_overflow=False)
    again = QuantConv2d.from_record(*layer.record())
    assert again.check_overflow is False and torch.equal(again.w_q, layer.w_q)
