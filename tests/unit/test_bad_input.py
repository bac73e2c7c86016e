"""Bad input gives a clear error naming the layer or tensor, never a silent NaN or a wrapped integer.

Expected values are written out by hand (the bias for a zero input, an accumulator
``K * 255 * 127``) or come from torch.ao's dynamic Linear.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import glassquant
from glassquant import dialects
from glassquant.convert import DynamicConfig, StaticConfig
from glassquant.errors import AccumulatorOverflowError
from glassquant.interop import torch_ao
from glassquant.nn.linear import DynamicQuantLinear, QuantLinear

from gq_testing import needs_torch_ao

K, N = 5, 3


def make_layer(**overrides) -> QuantLinear:
    """A small valid QuantLinear; ``overrides`` replace one argument."""
    args = dict(w_q=torch.arange(-7, 8, dtype=torch.int8).reshape(N, K), w_scale=torch.tensor([0.01]),
                w_zero_point=torch.tensor([0]), bias=torch.tensor([0.1, -0.2, 0.3]), x_scale=0.05, x_zero_point=128,
                y_scale=0.02, y_zero_point=100, name="encoder.fc1")
    args.update(overrides)
    return QuantLinear(**args)


# ----- inputs to forward ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_forward_input_names_the_layer(bad: float) -> None:
    x = torch.zeros(2, K)
    x[1, 3] = bad
    with pytest.raises(ValueError, match=r"encoder\.fc1"):
        make_layer()(x)
    dyn = DynamicQuantLinear(make_layer().w_q, torch.tensor([0.01]), torch.tensor([0]), None, name="encoder.fc2")
    with pytest.raises(ValueError, match=r"encoder\.fc2"):
        dyn(x)


def test_wrong_feature_count_names_both_numbers() -> None:
    layer = make_layer()
    with pytest.raises(ValueError, match=r"encoder\.fc1.*7.*5"):
        layer.forward_int(torch.zeros(2, 7, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"7.*5"):
        layer(torch.zeros(2, 7))
    dyn = DynamicQuantLinear(layer.w_q, torch.tensor([0.01]), torch.tensor([0]), None)
    with pytest.raises(ValueError, match=r"7.*5"):
        dyn(torch.zeros(2, 7))


@pytest.mark.parametrize("dtype", [torch.int8, torch.float32, torch.int32], ids=["int8", "float32", "int32"])
def test_forward_int_wrong_dtype(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=r"encoder\.fc1.*x_q"):
        make_layer().forward_int(torch.zeros(2, K, dtype=dtype))


# ----- layer construction -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.int32], ids=["float32", "uint8", "int32"])
def test_weight_must_be_int8(dtype: torch.dtype) -> None:
    w = torch.zeros(N, K, dtype=dtype)
    with pytest.raises(TypeError, match="w_q"):
        make_layer(w_q=w)
    with pytest.raises(TypeError, match="w_q"):
        DynamicQuantLinear(w, torch.tensor([0.01]), torch.tensor([0]), None)


@pytest.mark.parametrize("shape", [(N + 1,), (1,), (N, 1)])
def test_bias_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"bias shape"):
        make_layer(bias=torch.zeros(shape))
    with pytest.raises(ValueError, match=r"bias shape"):
        DynamicQuantLinear(make_layer().w_q, torch.tensor([0.01]), torch.tensor([0]), torch.zeros(shape))


def test_bias_non_finite() -> None:
    with pytest.raises(ValueError, match=r"encoder\.fc1: bias"):
        make_layer(bias=torch.tensor([0.0, float("nan"), 0.0]))


@pytest.mark.parametrize("which", ["x_scale", "y_scale"])
@pytest.mark.parametrize("value", [0.0, -0.5, float("inf"), float("nan")], ids=["zero", "negative", "inf", "nan"])
def test_scale_must_be_finite_positive(which: str, value: float) -> None:
    with pytest.raises(ValueError, match=which):
        make_layer(**{which: value})


@pytest.mark.parametrize("which", ["x_zero_point", "y_zero_point"])
@pytest.mark.parametrize("value", [-1, 256, 1000])
def test_zero_point_outside_uint8(which: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"{which} {value} outside"):
        make_layer(**{which: value})


def test_weight_qparams_wrong_length() -> None:
    with pytest.raises(ValueError, match=str(N)):
        make_layer(w_scale=torch.tensor([0.1, 0.2]))


def test_unknown_engine_lists_engines() -> None:
    listing = r".*".join(re.escape(repr(e)) for e in sorted(dialects.ENGINES))
    with pytest.raises(ValueError, match=rf"'tpu'.*{listing}"):
        make_layer(engine="tpu")
    with pytest.raises(ValueError, match=listing):
        DynamicQuantLinear(make_layer().w_q, torch.tensor([0.01]), torch.tensor([0]), None, engine="tpu")
    with pytest.raises(ValueError, match=listing):
        StaticConfig(engine="tpu")
    with pytest.raises(ValueError, match=listing):
        DynamicConfig(engine="tpu")


# ----- glassquant.quantize ----------------------------------------------------------------------


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(K, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_calibration_names_the_layer(bad: float) -> None:
    x = torch.randn(8, K)
    x[2, 1] = bad
    with pytest.raises(ValueError, match=re.escape("layer '0'")):
        glassquant.quantize(small_model(), "x86", [torch.randn(8, K), x])


def test_empty_calibration() -> None:
    with pytest.raises(ValueError, match="empty"):
        glassquant.quantize(small_model(), "x86", [])
    with pytest.raises(ValueError, match="empty"):
        glassquant.quantize(small_model(), "x86", iter(()))


@pytest.mark.parametrize("preset", ["x86", "qnnpack", "w8a8-static"])
def test_static_preset_needs_calibration(preset: str) -> None:
    with pytest.raises(ValueError, match="calibration"):
        glassquant.quantize(small_model(), preset)


def test_dynamic_preset_needs_no_calibration() -> None:
    model = glassquant.quantize(small_model(), "w8a8-dynamic")
    assert isinstance(model[0], DynamicQuantLinear)


def test_model_without_linear() -> None:
    with pytest.raises(ValueError, match=r"Sequential.*nn\.Linear"):
        glassquant.quantize(nn.Sequential(nn.ReLU(), nn.Conv1d(2, 2, 1)), "w8a8-dynamic")


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ValueError, match=r"'w4a4'.*w8a8-dynamic"):
        glassquant.quantize(small_model(), "w4a4", [torch.randn(2, K)])


# ----- zero-range input to a dynamic layer ------------------------------------------------------


@pytest.mark.parametrize("engine", ["x86", "fbgemm", "qnnpack", "onednn"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_dynamic_all_zero_input_gives_bias(engine: str, per_channel: bool) -> None:
    """Range [0, 0]: scale 0.1, zero point 0 (fbgemm's rule), x_q = 0, so y is exactly the bias."""
    g = torch.Generator().manual_seed(1)
    c = N if per_channel else 1
    bias = torch.randn(N, generator=g)
    layer = DynamicQuantLinear(torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8),
                               torch.rand(c, generator=g) * 0.01 + 1e-4, torch.zeros(c, dtype=torch.int32), bias,
                               engine=engine)
    x = torch.zeros(4, K)
    assert layer.dialect.choose_qparams(0.0, 0.0, 0, 255, True) == (float(torch.tensor(0.1).float()), 0)
    for fast in (True, False):
        y = layer(x, fast=fast)
        assert torch.equal(y, bias.expand(4, N))
    no_bias = DynamicQuantLinear(layer.w_q, layer.w_scale, layer.w_zero_point, None, engine=engine)
    assert torch.equal(no_bias(x), torch.zeros(4, N))


@needs_torch_ao
@pytest.mark.parametrize("engine", ["x86", "fbgemm", "qnnpack"])
def test_dynamic_all_zero_input_matches_torch(engine: str) -> None:
    g = torch.Generator().manual_seed(2)
    bias = torch.randn(N, generator=g)
    layer = DynamicQuantLinear(torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8),
                               torch.tensor([0.004]), torch.tensor([0]), bias, engine=engine)
    m = layer.to_torch_ao()
    x = torch.zeros(4, K)
    with torch_ao.engine(engine):
        ref = m(x)
    assert torch.equal(ref, bias.expand(4, N))
    assert torch.equal(layer(x), ref)


# ----- int32 accumulator overflow ---------------------------------------------------------------

K_BIG = 70_000  # 70000 * 255 * 127 = 2,266,950,000 > 2**31 - 1
#: the longest all-255 prefix that still fits: 66311 * 255 * 127 <= 2**31 - 1 < 66312 * 255 * 127
K_FITS = (2**31 - 1) // (255 * 127)


def big_layer(check_overflow: bool) -> QuantLinear:
    w_q = torch.full((1, K_BIG), 127, dtype=torch.int8)  # (N, K) = (1, 70000), |w| = 127
    return QuantLinear(w_q, torch.tensor([1e-3]), torch.tensor([0]), None, x_scale=1e-3, x_zero_point=0,
                       y_scale=1.0, y_zero_point=0, name="huge.fc", check_overflow=check_overflow)


def test_overflow_certificate_at_construction() -> None:
    assert K_FITS == 66_311
    with pytest.raises(AccumulatorOverflowError, match=r"huge\.fc.*70000"):
        big_layer(check_overflow=True)
    assert issubclass(AccumulatorOverflowError, OverflowError)


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "int_mm"])
def test_overflow_at_runtime_is_raised_not_wrapped(fast: bool) -> None:
    layer = big_layer(check_overflow=False)
    assert layer.accumulator_bound == K_BIG * 255 * 127
    x_q = torch.zeros(1, K_BIG, dtype=torch.uint8)  # (M, K) = (1, 70000)
    x_q[0, :K_FITS] = 255
    assert torch.equal(layer.accumulate(x_q, fast=fast), torch.tensor([[K_FITS * 255 * 127]]))  # just fits
    x_q[0, K_FITS] = 255  # one more product: 2**31 - 1 exceeded
    with pytest.raises(AccumulatorOverflowError, match=r"huge\.fc") as excinfo:
        layer.forward_int(x_q, fast=fast)
    if not fast:
        frames = {(e.path.name, e.name) for e in excinfo.traceback}
        assert ("_base.py", "accumulate") in frames, frames
    with pytest.raises(AccumulatorOverflowError):
        layer.forward_int(torch.full((1, K_BIG), 255, dtype=torch.uint8), fast=fast)
