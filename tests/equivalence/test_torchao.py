"""``dialects.torchao`` against real torchao 0.18 on CPU, bit for bit.

Configs: ``Int8DynamicActivationInt8WeightConfig()`` (W8A8: int8 weights per row, int8
activations per token) and ``Int8WeightOnlyConfig()`` (W8), applied by torchao's own
``quantize_`` to float32 ``nn.Linear`` layers (``interop.torchao_runtime``). Compared with
``torch.equal``, 0 mismatches:

- weight integers and scales (``Int8Tensor.qdata`` / ``.scale``) vs ``torchao.quantize_weight``;
- activation integers and per-token scales, captured inside torchao's real linear (what it
  hands to ``int_scaled_matmul``) vs ``torchao.quantize_activation``;
- float32 layer outputs: ``DynamicQuantLinear(engine="torchao")`` (compiled fused passes,
  ``_int_mm`` path, exact reference) and ``WeightOnlyLinear(bits=8)`` /
  ``torchao.linear_weight_only`` vs the torchao-quantized ``nn.Linear``.

Inputs: random rows plus adversarial rows (exact .5 ties with power-of-two and with
arbitrary scales, -amax -> -127.5 -> -128, all-zero rows, tiny rows below eps with
subnormals, huge rows up to float32's max, accumulators past 2**24). Mutant checks: each
plausible wrong rule (divisor 127, eps = smallest normal or 1e-5, half-away rounding,
true division, [-127, 127], another output order) must differ from torchao on these inputs.
Mutant values are computed here in float64 with one rounding to float32 per step — the
correct rounding of each float32 operation, since float64 has 53 >= 2*24 + 2 bits
(double rounding is innocuous for +, *, /) — independently of the dialect.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("torchao", reason="torchao is not installed: the reference runtime is missing")

from glassquant.dialects import torchao as dialect
from glassquant.interop import torchao_runtime as rt
from glassquant.kernels import fused
from glassquant.nn.linear import WEIGHT_PER_CHANNEL, DynamicQuantLinear
from glassquant.nn.weight_only import WeightOnlyLinear

F32 = torch.float32
EPS = 2.0**-23
SMALLEST_NORMAL = torch.finfo(F32).smallest_normal


# ----- inputs -------------------------------------------------------------------------------------


def _f32(v: Tensor) -> Tensor:
    """float64 -> float32, one rounding (half to even)."""
    return v.to(F32)


def _scale_of(amax: Tensor) -> Tensor:
    """torchao's scale for a row maximum, as an independent float64 computation: f32(amax / 127.5), >= eps."""
    return _f32(amax.to(torch.float64) / 127.5).clamp_min(EPS)


def hard_tie_row(g: torch.Generator, k: int, amax: float) -> tuple[Tensor, int]:
    """A row with max |x| = ``amax`` whose other values land on exact ``j + 0.5`` after ``f32(x * f32(1/scale))``.

    The scale is arbitrary (not a power of two), so these ties also separate ``x * f32(1/scale)``
    from a true division ``x / scale``. For each value the float32 neighbours of
    ``(j + 0.5) / inv`` are tried; returns the row and how many values are exact ties.
    """
    inv = _f32(1.0 / _scale_of(torch.tensor(amax)).to(torch.float64)).to(torch.float64)
    target = torch.randint(-127, 127, (k,), generator=g).to(torch.float64) + 0.5
    x0 = _f32(target / inv)
    cands = [x0]
    for _ in range(3):
        cands = [torch.nextafter(cands[0], torch.tensor(-float("inf"))), *cands,
                 torch.nextafter(cands[-1], torch.tensor(float("inf")))]
    row = x0.clone()
    found = torch.zeros(k, dtype=torch.bool)
    for c in cands:
        hit = (_f32(c.to(torch.float64) * inv).to(torch.float64) == target) & ~found  # product exact in f64
        row = torch.where(hit, c, row)
        found |= hit
    row[0] = amax
    return row, int(found[1:].sum())


def adversarial_rows(g: torch.Generator, k: int) -> tuple[Tensor, dict[str, list[int]], int]:
    """Float32 (R, k) rows that stress every quantization rule; returns ``(x, row kinds, exact ties)``.

    Kinds: ``pow2_ties`` (amax = 127.5 * 2**e: scale 2**e exactly, values (j + 0.5) * 2**e and
    -amax -> -127.5), ``hard_ties`` (arbitrary scales, see :func:`hard_tie_row`), ``zero``,
    ``tiny`` (max |x| below 127.5 * eps, so the scale clamps at eps; ties at (j + 0.5) * 2**-23
    and subnormals), ``huge`` (up to float32's max), ``one_sided`` and ``outlier`` rows.
    """
    rows: list[Tensor] = []
    kinds: dict[str, list[int]] = {}
    ties = 0

    def add(kind: str, row: Tensor) -> None:
        kinds.setdefault(kind, []).append(len(rows))
        rows.append(row.to(F32))

    for e in (-9, -3, 0, 4):
        for sign in (1.0, -1.0):
            row = (torch.randint(-128, 128, (k,), generator=g).to(torch.float64) + 0.5) * 2.0**e
            row[0], row[1] = -127.5 * 2.0**e * sign, 127.5 * 2.0**e * sign * (1 - 2**-20)
            ties += k - 2
            add("pow2_ties", row)
    for amax in (0.7318, 1.0, 3.3, 17.77, 1234.5, 2.5e-3, 9.1e6, 1e30):
        for sign in (1.0, -1.0):
            row, n_ties = hard_tie_row(g, k, amax)
            ties += n_ties
            add("hard_ties", row * sign)
    for _ in range(3):
        add("zero", torch.zeros(k))
    for amax in (1e-6, 1.4e-5):
        add("tiny", (torch.rand(k, generator=g) * 2 - 1) * amax)
    tiny_ties = (torch.randint(-100, 100, (k,), generator=g).to(torch.float64) + 0.5) * 2.0**-23
    ties += k
    add("tiny", tiny_ties)
    add("tiny", torch.randn(k, generator=g) * 1e-40)  # subnormal float32
    add("tiny", torch.where(torch.rand(k, generator=g) < 0.5, 1e-42, -3e-41))
    fmax = torch.finfo(F32).max
    add("huge", torch.randn(k, generator=g).clamp(-3, 3) / 3 * fmax)
    add("huge", torch.full((k,), -fmax))
    add("huge", torch.randn(k, generator=g) * 1e37)
    add("one_sided", torch.rand(k, generator=g) * 5)
    add("one_sided", -torch.rand(k, generator=g) * 0.01)
    outlier = torch.randn(k, generator=g) * 0.1
    outlier[k // 2] = 500.0
    add("outlier", outlier)
    return torch.stack(rows), kinds, ties


def layer_with_weight(weight: Tensor, seed: int) -> nn.Linear:
    n, k = weight.shape
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(torch.randn(n, generator=torch.Generator().manual_seed(seed)))
    return lin


def random_weight(g: torch.Generator, n: int, k: int, std: float) -> Tensor:
    return torch.randn(n, k, generator=g) * std


# ----- independent per-row quantization, with one rule changed (the mutants) ----------------------


def rows_quantized(x: Tensor, divisor: float = 127.5, eps: float = EPS, qmin: int = -128, qmax: int = 127,
                   rounding: str = "half_even", division: bool = False) -> tuple[Tensor, Tensor]:
    """Per-row symmetric int8, each float32 operation evaluated in float64 and rounded once.

    Defaults are torchao's rules; each keyword swaps in a plausible wrong one. Returns
    ``(q int8 (R, K), scale float32 (R,))``.
    """
    x64 = x.to(torch.float64)
    amax = x64.abs().amax(dim=1, keepdim=True)  # (R, 1)
    scale = _f32(amax / divisor).clamp_min(eps).to(torch.float64)  # (R, 1)
    if division:
        v = _f32(x64 / scale).to(torch.float64)  # one float32 division
    else:
        inv = _f32(1.0 / scale).to(torch.float64)
        v = _f32(x64 * inv).to(torch.float64)  # one float32 multiply (exact in f64, then rounded)
    r = torch.round(v) if rounding == "half_even" else torch.sign(v) * torch.floor(v.abs() + 0.5)
    return r.clamp(qmin, qmax).to(torch.int8), _f32(scale.reshape(-1))


MUTANTS: dict[str, dict] = {
    "divisor 127": {"divisor": 127.0},
    "eps = smallest normal": {"eps": SMALLEST_NORMAL},
    "eps = 1e-5": {"eps": 1e-5},
    "round half away": {"rounding": "half_away"},
    "true division x / scale": {"division": True},
    "qmin -127": {"qmin": -127},
}


def mismatches(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> int:
    return int((a[0] != b[0]).sum()) + int((a[1].reshape(-1) != b[1].reshape(-1)).sum())


def check_mutants(x: Tensor, ref: tuple[Tensor, Tensor]) -> dict[str, int]:
    """The faithful independent model equals torchao; every mutant differs somewhere."""
    assert mismatches(rows_quantized(x), ref) == 0
    counts = {name: mismatches(rows_quantized(x, **kw), ref) for name, kw in MUTANTS.items()}
    assert all(c > 0 for c in counts.values()), counts
    return counts


# ----- (a) weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize("config", rt.CONFIGS)
def test_weight_integers_and_scales_bit_exact(config: str) -> None:
    g = torch.Generator().manual_seed(1)
    adv, kinds, ties = adversarial_rows(g, 512)
    weights = [adv, random_weight(g, 192, 256, 0.05), random_weight(g, 130, 300, 3.0), random_weight(g, 64, 96, 1e-3)]
    compared = 0
    for i, w in enumerate(weights):
        ref = rt.torchao_weight_integers(rt.torchao_linear(layer_with_weight(w, i), config))
        w_q, scale, zero_point = dialect.quantize_weight(w, WEIGHT_PER_CHANNEL)
        assert w_q.dtype == ref[0].dtype == torch.int8 and scale.dtype == ref[1].dtype == F32
        assert torch.equal(w_q, ref[0]) and torch.equal(scale, ref[1]) and not bool(zero_point.any())
        compared += w_q.numel() + scale.numel()
        if i == 0:
            counts = check_mutants(w, ref)
            assert counts["round half away"] > 1_000 and counts["true division x / scale"] > 100, counts
            assert ties > 10_000
            zero_rows = torch.tensor(kinds["zero"])
            assert bool((ref[1][zero_rows] == EPS).all())  # torchao clamps at finfo(float32).eps, not smallest_normal
            assert int((ref[0] == -128).sum()) >= 8  # -127.5 -> -128: the grid is [-128, 127]
    assert compared >= 100_000


# ----- (b) activations ------------------------------------------------------------------------------


def captured_activation(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run torchao's linear once; ``(y, x_q, x_scale (M, 1), f32(acc) * x_scale)`` seen by its matmul."""
    records: list[tuple[Tensor, Tensor, Tensor]] = []
    with rt.capture_activation(records):
        y = rt.run(module, x)
    assert len(records) == 1
    return (y, *records[0])


def test_activation_integers_and_scales_bit_exact() -> None:
    g = torch.Generator().manual_seed(2)
    k = 512
    adv, kinds, _ = adversarial_rows(g, k)
    module = rt.torchao_linear(layer_with_weight(random_weight(g, 8, k, 0.05), 0), "w8a8-dynamic")
    inputs = [adv, torch.randn(4, 60, k, generator=g) * 2 + 0.5, torch.randn(3, 50, k, generator=g).relu() * 1e-3]
    compared = 0
    for i, x in enumerate(inputs):
        _, ref_q, ref_scale, _ = captured_activation(module, x)
        x_q, x_scale, zero_point = dialect.quantize_activation(x)
        assert zero_point == 0 and x_scale.shape == (*x.shape[:-1], 1)
        assert torch.equal(x_q.reshape(-1, k), ref_q) and torch.equal(x_scale.reshape(-1, 1), ref_scale)
        compared += x_q.numel() + x_scale.numel()
        if i == 0:
            counts = check_mutants(x, (ref_q, ref_scale))
            assert counts["eps = 1e-5"] > 0 and counts["qmin -127"] > 0, counts  # torchao's older activation rules
            assert bool((ref_scale[torch.tensor(kinds["zero"])] == EPS).all())
    assert compared >= 100_000


# ----- (c) layer outputs ----------------------------------------------------------------------------


def dynamic_layers(g: torch.Generator) -> list[tuple[nn.Linear, list[Tensor]]]:
    """(layer, inputs) pairs: adversarial weights and activations, random ones, and a large-K layer
    whose aligned +-1 weights and inputs make accumulators pass 2**24 (f32(acc) rounds)."""
    k = 512
    adv_w, _, _ = adversarial_rows(g, k)
    adv_w = adv_w[adv_w.abs().amax(dim=1) < 1e20]  # keep outputs finite: no huge weights times huge inputs
    w = torch.cat([adv_w, random_weight(g, 192 - adv_w.shape[0], k, 0.05)])  # (192, 512)
    adv_x, _, _ = adversarial_rows(g, k)
    adv_x = adv_x[adv_x.abs().amax(dim=1) < 1e20]
    xs = [adv_x, torch.randn(4, 128, k, generator=g), torch.randn(300, k, generator=g).relu() * 4]
    big_k = 4096
    pattern = torch.where(torch.rand(big_k, generator=g) < 0.5, -1.0, 1.0)  # (K,) one sign pattern
    row_sign = torch.where(torch.arange(24) % 2 == 0, 1.0, -1.0)[:, None]  # (24, 1)
    sign = row_sign * pattern  # rows aligned (or anti-aligned) with the pattern: |acc| ~ 127 * 127 * K
    sign[16:] = torch.where(torch.rand(8, big_k, generator=g) < 0.5, -1.0, 1.0)  # and 8 random rows
    big_w = sign * (0.5 + torch.rand(24, big_k, generator=g) * 0.001)
    big_x = row_sign * pattern * (1 + torch.rand(24, big_k, generator=g) * 0.001)
    return [(layer_with_weight(w, 3), xs), (layer_with_weight(big_w, 4), [big_x])]


@pytest.mark.parametrize("path", ["compiled", "int_mm", "reference"])
def test_dynamic_layer_outputs_bit_exact(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """W8A8: the int32 accumulators are exact on both sides, so the float32 outputs are equal too."""
    if path == "compiled" and not fused.available():
        pytest.skip("the compiled fused library (kernels/_fused.c) is not built")
    if path == "int_mm":
        monkeypatch.setattr(fused, "available", lambda: False)
    g = torch.Generator().manual_seed(3)
    compared = big_acc = 0
    for lin, xs in dynamic_layers(g):
        module = rt.torchao_linear(lin, "w8a8-dynamic")
        layer = DynamicQuantLinear.from_float(lin, weight_scheme=WEIGHT_PER_CHANNEL, engine="torchao",
                                              reduce_range=False, name="fc")
        for x in xs:
            y_ref, x_q, x_scale, y_dot = captured_activation(module, x)
            y = layer(x, fast=path != "reference")
            assert y.dtype == y_ref.dtype == F32 and y.shape == y_ref.shape
            assert torch.equal(y, y_ref)
            compared += y.numel()
            acc = x_q.to(torch.int64) @ layer.w_q.to(torch.int64).T  # (M, K) @ (K, N) -> (M, N) exact
            big_acc += int((acc.abs() > 2**24).sum())
            assert torch.equal(acc.to(F32) * x_scale, y_dot)  # torchao's integer matmul is exact
    assert compared >= 100_000 and big_acc > 100


def test_dynamic_output_order_mutants_differ() -> None:
    """``f32(f32(f32(acc) * sx) * sw) + b`` — the other orders of the same three factors differ from torchao."""
    g = torch.Generator().manual_seed(3)
    lin, xs = dynamic_layers(g)[0]
    module = rt.torchao_linear(lin, "w8a8-dynamic")
    w_q, w_scale = rt.torchao_weight_integers(module)
    bias = lin.bias.detach()
    x = xs[1].reshape(-1, lin.in_features)
    y_ref, x_q, x_scale, _ = captured_activation(module, x)
    acc = (x_q.to(torch.int64) @ w_q.to(torch.int64).T).to(F32)  # (M, N), f32(acc)
    assert torch.equal(dialect.dynamic_output(acc.to(torch.int64), x_scale, w_scale, bias), y_ref)
    others = {
        "acc * (sx * sw)": acc * (x_scale * w_scale) + bias,
        "(acc * sw) * sx": acc * w_scale * x_scale + bias,
        "one rounding": _f32(acc.double() * x_scale.double() * w_scale.double() + bias.double()),
    }
    counts = {name: int((v != y_ref).sum()) for name, v in others.items()}
    assert all(c > 100 for c in counts.values()), counts


def test_weight_only_outputs_bit_exact() -> None:
    """W8: ``(x @ f32(w_q).T) * sw + b`` with the same ``torch.mm`` call on the same layout as torchao.

    The float32 matmul's summation order is the BLAS library's, not a documented one: the
    outputs are equal because glassquant makes the identical call (shown by the float64
    mutant, which differs), so this holds on one machine and one thread count at a time.
    """
    g = torch.Generator().manual_seed(4)
    compared = 0
    for lin, xs in dynamic_layers(g):
        module = rt.torchao_linear(lin, "w8-weight-only")
        w_q, w_scale = rt.torchao_weight_integers(module)
        layer = WeightOnlyLinear.from_float(lin, name="fc")
        assert torch.equal(layer.w_q, w_q) and torch.equal(layer.w_scale.reshape(-1), w_scale)
        for x in xs:
            y_ref = rt.run(module, x)
            y = layer(x)
            assert y.dtype == y_ref.dtype == F32 and torch.equal(y, y_ref)
            assert torch.equal(dialect.linear_weight_only(x, w_q, w_scale, lin.bias.detach()), y_ref)
            compared += y.numel()
    assert compared >= 100_000
    # mutants, on the random 3-D input of the first layer
    lin, xs = dynamic_layers(torch.Generator().manual_seed(4))[0]
    module = rt.torchao_linear(lin, "w8-weight-only")
    w_q, w_scale = rt.torchao_weight_integers(module)
    x, bias = xs[1], lin.bias.detach()
    y_ref = rt.run(module, x)
    others: dict[str, Callable[[], Tensor]] = {
        "dequantize first": lambda: x @ (w_q.to(F32) * w_scale[:, None]).T + bias,
        "float64 matmul": lambda: _f32(x.double() @ w_q.double().T).mul(w_scale) + bias,
    }
    counts = {name: int((f() != y_ref).sum()) for name, f in others.items()}
    assert all(c > 0 for c in counts.values()), counts


def test_runtime_helpers_reject_bad_input() -> None:
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="w8a8-dynamic"):
        rt.torchao_linear(lin, "int4")
    with pytest.raises(ValueError, match="Int8Tensor"):
        rt.torchao_weight_integers(lin)
    with pytest.raises(ValueError, match="float32"):
        rt.torchao_linear(nn.Linear(8, 4).to(torch.float64), "w8-weight-only")
    assert isinstance(lin.weight, nn.Parameter) and type(lin.weight.data) is torch.Tensor  # the original is untouched
    rt.torchao_linear(lin, "w8a8-dynamic")
    assert type(lin.weight.data) is torch.Tensor


# ----- what the two configs do not use ---------------------------------------------------------------


def test_per_tensor_weights_bit_exact() -> None:
    """``granularity=PerTensor()`` (not the default): torchao's ``Int8Tensor.from_hp`` vs ``WEIGHT_PER_TENSOR``."""
    from torchao.quantization import Int8Tensor, PerTensor

    from glassquant.nn.linear import WEIGHT_PER_TENSOR

    g = torch.Generator().manual_seed(5)
    adv, _, _ = adversarial_rows(g, 256)
    for w in [adv[adv.abs().amax(dim=1) < 1e20], random_weight(g, 96, 200, 0.05), torch.zeros(4, 8),
              torch.full((3, 5), -127.5 * 2.0**-4)]:
        ref = Int8Tensor.from_hp(w, granularity=PerTensor())
        w_q, scale, _ = dialect.quantize_weight(w, WEIGHT_PER_TENSOR)
        assert torch.equal(w_q, ref.qdata) and torch.equal(scale, ref.scale.reshape(-1))


def test_eps_is_float32_epsilon_in_int8tensor_not_the_primitives_default() -> None:
    """``choose_qparams_affine`` alone clamps at the smallest normal float32 (its default ``eps``);
    ``Int8Tensor.from_hp`` — both configs, weights and activations — passes ``finfo(float32).eps``."""
    from torchao.quantization import Int8Tensor, PerRow
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine

    zeros = torch.zeros(2, 16)
    scale, _ = choose_qparams_affine(zeros, MappingType.SYMMETRIC, (1, 16), torch.int8)
    assert scale.tolist() == [SMALLEST_NORMAL] * 2
    assert Int8Tensor.from_hp(zeros, granularity=PerRow()).scale.reshape(-1).tolist() == [EPS] * 2
    assert dialect.SCALE_EPS == EPS


def test_reduce_range_true_is_another_grid_the_dialect_does_not_model() -> None:
    """``Int8DynamicActivationInt8WeightConfig(reduce_range=True)`` halves both grids to [-64, 63]
    (divisor 63.5); the dialect models the default ``reduce_range=False`` and ignores the flag."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    g = torch.Generator().manual_seed(6)
    w = random_weight(g, 32, 64, 0.05)
    lin = layer_with_weight(w, 6)
    quantize_(lin, Int8DynamicActivationInt8WeightConfig(reduce_range=True, set_inductor_config=False))
    half_grid = {"divisor": 63.5, "qmin": -64, "qmax": 63}
    assert mismatches(rows_quantized(w, **half_grid), rt.torchao_weight_integers(lin)) == 0
    x = torch.randn(40, 64, generator=g)
    _, x_q, x_scale, _ = captured_activation(lin, x)
    assert mismatches(rows_quantized(x, **half_grid), (x_q, x_scale)) == 0
    ours, _, _ = dialect.quantize_activation(x, reduce_range=True)
    assert torch.equal(ours, dialect.quantize_activation(x)[0]) and not torch.equal(ours, x_q)
