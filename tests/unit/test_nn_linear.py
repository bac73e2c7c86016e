"""``nn.linear``: QuantLinear and DynamicQuantLinear against torch.ao's quantized Linear modules.

Reference: the torch.ao modules themselves (``torch.ao.nn.quantized.Linear``,
``intrinsic.quantized.LinearReLU``, ``quantized.dynamic.Linear``), built under each engine
directly and through torch.ao's own prepare/convert flow. Static outputs compare as integers
(``int_repr``), dynamic outputs as float32, both with ``torch.equal``. The onednn dynamic
Linear is excluded here (a known bound, tested in tests/equivalence/test_onednn.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from glassquant.interop import torch_ao
from glassquant.nn.linear import DynamicQuantLinear, QuantLinear

from gq_testing import needs_torch_ao

ENGINES = ["x86", "fbgemm", "qnnpack", "onednn"]
DYNAMIC_ENGINES = ["x86", "fbgemm", "qnnpack"]  # onednn dynamic: a known bound, tested elsewhere
PLAIN_DTYPES = (torch.int8, torch.int32, torch.float32)
K, N = 48, 24


def torch_qweight(w: Tensor, per_channel: bool) -> Tensor:
    """A symmetric qint8 weight as torch.ao's default observers make it (zero point 0)."""
    if per_channel:
        scales = (w.abs().amax(dim=1) / 127.5).to(torch.float64)  # (N,)
        return torch.quantize_per_channel(w, scales, torch.zeros(w.shape[0], dtype=torch.int64), 0, torch.qint8)
    return torch.quantize_per_tensor(w, float(w.abs().max()) / 127.5, 0, torch.qint8)


def ao_static(engine: str, per_channel: bool, relu: bool, seed: int, bias: bool = True) -> nn.Module:
    """A torch.ao quantized Linear (or LinearReLU) with random weights, packed under ``engine``."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * 0.2
    b = torch.randn(N, generator=g) * 0.5 if bias else None
    with torch_ao.engine(engine):
        m = (nniq.LinearReLU if relu else nnq.Linear)(K, N, bias)  # 3rd argument: `bias_` / `bias`
        m.set_weight_bias(torch_qweight(w, per_channel), b)
        # float output of an input in [-2, 2) spans about +-2 * 0.2 * sqrt(K) * ... ; 8 bits over +-4
        m.scale, m.zero_point = 8.0 / 255, int(torch.randint(90, 166, (1,), generator=g))
    return m


def static_inputs(seed: int) -> list[Tensor]:
    """Float inputs: one row, many rows, one (B, T, K) batch."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, K, generator=g), torch.randn(97, K, generator=g) * 1.5, torch.randn(3, 5, K, generator=g)]


def run_ao(engine: str, m: nn.Module, x: Tensor, x_scale: float, x_zero_point: int) -> Tensor:
    with torch_ao.engine(engine):
        return m(torch.quantize_per_tensor(x, x_scale, x_zero_point, torch.quint8)).int_repr()


def assert_plain_state(layer: nn.Module) -> None:
    assert layer.w_q.dtype == torch.int8 and not layer.w_q.is_quantized
    for name, t in layer.state_dict().items():
        assert not t.is_quantized, name
        assert t.dtype in PLAIN_DTYPES, (name, t.dtype)


@needs_torch_ao
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_static_from_torch_ao_matches(engine: str, per_channel: bool, relu: bool) -> None:
    m = ao_static(engine, per_channel, relu, seed=ENGINES.index(engine) + 10 * per_channel + 100 * relu)
    x_scale, x_zp = 4.0 / 255, 131
    layer = QuantLinear.from_torch_ao(m, x_scale, x_zp, engine=engine)
    assert layer.relu == relu and layer.engine == engine
    assert (layer.in_features, layer.out_features) == (K, N)
    assert layer.w_scale.numel() == (N if per_channel else 1)
    assert_plain_state(layer)
    outputs = 0
    for x in static_inputs(seed=1):
        ref = run_ao(engine, m, x, x_scale, x_zp)
        x_q = torch.quantize_per_tensor(x, x_scale, x_zp, torch.quint8).int_repr()
        got = layer.forward_int(x_q)
        assert got.dtype == ref.dtype == torch.uint8
        assert got.shape == ref.shape == (*x.shape[:-1], N)
        assert torch.equal(got, ref)
        assert torch.equal(layer.forward_int(x_q, fast=False), ref)
        # forward: float in, the same integers out (dequantized)
        y = layer.forward(x)
        assert y.shape == ref.shape
        assert torch.equal(y, (ref.to(torch.float32) - m.zero_point) * torch.tensor(m.scale, dtype=torch.float32))
        outputs += ref.numel()
    assert len(torch.unique(ref)) > 20  # not a saturated, degenerate output


@needs_torch_ao
@pytest.mark.parametrize("engine", ENGINES)
def test_static_from_torch_ao_prepare_convert(engine: str) -> None:
    """A model converted by torch.ao's own eager flow with the engine's default qconfig."""
    import torch.ao.quantization as tq

    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(tq.QuantStub(), nn.Linear(K, N), nn.ReLU(), nn.Linear(N, 7), tq.DeQuantStub()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    calibration = [torch.randn(16, K, generator=g) for _ in range(4)]
    x = torch.randn(40, K, generator=g)
    with torch_ao.engine(engine):
        model.qconfig = tq.get_default_qconfig(engine)
        tq.fuse_modules(model, [["1", "2"]], inplace=True)
        tq.prepare(model, inplace=True)
        for b in calibration:
            model(b)
        tq.convert(model, inplace=True)
        x_scale, x_zp = float(model[0].scale), int(model[0].zero_point)
        x_q = model[0](x)
        h_q = model[1](x_q)  # LinearReLU
        y_q = model[3](h_q)
    first = QuantLinear.from_torch_ao(model[1], x_scale, x_zp, engine=engine)
    second = QuantLinear.from_torch_ao(model[3], float(model[1].scale), int(model[1].zero_point), engine=engine)
    assert first.relu and not second.relu
    assert torch.equal(first.forward_int(x_q.int_repr()), h_q.int_repr())
    assert torch.equal(second.forward_int(h_q.int_repr()), y_q.int_repr())
    assert torch.equal(first.quantize_input(x), x_q.int_repr())


def ao_dynamic(engine: str, per_channel: bool, seed: int) -> nn.Module:
    import torch.ao.nn.quantized.dynamic as nnqd

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * 0.2
    with torch_ao.engine(engine):
        m = nnqd.Linear(K, N)
        m.set_weight_bias(torch_qweight(w, per_channel), torch.randn(N, generator=g))
    return m


def dynamic_inputs(seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, K, generator=g), torch.randn(64, K, generator=g) * 3 + 1,
            torch.rand(2, 9, K, generator=g), -torch.rand(4, K, generator=g) * 1e-6]


@needs_torch_ao
@pytest.mark.parametrize("engine", DYNAMIC_ENGINES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_dynamic_from_torch_ao_matches(engine: str, per_channel: bool) -> None:
    m = ao_dynamic(engine, per_channel, seed=3 + per_channel)
    layer = DynamicQuantLinear.from_torch_ao(m, engine=engine)
    assert layer.reduce_range  # torch.ao's dynamic Linear always asks for reduce_range
    assert_plain_state(layer)
    for x in dynamic_inputs(seed=2):
        with torch_ao.engine(engine):
            ref = m(x)
        got = layer(x)
        assert got.dtype == ref.dtype == torch.float32
        assert got.shape == ref.shape == (*x.shape[:-1], N)
        assert torch.equal(got, ref)


@needs_torch_ao
@pytest.mark.parametrize("engine", DYNAMIC_ENGINES)
def test_dynamic_from_torch_ao_quantize_dynamic(engine: str) -> None:
    """A model converted by ``torch.ao.quantization.quantize_dynamic`` (per-channel qconfig too)."""
    import torch.ao.quantization as tq

    g = torch.Generator().manual_seed(8)
    model = nn.Sequential(nn.Linear(K, N), nn.Linear(N, 5)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(30, K, generator=g)
    with torch_ao.engine(engine):
        qmodel = tq.quantize_dynamic(model, {"0": tq.default_dynamic_qconfig,
                                             "1": tq.per_channel_dynamic_qconfig}, dtype=torch.qint8)
        h = qmodel[0](x)
        y = qmodel[1](h)
    first = DynamicQuantLinear.from_torch_ao(qmodel[0], engine=engine)
    second = DynamicQuantLinear.from_torch_ao(qmodel[1], engine=engine)
    assert second.w_scale.numel() == 5
    assert torch.equal(first(x), h)
    assert torch.equal(second(h), y)


def random_static_layer(engine: str, per_channel: bool, relu: bool, bias: bool, seed: int) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    w_q = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    c = N if per_channel else 1
    return QuantLinear(w_q, torch.rand(c, generator=g) * 0.004 + 1e-4, torch.zeros(c, dtype=torch.int32),
                       torch.randn(N, generator=g) if bias else None, x_scale=0.02, x_zero_point=77,
                       y_scale=0.03, y_zero_point=128, relu=relu, engine=engine, name="enc.fc")


@needs_torch_ao
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize(("relu", "bias"), [(False, True), (False, False), (True, True)])
def test_static_to_torch_ao_round_trip(engine: str, per_channel: bool, relu: bool, bias: bool) -> None:
    layer = random_static_layer(engine, per_channel, relu, bias, seed=ENGINES.index(engine))
    m = layer.to_torch_ao()
    back = QuantLinear.from_torch_ao(m, layer.x_scale, layer.x_zero_point, engine=engine)
    for name, t in layer.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    assert (back.y_scale, back.y_zero_point, back.relu) == (layer.y_scale, layer.y_zero_point, relu)
    g = torch.Generator().manual_seed(9)
    for shape in ((1, K), (50, K), (2, 3, K)):
        x_q = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        x = (x_q.to(torch.float32) - layer.x_zero_point) * layer.x_scale
        ref = run_ao(engine, m, x, layer.x_scale, layer.x_zero_point)
        assert torch.equal(torch.quantize_per_tensor(x, layer.x_scale, layer.x_zero_point, torch.quint8).int_repr(),
                           x_q)
        assert torch.equal(layer.forward_int(x_q), ref)


@needs_torch_ao
@pytest.mark.parametrize("engine", DYNAMIC_ENGINES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_dynamic_to_torch_ao_round_trip(engine: str, per_channel: bool) -> None:
    g = torch.Generator().manual_seed(11)
    c = N if per_channel else 1
    layer = DynamicQuantLinear(torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8),
                               torch.rand(c, generator=g) * 0.01 + 1e-4, torch.zeros(c, dtype=torch.int32),
                               torch.randn(N, generator=g), engine=engine)
    m = layer.to_torch_ao()
    back = DynamicQuantLinear.from_torch_ao(m, engine=engine)
    for name, t in layer.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    for x in dynamic_inputs(seed=12):
        with torch_ao.engine(engine):
            ref = m(x)
        assert torch.equal(layer(x), ref)


@pytest.mark.parametrize("engine", ENGINES)
def test_three_d_input_is_row_wise(engine: str) -> None:
    """(B, T, K) gives the same rows as the (B*T, K) matrix, for static and dynamic layers."""
    layer = random_static_layer(engine, per_channel=True, relu=False, bias=True, seed=4)
    g = torch.Generator().manual_seed(13)
    x_q = torch.randint(0, 256, (4, 6, K), generator=g, dtype=torch.uint8)  # (B, T, K)
    y_q = layer.forward_int(x_q)
    assert y_q.shape == (4, 6, N)
    assert torch.equal(y_q.reshape(24, N), layer.forward_int(x_q.reshape(24, K)))
    x = torch.randn(4, 6, K, generator=g)
    y = layer(x)
    assert y.shape == (4, 6, N) and y.dtype == torch.float32
    assert torch.equal(y.reshape(24, N), layer(x.reshape(24, K)))
    dyn = DynamicQuantLinear(layer.w_q, layer.w_scale, layer.w_zero_point, layer.bias, engine=engine)
    yd = dyn(x)
    assert yd.shape == (4, 6, N)
    assert torch.equal(yd.reshape(24, N), dyn(x.reshape(24, K)))  # one range for the whole batch either way


@pytest.mark.parametrize("engine", ENGINES)
def test_from_float_stores_plain_integers(engine: str) -> None:
    lin = nn.Linear(K, N)
    for layer in (QuantLinear.from_float(lin, 0.02, 128, 0.05, 100, engine=engine),
                  DynamicQuantLinear.from_float(lin, engine=engine)):
        assert_plain_state(layer)
        assert layer.w_scale.dtype == torch.float32 and layer.w_zero_point.dtype == torch.int32
        assert int(layer.w_q.min()) >= -128 and int(layer.w_q.max()) <= 127
        assert int(layer.w_q.abs().max()) >= 126  # the min/max range really maps onto the grid
