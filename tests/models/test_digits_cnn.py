"""The digits CNN: glassquant's integer conversion equals torch.ao eager PTQ, layer by layer.

Reference: torch.ao eager post-training quantization on x86 (QuantStub / DeQuantStub, conv-BN-ReLU
fused with ``torch.ao.quantization.fuse_modules``, min/max observers: per-channel symmetric int8
weights, uint8 activations with reduce_range). glassquant's side is written out here: BatchNorms
folded with ``glassquant.fold.fuse_modules``, every layer's input and output range observed with
``glassquant.observers.MinMaxObserver``, layers built with ``QuantConv2d.from_float`` /
``QuantLinear.from_float`` and run on integers. Every output integer of every layer is compared
with ``torch.equal`` on the held-out split and on inputs outside the calibrated range; W8A8
accuracy must stay within 0.5 points of float.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from glassquant.demo import digits
from glassquant.demo.digits_cnn import CONV_BN_RELU, as_images, digits_cnn, make_cnn, train_cnn
from glassquant.fold import fuse_modules
from glassquant.interop import torch_ao
from glassquant.nn.conv import QuantConv2d
from glassquant.nn.linear import WEIGHT_PER_CHANNEL, QuantLinear
from glassquant.observers import MinMaxObserver
from glassquant.scheme import QScheme

from gq_testing import needs_torch_ao

ENGINE = "x86"
ACTIVATION = QScheme(bits=7, signed=False)  # x86's default: reduce_range, uint8 in [0, 127]
LAYERS = ["conv1", "conv2", "fc"]


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def cnn(data: digits.Digits) -> nn.Sequential:
    return digits_cnn(data)


def calibration(data: digits.Digits) -> list[Tensor]:
    return list(as_images(data.x_train).split(200))


def glassquant_ptq(model: nn.Sequential, batches: list[Tensor]) -> dict[str, QuantConv2d | QuantLinear]:
    """Fold BN, observe each layer's input and (post-ReLU) output, build the integer layers."""
    model = copy.deepcopy(model).eval()
    fused = fuse_modules(model, CONV_BN_RELU)
    assert fused == ["conv1", "conv2"]
    out_module = {"conv1": "relu1", "conv2": "relu2", "fc": "fc"}
    observers = {n: (MinMaxObserver(ACTIVATION, f"{n}: input"), MinMaxObserver(ACTIVATION, f"{n}: output"))
                 for n in LAYERS}
    handles = []
    for n, (obs_in, obs_out) in observers.items():
        handles.append(model.get_submodule(n).register_forward_pre_hook(lambda m, a, o=obs_in: o.update(a[0])))
        handles.append(model.get_submodule(out_module[n]).register_forward_hook(
            lambda m, a, y, o=obs_out: o.update(y)))
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    layers: dict[str, QuantConv2d | QuantLinear] = {}
    for n, (obs_in, obs_out) in observers.items():
        (sx, zx), (sy, zy) = obs_in.qparams(), obs_out.qparams()
        cls = QuantConv2d if n.startswith("conv") else QuantLinear
        layers[n] = cls.from_float(model.get_submodule(n), float(sx), int(zx), float(sy), int(zy),
                                   weight_scheme=WEIGHT_PER_CHANNEL, relu=n in fused, engine=ENGINE, name=n)
    return layers


def glassquant_integers(layers: dict[str, QuantConv2d | QuantLinear], x: Tensor) -> dict[str, Tensor]:
    """The input and every layer's output integers, layer feeding layer on integers only."""
    conv1, conv2, fc = layers["conv1"], layers["conv2"], layers["fc"]
    assert (conv2.x_scale, conv2.x_zero_point) == (conv1.y_scale, conv1.y_zero_point)
    assert (fc.x_scale, fc.x_zero_point) == (conv2.y_scale, conv2.y_zero_point)
    x_q = conv1.quantize_input(x)  # (n, 1, 8, 8) uint8
    y1 = conv1.forward_int(x_q)  # (n, 16, 8, 8)
    y2 = conv2.forward_int(y1)  # (n, 32, 4, 4)
    return {"input": x_q, "conv1": y1, "conv2": y2, "fc": fc.forward_int(y2.flatten(1))}  # fc: (n, 10)


def torch_ao_ptq(model: nn.Sequential, batches: list[Tensor]) -> nn.Module:
    """torch.ao eager PTQ of a copy: stubs, conv-BN-ReLU fused the torch way, min/max observers."""
    import torch.ao.quantization as tq

    with torch_ao.engine(ENGINE):
        m = nn.Sequential(tq.QuantStub(), copy.deepcopy(model).eval(), tq.DeQuantStub()).eval()
        tq.fuse_modules(m, [[f"1.{n}" for n in group] for group in CONV_BN_RELU], inplace=True)
        m.qconfig = torch_ao.minmax_qconfig(ENGINE, per_channel=True, reduce_range=True)
        tq.prepare(m, inplace=True)
        with torch.no_grad():
            for b in batches:
                m(b)
        tq.convert(m, inplace=True)
    return m


def torch_ao_integers(m: nn.Module, x: Tensor) -> dict[str, Tensor]:
    outs: dict[str, Tensor] = {}
    names = {"0": "input", "1.conv1": "conv1", "1.conv2": "conv2", "1.fc": "fc"}
    handles = [m.get_submodule(k).register_forward_hook(lambda mod, a, y, n=n: outs.__setitem__(n, y.int_repr()))
               for k, n in names.items()]
    with torch_ao.engine(ENGINE), torch.no_grad():
        m(x)
    for h in handles:
        h.remove()
    return outs


@needs_torch_ao
def test_cnn_integers_equal_torch_ao_eager_ptq(data: digits.Digits, cnn: nn.Sequential) -> None:
    batches = calibration(data)
    ours, ao = glassquant_ptq(cnn, batches), torch_ao_ptq(cnn, batches)
    assert type(ao[1].conv1).__name__ == "ConvReLU2d" and ours["conv1"].relu
    g = torch.Generator().manual_seed(0)
    inputs = [as_images(data.x_test), torch.rand(300, 1, 8, 8, generator=g) * 3 - 1]  # held out; out of range
    compared = 0
    for x in inputs:
        mine, theirs = glassquant_integers(ours, x), torch_ao_integers(ao, x)
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), name
            compared += mine[name].numel()
    assert compared > 500_000


def test_w8a8_accuracy_within_half_a_point(data: digits.Digits, cnn: nn.Sequential) -> None:
    layers = glassquant_ptq(cnn, calibration(data))
    x = as_images(data.x_test)
    with torch.no_grad():
        acc_float = digits.accuracy(cnn(x), data.y_test)
    logits_q = glassquant_integers(layers, x)["fc"]  # uint8: argmax as of the dequantized logits
    acc_q = float((logits_q.argmax(dim=1) == data.y_test).float().mean())
    assert acc_float >= 0.96
    assert abs(acc_float - acc_q) <= 0.005, (acc_float, acc_q)


def test_cnn_is_deterministic_and_cached(data: digits.Digits, cnn: nn.Sequential) -> None:
    """A fresh training gives the cached weights bit for bit; the cache is a safetensors file."""
    fresh = train_cnn(data)
    for (k, a), b in zip(cnn.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert list(digits.cache_dir().glob("digits-cnn-*.safetensors"))
    assert not cnn.training and list(dict(make_cnn().named_children())) == [
        "conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "flatten", "fc"]
