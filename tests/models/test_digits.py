"""Whole models: glassquant's conversion equals torch.ao eager PTQ integer for integer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import glassquant as gq
from glassquant import convert
from glassquant.demo import digits
from glassquant.interop import torch_ao

from gq_testing import needs_torch_ao


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def mlp(data: digits.Digits) -> nn.Sequential:
    return digits.digits_mlp(data)


def deep_mlp() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 10))


@needs_torch_ao
@pytest.mark.parametrize("engine", ["x86", "fbgemm", "qnnpack", "onednn"])
@pytest.mark.parametrize("which", ["digits_mlp", "deep_mlp"])
def test_model_equals_torch_ao_eager_ptq(engine: str, which: str, data: digits.Digits, mlp: nn.Sequential) -> None:
    model = mlp if which == "digits_mlp" else deep_mlp()
    cfg = convert.PRESETS[engine]
    assert isinstance(cfg, convert.StaticConfig)
    calibration = list(data.x_train.split(200))
    ours = gq.quantize(copy.deepcopy(model), engine, calibration)
    ao = torch_ao.eager_ptq(model, calibration, engine, per_channel=cfg.weight.axis is not None,
                            reduce_range=cfg.activation.bits == 7)
    # every input: the held-out split, plus inputs outside the calibrated range (saturation)
    g = torch.Generator().manual_seed(0)
    inputs = [data.x_test, torch.rand(300, 64, generator=g) * 3 - 1]
    compared = 0
    for x in inputs:
        ints_ours = gq.integer_outputs(ours, x)
        ints_ao = torch_ao.integer_outputs(ao, x, engine)
        assert ints_ours.keys() == ints_ao.keys() and ints_ours
        for name in ints_ours:
            assert torch.equal(ints_ours[name], ints_ao[name]), (engine, name)
            compared += ints_ours[name].numel()
        with torch.no_grad(), torch_ao.engine(engine):
            assert torch.equal(ours(x), ao(x))
    assert compared > 50_000
    assert ours.glassquant_conversion.fused_relu  # the ReLUs were fused, as torch.ao does


def test_digits_int8_accuracy_close_to_float(data: digits.Digits, mlp: nn.Sequential) -> None:
    q = gq.quantize(copy.deepcopy(mlp), "x86", list(data.x_train.split(200)))
    with torch.no_grad():
        acc_f = digits.accuracy(mlp(data.x_test), data.y_test)
        acc_q = digits.accuracy(q(data.x_test), data.y_test)
    assert acc_f > 0.95
    assert abs(acc_f - acc_q) <= 0.005


def test_quantize_returns_same_object_and_dynamic_preset(data: digits.Digits, mlp: nn.Sequential) -> None:
    m = copy.deepcopy(mlp)
    assert gq.quantize(m, "w8a8-dynamic") is m
    assert all(type(x) is not nn.Linear for x in m.modules())
    with torch.no_grad():
        acc_q = digits.accuracy(m(data.x_test), data.y_test)
    assert acc_q > 0.95
