"""Conversion: same object back, filters, skipped layers with reasons, progress output."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import glassquant as gq
from glassquant.nn import DynamicQuantLinear, QuantLinear, WeightOnlyLinear


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32))
        self.head = nn.Linear(32, 4)
        self.norm = nn.LayerNorm(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.enc(x)))


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(32, 16, generator=g) for _ in range(3)]


def test_filters_and_skipped_reasons() -> None:
    m = Net()
    q = gq.quantize(m, "x86", batches(), exclude=["head"], progress=False)
    assert q is m
    res = q.glassquant_conversion
    assert res.converted == ["enc.0", "enc.2"] and res.fused_relu == ["enc.0"]
    assert res.skipped == {"head": "excluded by pattern"}
    assert isinstance(m.enc[0], QuantLinear) and m.enc[0].relu and isinstance(m.enc[1], nn.Identity)
    assert type(m.head) is nn.Linear
    m2 = gq.quantize(Net(), "w8a8-dynamic", include=["enc.*"], progress=False)
    assert isinstance(m2.enc[2], DynamicQuantLinear) and type(m2.head) is nn.Linear
    m3 = gq.quantize(Net(), "w8-weight-only", types=[nn.Linear], progress=False)
    assert all(isinstance(x, WeightOnlyLinear) for x in (m3.enc[0], m3.enc[2], m3.head))
    with pytest.raises(ValueError, match="no layer to quantize"):
        gq.quantize(Net(), "x86", batches(), include=["nothing*"], progress=False)


def test_progress_bar_lists_batches_and_layers(capsys: pytest.CaptureFixture[str]) -> None:
    gq.quantize(Net(), "x86", batches(), progress=True)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "calibrating 3 layers" in text and "3/3" in text and "converting 3 layers" in text


def test_overflowing_layer_stays_float_and_is_listed() -> None:
    big = nn.Sequential(nn.Linear(70_000, 2))
    with torch.no_grad():
        big[0].weight.fill_(1.0)
    q = gq.quantize(big, "qnnpack", [torch.rand(2, 70_000)], progress=False)
    assert type(q[0]) is nn.Linear and "overflow" in q.glassquant_conversion.skipped["0"]
