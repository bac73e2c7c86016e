"""Exporting glassquant models to ONNX (QOperator and QDQ) and running them in ONNX Runtime.

The digits MLP and CNN, quantized by glassquant with the static x86 preset, exported in both
forms: every layer's output integers computed by ORT equal the onnx dialect's (and differ from
glassquant's own x86 integers exactly where ORT's int32 bias rounding does); the float output
is as accurate as the float model. Bad inputs raise ValueError naming the layer or input.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
onnx = pytest.importorskip("onnx", reason="onnx not installed")

import glassquant as gq  # noqa: E402
from glassquant.demo import digits, digits_cnn  # noqa: E402
from glassquant.dialects import fbgemm  # noqa: E402
from glassquant.dialects import onnx as dialect  # noqa: E402
from glassquant.interop import onnxruntime as gox  # noqa: E402
from glassquant.nn.linear import DynamicQuantLinear, QuantLinear  # noqa: E402


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def mlp(data: digits.Digits) -> nn.Sequential:
    return digits.digits_mlp(data)


@pytest.fixture(scope="module")
def qmlp(data: digits.Digits, mlp: nn.Sequential) -> nn.Module:
    return gq.quantize(copy.deepcopy(mlp), "x86", list(data.x_train.split(200)))


@pytest.mark.parametrize("form", gox.FORMS)
def test_digits_mlp_integers_equal_onnx_dialect(tmp_path, form: str, data: digits.Digits, qmlp: nn.Module) -> None:
    path = tmp_path / f"mlp-{form}.onnx"
    gox.export_onnx(qmlp, path, form=form, layer_outputs=True)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    g = torch.Generator().manual_seed(0)
    compared = 0
    for x in (data.x_test, torch.rand(300, 64, generator=g) * 3 - 1):  # held out; outside the calibrated range
        ort_out = gox.run_onnx_outputs(path, x)
        # the onnx dialect, step by step: QuantizeLinear, QGemm (+ ReLU clamp), QGemm, DequantizeLinear
        l0, l2 = qmlp[0], qmlp[2]
        x_q = dialect.quantize(x, l0.x_scale, l0.x_zero_point, torch.uint8)
        y0 = dialect.linear(x_q, l0.x_scale, l0.x_zero_point, l0.w_q, l0.w_scale, l0.w_zero_point, l0.bias,
                            l0.y_scale, l0.y_zero_point, relu=l0.relu)
        assert l2.x_scale == l0.y_scale and l2.x_zero_point == l0.y_zero_point  # no requantization between
        y2 = dialect.linear(y0, l2.x_scale, l2.x_zero_point, l2.w_q, l2.w_scale, l2.w_zero_point, l2.bias,
                            l2.y_scale, l2.y_zero_point)
        assert torch.equal(ort_out["layer:0"], y0) and torch.equal(ort_out["layer:2"], y2)
        assert torch.equal(ort_out["y"], dialect.dequantize(y2, l2.y_scale, l2.y_zero_point))
        assert torch.equal(gox.run_onnx_model(path, x), ort_out["y"])
        expected = gox.dialect_outputs(qmlp, x)
        assert expected.keys() == ort_out.keys()
        assert all(torch.equal(expected[k], ort_out[k]) for k in expected)
        compared += y0.numel() + y2.numel()
    assert compared >= 100_000
    ops = gox.optimized_op_types(path)  # QDQ groups fused into QGemm at the default level
    assert ops.count("QGemm") == 2 and "Gemm" not in ops


def test_onnx_integers_differ_from_x86_only_by_bias_rounding(data: digits.Digits, qmlp: nn.Module) -> None:
    """glassquant's x86 layers keep the float bias (fbgemm); ORT rounds it to int32 first. On the
    same accumulators the two requantizations differ by one step on a few outputs, and not at all
    without the bias (the multiplier ``f32(f32(sx*sw)/sy)`` is the same)."""
    layer = qmlp[0]
    x_q = dialect.quantize(data.x_test, layer.x_scale, layer.x_zero_point, torch.uint8)
    acc = layer.accumulate(x_q, fast=False)
    args = (layer.x_scale, layer.w_scale)
    ort_y = gox.run_onnx_outputs(gox.export_onnx(qmlp, layer_outputs=True), data.x_test)["layer:0"]
    ours = fbgemm.requantize(acc, *args, layer.bias, layer.y_scale, layer.y_zero_point, layer.relu)
    diff = ours.int() - ort_y.int()
    assert 0 < int((diff != 0).sum()) < 100 and int(diff.abs().max()) == 1
    assert torch.equal(fbgemm.requantize(acc, *args, None, layer.y_scale, layer.y_zero_point, layer.relu),
                       dialect.requantize(acc, *args, None, layer.y_scale, layer.y_zero_point, layer.relu))


def test_exported_model_accuracy_close_to_float(data: digits.Digits, mlp: nn.Sequential, qmlp: nn.Module) -> None:
    with torch.no_grad():
        y_float = mlp(data.x_test)
    acc_float = digits.accuracy(y_float, data.y_test)
    for form in gox.FORMS:
        y_ort = gox.run_onnx_model(gox.export_onnx(qmlp, form=form), data.x_test)
        assert abs(digits.accuracy(y_ort, data.y_test) - acc_float) <= 0.01
        agree = float((y_ort.argmax(1) == y_float.argmax(1)).float().mean())
        sqnr = 10 * torch.log10(y_float.pow(2).sum() / (y_float - y_ort).pow(2).sum())
        assert agree >= 0.98 and float(sqnr) > 25, (form, agree, float(sqnr))


@pytest.fixture(scope="module")
def cnn_pair(data: digits.Digits) -> tuple[nn.Module, nn.Module]:
    """The float CNN and its x86 static quantization (calibrated on 400 training images)."""
    cnn = digits_cnn.digits_cnn(data)
    calibration = [digits_cnn.as_images(b) for b in data.x_train[:400].split(200)]
    return cnn, gq.quantize(copy.deepcopy(cnn), "x86", calibration)


@pytest.mark.parametrize("form", gox.FORMS)
def test_digits_cnn_integers_equal_onnx_dialect(form: str, data: digits.Digits,
                                                cnn_pair: tuple[nn.Module, nn.Module]) -> None:
    cnn, q = cnn_pair
    x = digits_cnn.as_images(data.x_test)
    proto = gox.export_onnx(q, form=form, input_shape=(1, 8, 8), layer_outputs=True)
    ort_out, expected = gox.run_onnx_outputs(proto, x), gox.dialect_outputs(q, x)
    assert set(ort_out) == {"y", "layer:conv1", "layer:conv2", "layer:fc"} == set(expected)
    assert all(torch.equal(expected[k], ort_out[k]) for k in expected)
    with torch.no_grad():
        assert abs(digits.accuracy(ort_out["y"], data.y_test) - digits.accuracy(cnn(x), data.y_test)) <= 0.01
    assert "QLinearConv" in gox.optimized_op_types(proto) and "Conv" not in gox.optimized_op_types(proto)


def _layer(g: torch.Generator, k: int, n: int, x_qp: tuple[float, int], y_qp: tuple[float, int], relu: bool,
           bias: bool = True) -> QuantLinear:
    w_q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    b = torch.randn(n, generator=g) if bias else None
    return QuantLinear(w_q, torch.rand(n, generator=g) * 0.01 + 1e-3, torch.zeros(n, dtype=torch.int32), b,
                       *x_qp, *y_qp, relu=relu)


def test_chain_requantizes_between_layers_and_mixes_dynamic(tmp_path) -> None:
    """Input qparams that differ from the previous output (DQ -> Q), an unfused ReLU on uint8 with a
    non-zero zero point (integer Clip), a fused ReLU with zy > 0, no bias (QLinearMatMul), a dynamic
    layer between static ones, and a float ReLU."""
    g = torch.Generator().manual_seed(1)
    static = nn.Sequential(_layer(g, 20, 30, (0.05, 128), (0.2, 100), False), nn.ReLU(),
                           _layer(g, 30, 25, (0.15, 90), (0.3, 40), True, bias=False), nn.Flatten(),
                           _layer(g, 25, 8, (0.3, 40), (0.5, 128), False))
    dynamic = nn.Sequential(*static[:3], DynamicQuantLinear(torch.randint(-128, 128, (12, 25), generator=g,
                                                                          dtype=torch.int8),
                                                            torch.tensor([0.01]), torch.tensor([0]),
                                                            torch.randn(12, generator=g), name="dyn"),
                            nn.ReLU(), _layer(g, 12, 6, (0.02, 3), (0.1, 128), True))
    x = torch.randn(500, 20, generator=g) * 3
    for model, forms in ((static, gox.FORMS), (dynamic, ("qoperator",))):
        for form in forms:
            path = tmp_path / f"chain-{form}.onnx"
            gox.export_onnx(model, path, form=form, layer_outputs=True)
            ort_out, expected = gox.run_onnx_outputs(path, x), gox.dialect_outputs(model, x)
            assert ort_out.keys() == expected.keys()
            assert all(torch.equal(expected[k], ort_out[k]) for k in expected), form
    assert "Clip" in [n.op_type for n in gox.export_onnx(static).graph.node]


def test_bad_inputs_name_the_layer(qmlp: nn.Module, data: digits.Digits) -> None:
    with pytest.raises(ValueError, match=r"layer '1' \(Linear\)"):
        gox.export_onnx(nn.Sequential(qmlp[0], nn.Linear(128, 10)))
    with pytest.raises(ValueError, match="0: expects input"):
        gox.export_onnx(qmlp, input_shape=(63,))
    with pytest.raises(ValueError, match="0: expects input"):
        gox.export_onnx(nn.Sequential(qmlp[0]), input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="f: only Flatten"):
        gox.export_onnx(nn.Sequential(OrderedDict([("0", qmlp[0]), ("f", nn.Flatten(0))])))
    with pytest.raises(ValueError, match="form must be"):
        gox.export_onnx(qmlp, form="qlinear")
    with pytest.raises(ValueError, match="empty model"):
        gox.export_onnx(nn.Sequential())
    dyn = DynamicQuantLinear(qmlp[0].w_q, qmlp[0].w_scale, qmlp[0].w_zero_point, None, name="dyn0")
    with pytest.raises(ValueError, match="dyn0: ONNX has no QDQ form"):
        gox.layer_to_onnx(dyn, form="qdq")
    with pytest.raises(ValueError, match="layer_to_onnx takes"):
        gox.layer_to_onnx(nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"input must be torch\.uint8"):
        gox.run_layer(qmlp[0], data.x_test)
    proto = gox.export_onnx(qmlp)
    with pytest.raises(ValueError, match="input 'x': model expects shape"):
        gox.run_onnx_model(proto, data.x_test[:, :63])
    with pytest.raises(ValueError, match=r"input 'x': model expects torch\.float32"):
        gox.run_onnx_model(proto, (data.x_test * 16).to(torch.uint8))
    with pytest.raises(ValueError, match="level must be"):
        gox.run_onnx_model(proto, data.x_test, level="max")
    big_bias = QuantLinear(qmlp[0].w_q, qmlp[0].w_scale, qmlp[0].w_zero_point, torch.full((128,), 1e9),
                           1e-3, 0, 1.0, 0, name="huge")
    with pytest.raises(ValueError, match="huge: bias: quantized bias leaves int32"):
        gox.layer_to_onnx(big_bias)



def test_onnx_engine_model_equals_ort_end_to_end(data: digits.Digits, mlp: nn.Sequential,
                                                 cnn_pair: tuple[nn.Module, nn.Module]) -> None:
    """With engine ``"onnx"`` (the ``onnx`` preset), glassquant's own forward pass (quantize,
    integer layers, dequantize; weights by the ORT tool's rule) is ORT's, float for float."""
    from glassquant.config import PRESETS, DynamicConfig

    static = PRESETS["onnx"]
    x_img = digits_cnn.as_images(data.x_test)
    models = [(gq.quantize(copy.deepcopy(mlp), static, list(data.x_train.split(200))), data.x_test, None),
              (gq.quantize(copy.deepcopy(mlp), DynamicConfig("onnx")), data.x_test, None),
              (gq.quantize(copy.deepcopy(cnn_pair[0]), static, [digits_cnn.as_images(data.x_train[:400])]), x_img,
               (1, 8, 8))]
    for q, x, shape in models:
        ort_out = gox.run_onnx_outputs(gox.export_onnx(q, input_shape=shape, layer_outputs=True), x)
        with torch.no_grad():
            assert torch.equal(q(x), ort_out["y"])
        for name, y_q in gq.integer_outputs(q, x).items():
            assert torch.equal(y_q, ort_out[gox.LAYER_PREFIX + name])


def test_single_unsupported_module_and_bad_ranges() -> None:
    with pytest.raises(ValueError, match=r"layer 'Linear' \(Linear\) cannot be exported"):
        gox.export_onnx(nn.Linear(3, 4), input_shape=(3,))
    with pytest.raises(ValueError, match="NaN"):
        dialect.choose_qparams_static(float("nan"), 1.0, 0, 255)
    with pytest.raises(ValueError, match="NaN or Inf"):
        dialect.choose_qparams(float("-inf"), 1.0)
    with pytest.raises(ValueError, match="quantize: x"):
        dialect.quantize(torch.tensor([float("nan")]), 1.0, 0, torch.uint8)
