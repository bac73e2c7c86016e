"""torch.ao's *default* qconfig PTQ (HistogramObserver activations) reproduced integer for integer
by ``glassquant.quantize(model, "<engine>-default", calibration)`` on the digits MLP and CNN."""

from __future__ import annotations

import copy

import pytest
import torch

import glassquant as gq
from glassquant.demo import digits, digits_cnn
from glassquant.interop import torch_ao

from gq_testing import needs_torch_ao

pytestmark = needs_torch_ao


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits_split()


@pytest.mark.parametrize("engine", ["x86", "fbgemm", "qnnpack", "onednn"])
@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_default_qconfig_ptq_reproduced(engine: str, which: str, data: digits.Digits) -> None:
    model, to_input = ((digits.digits_mlp(data), lambda x: x) if which == "mlp"
                       else (digits_cnn.digits_cnn(data), digits_cnn.as_images))
    calibration = [to_input(b) for b in data.x_train.split(256)]
    ao = torch_ao.eager_ptq(model, calibration, engine, default_qconfig=True)
    ours = gq.quantize(copy.deepcopy(model), f"{engine}-default", calibration, progress=False)
    g = torch.Generator().manual_seed(1)
    for x in (to_input(data.x_test), to_input(torch.rand(200, 64, generator=g) * 2 - 0.5)):
        ints_ours = gq.integer_outputs(ours, x)
        ints_ao = torch_ao.integer_outputs(ao, x, engine)
        assert sorted(ints_ours) == sorted(ints_ao) and len(ints_ours) == (2 if which == "mlp" else 3)
        for name, q in ints_ours.items():
            assert torch.equal(q, ints_ao[name]), (engine, which, name, int((q != ints_ao[name]).sum()))
        with torch.no_grad(), torch_ao.engine(engine):
            assert torch.equal(ours(x), ao(x))
    if which == "cnn":
        res = ours.glassquant_conversion
        assert res.folded_bn == ["conv1", "conv2"] and res.fused_relu == ["conv1", "conv2"]
