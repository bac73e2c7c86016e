"""IntLinear, to_integer_only and IntegerModel: conversion, validation, save/load, digits accuracy."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import glassquant as gq
from glassquant.demo import digits
from glassquant.dialects import integer
from glassquant.errors import AccumulatorOverflowError
from glassquant.nn.integer import IntegerModel, IntLinear, to_integer_only
from glassquant.nn.linear import QuantLinear


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def mlp(data: digits.Digits) -> nn.Sequential:
    return digits.digits_mlp(data)


@pytest.fixture(scope="module")
def static_models(data: digits.Digits, mlp: nn.Sequential) -> dict[str, nn.Module]:
    calibration = list(data.x_train.split(200))
    return {p: gq.quantize(copy.deepcopy(mlp), p, calibration) for p in ("x86", "qnnpack")}


def _layer(n: int = 4, k: int = 3, **kw) -> IntLinear:
    args = dict(w_q=torch.ones(n, k, dtype=torch.int8), bias_q=torch.zeros(n, dtype=torch.int32),
                multiplier=torch.full((n,), 2**30, dtype=torch.int32), right_shift=torch.ones(n, dtype=torch.int32),
                x_scale=0.5, x_zero_point=0, y_scale=1.0, y_zero_point=0)
    args.update(kw)
    return IntLinear(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("preset", ["x86", "qnnpack"])
def test_conversion_keeps_the_integers_up_to_one_step(preset: str, data: digits.Digits,
                                                      static_models: dict[str, nn.Module]) -> None:
    q = static_models[preset]
    qi = to_integer_only(copy.deepcopy(q))
    assert not any(isinstance(m, QuantLinear) for m in qi.modules())
    for name in ("0", "2"):
        ql, il = q.get_submodule(name), qi.get_submodule(name)
        assert isinstance(ql, QuantLinear) and isinstance(il, IntLinear)
        assert il.x_zero_point == ql.x_zero_point - 128 and il.y_zero_point == ql.y_zero_point - 128  # exact shift
        assert (il.qmin == il.y_zero_point) == ql.relu and il.qmax == 127
        assert torch.equal(il.w_q, ql.w_q) and il.multiplier.shape == (ql.out_features,)
        real = il.multiplier.double() * 2.0 ** (-31 - il.right_shift.double())
        sw = ql.w_scale.double().expand(ql.out_features)
        assert torch.allclose(real, ql.x_scale * sw / ql.y_scale, rtol=2**-30, atol=0)
        # same uint8 input (shifted): the float32 requantization and the Q31 one agree up to one step
        x_u8 = ql.quantize_input(data.x_test if name == "0" else torch.rand(449, 128) * 5)
        ref = ql.forward_int(x_u8).to(torch.int32) - 128
        got = il.forward_int((x_u8.to(torch.int32) - 128).to(torch.int8)).to(torch.int32)
        diff = (got - ref).abs()
        assert int(diff.max()) <= 1 and int((diff > 0).sum()) <= diff.numel() // 200, (name, int((diff > 0).sum()))


@pytest.mark.parametrize("preset", ["x86", "qnnpack"])
def test_integer_model_accuracy_within_half_a_point_of_float(preset: str, data: digits.Digits, mlp: nn.Sequential,
                                                            static_models: dict[str, nn.Module]) -> None:
    qi = to_integer_only(copy.deepcopy(static_models[preset]))
    chain = IntegerModel.from_module(qi)
    outs = chain.run(chain.quantize_input(data.x_test))
    assert [o.shape for o in outs] == [(449, 128), (449, 10)] and all(o.dtype == torch.int8 for o in outs)
    with torch.no_grad():
        acc_f = digits.accuracy(mlp(data.x_test), data.y_test)
        acc_float_path = digits.accuracy(qi(data.x_test), data.y_test)
    acc_int = digits.accuracy(outs[-1].to(torch.float32), data.y_test)  # argmax of int8 = argmax of reals
    assert acc_f > 0.95
    assert abs(acc_int - acc_f) <= 0.005, (acc_int, acc_f)
    assert acc_float_path == acc_int
    with torch.no_grad():  # the float forward of the converted model is the integer chain, dequantized
        assert torch.equal(qi(data.x_test), chain.dequantize_output(outs[-1]))


def test_to_integer_only_is_in_place_and_atomic(static_models: dict[str, nn.Module]) -> None:
    q = copy.deepcopy(static_models["x86"])
    assert to_integer_only(q) is q and isinstance(q[0], IntLinear)
    q2 = copy.deepcopy(static_models["x86"])
    q2[2].w_zero_point.fill_(1)  # an asymmetric weight grid in the second layer
    with pytest.raises(ValueError, match="2: the integer-only dialect needs symmetric weights"):
        to_integer_only(q2)
    assert isinstance(q2[0], QuantLinear)  # nothing swapped
    single = to_integer_only(copy.deepcopy(static_models["x86"][0]))
    assert isinstance(single, IntLinear)
    with pytest.raises(ValueError, match="no QuantLinear"):
        to_integer_only(nn.Sequential(nn.ReLU()))


def test_save_load_round_trip(tmp_path: Path, data: digits.Digits, static_models: dict[str, nn.Module]) -> None:
    qi = to_integer_only(copy.deepcopy(static_models["qnnpack"]))
    path = tmp_path / "int.safetensors"
    gq.save(qi, path)
    back = gq.load(path)
    assert isinstance(back, nn.Sequential) and isinstance(back[0], IntLinear) and isinstance(back[2], IntLinear)
    for a, b in zip((qi[0], qi[2]), (back[0], back[2]), strict=True):
        assert a.record()[1] == b.record()[1]
        for key, t in a.state_dict().items():
            assert t.dtype == b.state_dict()[key].dtype and torch.equal(t, b.state_dict()[key])
    x_q = IntegerModel.from_module(qi).quantize_input(data.x_test)
    assert all(torch.equal(u, v) for u, v in zip(IntegerModel.from_module(qi).run(x_q),
                                                 IntegerModel.from_module(back).run(x_q), strict=True))


def test_intlinear_validates_every_parameter() -> None:
    assert _layer().forward_int(torch.zeros(2, 3, dtype=torch.int8)).tolist() == [[0] * 4] * 2
    with pytest.raises(TypeError, match="w_q"):
        _layer(w_q=torch.ones(4, 3))
    with pytest.raises(TypeError, match="bias_q"):
        _layer(bias_q=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="multiplier must be 0 or"):
        _layer(multiplier=torch.full((4,), 2**29, dtype=torch.int32))
    with pytest.raises(ValueError, match="right_shift"):
        _layer(right_shift=torch.full((4,), 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="x_zero_point"):
        _layer(x_zero_point=128)
    with pytest.raises(ValueError, match="qmin 5 > qmax 4"):
        _layer(qmin=5, qmax=4)
    with pytest.raises(ValueError, match="y_scale"):
        _layer(y_scale=float("nan"))
    with pytest.raises(ValueError, match="bias_q shape"):
        _layer(bias_q=torch.zeros(3, dtype=torch.int32))
    edge = torch.tensor([0, 2**31 - 1 - 3 * 128, 0, 0], dtype=torch.int32)  # zx = -1: |x - zx| <= 128, 3 products
    assert _layer(bias_q=edge, x_zero_point=-1).accumulator_bound == 2**31 - 1  # exactly fits
    with pytest.raises(AccumulatorOverflowError, match="output 1"):
        _layer(bias_q=edge + torch.tensor([0, 1, 0, 0], dtype=torch.int32), x_zero_point=-1)
    with pytest.raises(ValueError, match="past int32"):  # a real multiplier 2**20 can scale acc past int32
        _layer(right_shift=torch.full((4,), -21, dtype=torch.int32), bias_q=torch.full((4,), 5000, dtype=torch.int32))
    with pytest.raises(ValueError, match="expects"):
        _layer().forward_int(torch.zeros(2, 5, dtype=torch.int8))


def test_integer_model_folds_relu_and_checks_the_chain() -> None:
    a = _layer(n=3, k=2, y_zero_point=-10, y_scale=0.25, bias_q=torch.tensor([-400, 40, 400], dtype=torch.int32))
    b = _layer(n=2, k=3, x_zero_point=-10, x_scale=0.25)
    chain = IntegerModel.from_module(nn.Sequential(nn.Flatten(), a, nn.ReLU(), nn.Dropout(), b, nn.Identity()))
    assert chain.clamps == [(-10, 127), (-128, 127)]
    x_q = torch.randint(-128, 128, (5, 1, 2), dtype=torch.int8)
    y0 = chain.run(x_q)[0]
    assert torch.equal(y0, a.forward_int(x_q.reshape(5, 2)).clamp_min(-10))  # ReLU = max(y_q, zy)
    assert int((a.forward_int(x_q.reshape(5, 2)) < -10).sum()) > 0  # the ReLU did something
    with pytest.raises(ValueError, match="input qparams"):
        IntegerModel.from_module(nn.Sequential(a, _layer(n=2, k=3, x_zero_point=-9, x_scale=0.25)))
    with pytest.raises(ValueError, match="takes 4 inputs"):
        IntegerModel.from_module(nn.Sequential(a, _layer(n=2, k=4, x_zero_point=-10, x_scale=0.25)))
    with pytest.raises(ValueError, match=r"Linear.*no integer-only form"):
        IntegerModel.from_module(nn.Sequential(a, nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="before any IntLinear"):
        IntegerModel.from_module(nn.Sequential(nn.ReLU(), a))


def test_from_quant_linear_bias_overflow_names_the_layer() -> None:
    ql = QuantLinear(torch.ones(2, 4, dtype=torch.int8), torch.tensor([1e-6, 1e-6]), torch.zeros(2, dtype=torch.int32),
                     torch.tensor([1e6, 0.0]), 1e-4, 0, 1.0, 0, name="fc9")
    with pytest.raises(ValueError, match=r"fc9.*outside int32"):
        IntLinear.from_quant_linear(ql)
    assert integer.NAME == "glassquant"
