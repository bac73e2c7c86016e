"""glassquant models exported to .tflite (interop/litert.py), run in LiteRT, equal to the tflite dialect."""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert) is not installed")
tflite = pytest.importorskip("tflite", reason="the tflite flatbuffer package is not installed")

import glassquant as gq  # noqa: E402
from glassquant.demo import digits, digits_cnn  # noqa: E402
from glassquant.dialects import tflite as dialect  # noqa: E402
from glassquant.interop import litert  # noqa: E402
from glassquant.nn.conv import QuantConv2d  # noqa: E402
from glassquant.nn.linear import DynamicQuantLinear, QuantLinear  # noqa: E402
from glassquant.rounding import round_half_away  # noqa: E402

KERNELS = ("xnnpack", "reference", "optimized")


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits_split()


@pytest.fixture(scope="module")
def mlp(data: digits.Digits) -> nn.Sequential:
    return digits.digits_mlp(data)


@pytest.fixture(scope="module", params=["x86", "qnnpack"])
def qmlp(request: pytest.FixtureRequest, data: digits.Digits, mlp: nn.Sequential) -> nn.Sequential:
    """The digits MLP quantized by glassquant (x86: per-channel weights, 7-bit activations; qnnpack: per tensor)."""
    return gq.quantize(copy.deepcopy(mlp), request.param, list(data.x_train.split(200)))


def builtin_tensors(model: bytes, x: torch.Tensor, kernel: str) -> dict[str, np.ndarray]:
    """Every tensor of a run with builtin kernels (no delegate), by name."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if kernel == "reference" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_content=model, experimental_op_resolver_type=resolver,
                     experimental_preserve_all_tensors=True, num_threads=1)
    it.resize_tensor_input(0, list(x.shape))
    it.allocate_tensors()
    it.set_tensor(0, x.numpy())
    it.invoke()
    return {t["name"]: it.get_tensor(t["index"]) for t in it.get_tensor_details()}


@pytest.mark.parametrize("kernel", KERNELS)
def test_digits_mlp_in_litert_equals_the_dialect(qmlp: nn.Sequential, data: digits.Digits, kernel: str) -> None:
    model = litert.export_tflite(qmlp)
    y = litert.run_tflite_model(model, data.x_test, kernel)
    expected, ints = litert.dialect_forward(qmlp, data.x_test, kernel)
    assert y.dtype == expected.dtype == torch.float32 and y.shape == (len(data.x_test), 10)
    assert torch.equal(y.view(torch.int32), expected.view(torch.int32))  # bit for bit, so the int8 logits too
    if kernel != "xnnpack":  # the builtin kernels keep every intermediate integer tensor for inspection
        tensors = builtin_tensors(model, data.x_test, kernel)
        compared = 0
        for name, q in ints.items():
            assert torch.equal(torch.from_numpy(tensors[f"{name}/output"]), q), name
            compared += q.numel()
        assert compared >= 449 * (64 + 128 + 10)


def test_digits_mlp_accuracy_close_to_float(qmlp: nn.Sequential, mlp: nn.Sequential, data: digits.Digits) -> None:
    with torch.no_grad():
        acc_float = digits.accuracy(mlp(data.x_test), data.y_test)
    model = litert.export_tflite(qmlp)
    for kernel in KERNELS:
        acc_tflite = digits.accuracy(litert.run_tflite_model(model, data.x_test, kernel), data.y_test)
        assert acc_float > 0.95 and abs(acc_tflite - acc_float) <= 0.01, (kernel, acc_tflite, acc_float)


def test_export_writes_a_flatbuffer_with_the_layer_integers(qmlp: nn.Sequential, data: digits.Digits,
                                                            tmp_path) -> None:
    path = tmp_path / "digits.tflite"
    data_bytes = litert.export_tflite(qmlp, path)
    assert path.read_bytes() == data_bytes and data_bytes[4:8] == b"TFL3"
    assert torch.equal(litert.run_tflite_model(path, data.x_test[:7]),
                       litert.run_tflite_model(data_bytes, data.x_test[:7]))
    m = tflite.Model.GetRootAs(data_bytes, 0)
    sg = m.Subgraphs(0)
    codes = [m.OperatorCodes(sg.Operators(i).OpcodeIndex()).BuiltinCode() for i in range(sg.OperatorsLength())]
    bo = tflite.BuiltinOperator
    assert codes == [bo.QUANTIZE, bo.FULLY_CONNECTED, bo.FULLY_CONNECTED, bo.DEQUANTIZE]
    tensors = {sg.Tensors(i).Name().decode(): sg.Tensors(i) for i in range(sg.TensorsLength())}
    first = qmlp[0]
    t_in = tensors["input/quantize/output"]
    assert t_in.Type() == tflite.TensorType.INT8
    assert t_in.Quantization().ZeroPoint(0) == first.x_zero_point - 128
    assert np.float32(t_in.Quantization().Scale(0)) == np.float32(first.x_scale)
    w = tensors["0/weights"]
    raw = m.Buffers(w.Buffer()).DataAsNumpy().view(np.int8).reshape(first.w_q.shape)
    assert np.array_equal(raw, first.w_q.numpy())
    sw = first.w_scale if first.w_scale.numel() > 1 else float(first.w_scale)
    bias = m.Buffers(tensors["0/bias"].Buffer()).DataAsNumpy().view(np.int32)
    assert np.array_equal(bias, dialect.quantize_bias(first.bias, first.x_scale, sw).numpy())
    assert w.Quantization().ScaleLength() == first.w_scale.numel()


def test_digits_cnn_export_pad_reshape_and_flatten_order(data: digits.Digits) -> None:
    """conv1 (3x3, pad 1: SAME), conv2 (stride 2, pad 1: PAD + VALID), Flatten (NHWC -> RESHAPE, FC
    columns permuted from NCHW order), fc: every kernel equals the dialect, accuracy as float."""
    cnn = digits_cnn.digits_cnn(data)
    images = digits_cnn.as_images
    q = gq.quantize(copy.deepcopy(cnn), "x86", [images(b) for b in data.x_train[:600].split(200)])
    model = litert.export_tflite(q, input_shape=(1, 8, 8))
    steps = [s.kind for s in litert.model_steps(q, (1, 8, 8))[1]]
    assert steps == ["quantize", "conv", "pad", "conv", "reshape", "fc", "dequantize"]
    x = images(data.x_test)
    with torch.no_grad():
        acc_float = digits.accuracy(cnn(x), data.y_test)
    for kernel in KERNELS:
        y = litert.run_tflite_model(model, x, kernel)
        expected, _ = litert.dialect_forward(q, x, kernel, input_shape=(1, 8, 8))
        assert torch.equal(y.view(torch.int32), expected.view(torch.int32)), kernel
        assert abs(digits.accuracy(y, data.y_test) - acc_float) <= 0.015


def _linear(g: torch.Generator, k: int = 48, n: int = 40, per_channel: bool = True, name: str = "fc") -> QuantLinear:
    w_q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    w_scale = torch.rand(n if per_channel else 1, generator=g) * 0.01 + 1e-3
    bias = torch.randn(n, generator=g)
    return QuantLinear(w_q, w_scale, torch.zeros_like(w_scale, dtype=torch.int32), bias, 0.02, 131, 0.15, 120,
                       relu=False, name=name)


@pytest.mark.parametrize("kernel", KERNELS)
def test_run_layer_linear_uint8_and_int8(kernel: str) -> None:
    g = torch.Generator().manual_seed(30)
    for per_channel in (False, True):
        layer = _linear(g, per_channel=per_channel)
        x_q = torch.randint(0, 256, (300, 48), generator=g, dtype=torch.uint8)
        y = litert.run_layer(layer, x_q, kernel)
        sw = layer.w_scale if per_channel else float(layer.w_scale)
        expected = dialect.linear((x_q.to(torch.int16) - 128).to(torch.int8), 0.02, 131 - 128, layer.w_q, sw,
                                  layer.bias, 0.15, 120 - 128, kernel=kernel)
        assert y.dtype == torch.uint8 and torch.equal((y.to(torch.int16) - 128).to(torch.int8), expected)
        y8 = litert.run_layer(layer, (x_q.to(torch.int16) - 128).to(torch.int8), kernel)
        assert y8.dtype == torch.int8 and torch.equal(y8, expected)


@pytest.mark.parametrize("padding,stride,dilation", [(1, 1, 1), (1, 2, 1), (0, 1, 2), (2, 1, 1)])
def test_run_layer_conv2d(padding: int, stride: int, dilation: int) -> None:
    g = torch.Generator().manual_seed(31)
    w_q = torch.randint(-127, 128, (12, 5, 3, 3), generator=g, dtype=torch.int8)
    w_scale = torch.rand(12, generator=g) * 0.01 + 1e-3
    layer = QuantConv2d(w_q, w_scale, torch.zeros(12, dtype=torch.int32), torch.randn(12, generator=g), 0.03, 100,
                        0.2, 90, stride=stride, padding=padding, dilation=dilation, relu=True, name="conv")
    x_q = torch.randint(0, 256, (3, 5, 9, 10), generator=g, dtype=torch.uint8)
    hw = (9, 10)
    kinds = [s.kind for s in litert.layer_step(layer, (*hw, 5))]
    for kernel in KERNELS:
        y = litert.run_layer(layer, x_q, kernel)
        x8 = (x_q.to(torch.int16) - 128).to(torch.int8)
        if kinds[0] == "pad":
            x8 = torch.nn.functional.pad(x8, (padding,) * 4, value=100 - 128)
        pad = "same" if kinds == ["conv"] and padding else "valid"
        expected = dialect.conv2d(x8.permute(0, 2, 3, 1), 0.03, -28, w_q.permute(0, 2, 3, 1), w_scale, layer.bias,
                                  0.2, -38, (stride, stride), pad, (dilation, dilation), True, kernel)
        assert y.shape == layer.forward_int(x_q).shape
        assert torch.equal((y.to(torch.int16) - 128).to(torch.int8), expected.permute(0, 3, 1, 2)), kernel


def test_quantize_bias_is_the_nearest_integer_ties_away() -> None:
    """Exact: |bias_q * sx * sw - b| <= sx * sw / 2 (checked with Fractions), ties away from zero.
    A float32 formula, round_half_away(b / f32(sx * sw)), misses biases one ulp from a tie."""
    g = torch.Generator().manual_seed(32)
    sx = 0.0123
    sw = (torch.rand(2000, generator=g) * 0.02 + 1e-5).float()
    unit = float(np.float32(sx)) * sw.double()  # exact product of the two float32 scales
    k = torch.randint(-3000, 3000, (2000,), generator=g).double()
    b = ((k + 0.5) * unit).float()  # near ties, then one float32 ulp up or down
    up = torch.arange(2000) % 2 == 0
    b = torch.where(up, torch.nextafter(b, torch.tensor(float("inf"))), torch.nextafter(b, torch.tensor(float("-inf"))))
    bq = dialect.quantize_bias(b, sx, sw)
    for i in range(0, 2000, 7):
        unit_i = Fraction(float(np.float32(sx))) * Fraction(float(sw[i]))
        assert abs(int(bq[i]) * unit_i - Fraction(float(b[i]))) <= unit_i / 2
    naive = round_half_away(b / (torch.tensor(np.float32(sx)) * sw)).to(torch.int32)
    assert int((naive != bq).sum()) > 20  # the float32 quotient rounds onto the tie and picks the wrong side
    ties = torch.tensor([2.5, -2.5, 0.5, -0.5, 7.5]) * 0.125  # sx * sw = 0.125: exact halves
    assert dialect.quantize_bias(ties, 0.25, 0.5).tolist() == [3, -3, 1, -1, 8]
    assert torch.round(ties / 0.125).tolist() == [2, -2, 0, 0, 8]  # half-to-even would differ
    with pytest.raises(ValueError, match=r"big: .*int32"):
        dialect.quantize_bias(torch.tensor([1e6]), 1e-3, 1e-3, name="big")


def test_weights_of_minus_128_keep_clamp_error() -> None:
    g = torch.Generator().manual_seed(33)
    layer = _linear(g)
    layer.w_q[0, :5] = -128
    x_q = torch.randint(0, 256, (64, 48), generator=g, dtype=torch.uint8)
    x8 = (x_q.to(torch.int16) - 128).to(torch.int8)
    for kernel in KERNELS:  # kept: LiteRT on x86 computes -128 exactly
        expected = dialect.linear(x8, 0.02, 3, layer.w_q, layer.w_scale, layer.bias, 0.15, -8, kernel=kernel)
        assert torch.equal(litert.run_layer(layer, x8, kernel), expected)
    clamped = litert.layer_to_tflite(layer, on_weight_min="clamp")
    sg = tflite.Model.GetRootAs(clamped, 0)
    w_t = sg.Subgraphs(0).Tensors(1)
    raw = sg.Buffers(w_t.Buffer()).DataAsNumpy().view(np.int8)
    assert raw.min() == -127 and int((torch.from_numpy(raw.copy()) != layer.w_q.reshape(-1)).sum()) == 5
    got = torch.from_numpy(litert.run(clamped, [x8[:1].numpy()], "reference")[0])
    assert torch.equal(got, dialect.linear(x8[:1], 0.02, 3, layer.w_q.clamp(min=-127), layer.w_scale, layer.bias,
                                           0.15, -8, kernel="reference"))
    with pytest.raises(ValueError, match="fc: 5 weight"):
        litert.layer_to_tflite(layer, on_weight_min="error")


def test_bad_inputs_name_the_layer() -> None:
    g = torch.Generator().manual_seed(34)
    a, b = _linear(g, 48, 40, name="first"), _linear(g, 40, 10, name="second")
    with pytest.raises(ValueError, match="second: input qparams"):
        litert.export_tflite(nn.Sequential(a, b))  # a's output qparams (0.15, 120) != b's input (0.02, 131)
    with pytest.raises(ValueError, match="no glassquant"):
        litert.export_tflite(nn.Sequential(nn.Flatten()))
    with pytest.raises(ValueError, match="0: Linear cannot be exported"):
        litert.export_tflite(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="1: Sigmoid cannot be exported"):
        litert.export_tflite(nn.Sequential(a, nn.Sigmoid()))
    with pytest.raises(ValueError, match=r"nn.Sequential"):
        litert.export_tflite(a)
    with pytest.raises(ValueError, match="ReLU must follow"):
        litert.export_tflite(nn.Sequential(nn.ReLU(), a))
    asym = QuantLinear(a.w_q, a.w_scale, torch.full((40,), 2, dtype=torch.int32), a.bias, 0.02, 131, 0.15, 120,
                       name="asym")
    with pytest.raises(ValueError, match=r"asym: .*zero point"):
        litert.layer_to_tflite(asym)
    dyn = DynamicQuantLinear(a.w_q, a.w_scale, torch.zeros(40, dtype=torch.int32), None, name="dyn")
    with pytest.raises(ValueError, match=r"dyn: DynamicQuantLinear .*only QuantLinear and QuantConv2d"):
        litert.export_tflite(nn.Sequential(dyn))
    grouped = QuantConv2d(torch.ones(4, 1, 3, 3, dtype=torch.int8), torch.ones(4) * 0.1,
                          torch.zeros(4, dtype=torch.int32), None, 0.1, 0, 0.1, 0, groups=4, name="dw")
    with pytest.raises(ValueError, match="dw: grouped"):
        litert.layer_to_tflite(grouped, (8, 8))
    with pytest.raises(ValueError, match=r"dw: .*input_shape"):
        litert.export_tflite(nn.Sequential(grouped))
    with pytest.raises(ValueError, match="dw: layer_to_tflite needs input_hw"):
        litert.layer_to_tflite(grouped)
    with pytest.raises(ValueError, match="first: x_q must be uint8 or int8"):
        litert.run_layer(a, torch.zeros(2, 48), "reference")
    with pytest.raises(ValueError, match="unknown kernel"):
        litert.run_layer(a, torch.zeros(2, 48, dtype=torch.uint8), "gpu")
    with pytest.raises(ValueError, match="unknown tflite kernel"):
        dialect.quantize(torch.zeros(3), 0.1, 0, kernel="gpu")
    with pytest.raises(ValueError, match="on_weight_min"):
        litert.layer_to_tflite(a, on_weight_min="maybe")
    tiny = QuantLinear(a.w_q, torch.full((40,), 1e-9), torch.zeros(40, dtype=torch.int32), a.bias * 1e3, 1e-6, 0,
                       0.15, 120, name="tiny")
    with pytest.raises(ValueError, match="tiny: bias"):
        litert.layer_to_tflite(tiny)
