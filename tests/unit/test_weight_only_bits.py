"""b-bit packed weights: ``kernels.int4.pack_bits`` / ``unpack_bits`` and ``nn.weight_only.PackedWeightOnlyLinear``.

References, independent of the code under test: a bit *string* built in pure Python for the packing
layout; the stated steps of eqs. 2-3 with clipping evaluated in numpy float32 (IEEE single, one
rounding per operation, as torch's float32) for codes, scales and zero points; ``x @ W.T + b`` with the
numpy-dequantized W for the outputs; the safetensors file itself for the stored bytes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn

import glassquant as gq
from glassquant.kernels import weight_only as wo_kernels
from glassquant.kernels.int4 import pack_bits, pack_int4, packed_bytes, unpack_bits
from glassquant.nn.base import LAYER_KINDS
from glassquant.nn.weight_only import MSE_CLIP_RATIOS, PackedWeightOnlyLinear

F32 = np.float32
EPS = F32(2.0**-23)
GRANULARITIES = [("per_tensor", None), ("per_channel", None), ("per_group", 32), ("per_group", 64),
                 ("per_group", 128)]


def reference_pack(codes: list[int], bits: int) -> list[int]:
    """The layout as text: each code's bits LSB first, concatenated; byte t = stream bits [8t, 8t + 8) LSB first."""
    stream = "".join(format(c, f"0{bits}b")[::-1] for c in codes)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[i:i + 8][::-1], 2) for i in range(0, len(stream), 8)]


def float_linear(n: int, k: int, seed: int, std: float = 0.05, bias: bool = True) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * std)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin


def np_groups(w: np.ndarray, granularity: str, g: int | None) -> np.ndarray:
    """(G, values) view of w: one row per (scale, zero point), in the stored order."""
    n, k = w.shape
    if granularity == "per_tensor":
        return w.reshape(1, n * k)
    if granularity == "per_channel":
        return w
    assert g is not None
    return w.reshape(n * (k // g), g)


def np_round_trip(grp: np.ndarray, bits: int, clip: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eqs. 2-3 with a clipped range, float32 steps: lo = min(min, 0), hi = max(max, 0);
    scale = max(f32(f32(hi*c) - f32(lo*c)) / f32(2^b - 1), eps); zp = clamp(-rne(f32(lo*c) / scale), 0, 2^b - 1);
    q = clamp(rne(w / scale) + zp, 0, 2^b - 1). Returns (q (G, values), scale (G,), zp (G,))."""
    qmax = 2**bits - 1
    lo = np.minimum(grp.min(axis=1), F32(0)) * clip
    hi = np.maximum(grp.max(axis=1), F32(0)) * clip
    scale = np.maximum((hi - lo) / F32(qmax), EPS).astype(F32)
    zp = np.clip(-np.rint(lo / scale), 0, qmax)
    q = np.clip(np.rint(grp / scale[:, None]) + zp[:, None], 0, qmax)
    return q.astype(np.int64), scale, zp.astype(np.int64)


def np_quantize(w: np.ndarray, bits: int, granularity: str, g: int | None,
                clip: float | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes (N, K), scales (G,) and zero points (G,) by the stated rule; ``"mse"``: per group the ratio
    of 1.0, 0.95, ..., 0.5 with the least float64 squared round-trip error (first on ties)."""
    grp = np_groups(w, granularity, g)
    if clip == "mse":
        ratios = [F32(r) for r in (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)]
        errs = []
        for r in ratios:
            q, s, z = np_round_trip(grp, bits, np.full(len(grp), r, dtype=F32))
            back = ((q - z[:, None]).astype(F32) * s[:, None]).astype(np.float64)
            errs.append(((back - grp.astype(np.float64)) ** 2).sum(axis=1))
        c = np.array(ratios, dtype=F32)[np.argmin(np.stack(errs), axis=0)]
    else:
        c = np.full(len(grp), F32(clip), dtype=F32)
    q, s, z = np_round_trip(grp, bits, c)
    return q.reshape(w.shape), s, z


# ----- packing -------------------------------------------------------------------------------------


def test_layout_worked_example_and_mutants() -> None:
    codes = torch.tensor([5, 2, 7], dtype=torch.uint8)
    assert pack_bits(codes, 3).tolist() == [0xD5, 0x01] == reference_pack([5, 2, 7], 3)
    # mutants: codes MSB first, or the stream filled from each byte's high bit, give other bytes
    assert reference_pack([5, 2, 7], 3) != [int("1010101110000000"[i:i + 8], 2) for i in (0, 8)]
    assert [0b10101011, 0b10000000] != pack_bits(codes, 3).tolist()
    q = torch.randint(0, 16, (5, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pack_bits(q, 4), pack_int4(q).reshape(-1))  # b = 4 is the int4 layout
    assert torch.equal(pack_bits(q, 8), q.reshape(-1))  # b = 8: the bytes are the codes


@settings(max_examples=150)
@given(st.integers(1, 8).flatmap(lambda b: st.tuples(st.just(b), st.lists(st.integers(0, 2**b - 1), max_size=70))))
def test_pack_unpack_round_trip_every_width(case: tuple[int, list[int]]) -> None:
    bits, values = case
    codes = torch.tensor(values, dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(len(values) * bits / 8)
    assert packed.tolist() == reference_pack(values, bits)
    assert torch.equal(unpack_bits(packed, bits, len(values)), codes)


def test_packing_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="outside \\[0, 7\\]"):
        pack_bits(torch.tensor([8], dtype=torch.uint8), 3)
    with pytest.raises(TypeError, match="uint8"):
        pack_bits(torch.tensor([1], dtype=torch.int8), 3)
    with pytest.raises(ValueError, match="bits must be in"):
        pack_bits(torch.tensor([1], dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 3, 9)  # 9 codes of 3 bits need 4 bytes
    assert packed_bytes(9, 3) == 4 and packed_bytes(0, 5) == 0


# ----- the layer: integers, dequantized weights, outputs, bytes ----------------------------------------


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize(("granularity", "group_size"), GRANULARITIES)
def test_integers_and_dequantized_weight_match_the_stated_rule(bits: int, granularity: str,
                                                               group_size: int | None) -> None:
    lin = float_linear(24, 256, seed=bits)
    w = lin.weight.detach().numpy().astype(F32)
    for clip in (1.0, 0.9, "mse"):
        layer = PackedWeightOnlyLinear.from_float(lin, bits=bits, granularity=granularity, group_size=group_size,
                                                  clip=clip)
        q, scale, zp = np_quantize(w, bits, granularity, group_size, clip)
        assert np.array_equal(layer.codes().numpy().astype(np.int64), q), clip
        assert np.array_equal(layer.w_scale.reshape(-1).numpy(), scale), clip
        assert np.array_equal(layer.zero_points().reshape(-1).numpy().astype(np.int64), zp), clip
        dq = (np_groups(q, granularity, group_size) - zp[:, None]).astype(F32) * scale[:, None]  # (G, values)
        assert np.array_equal(layer.dequantize_weight().numpy(), dq.reshape(w.shape)), clip
    # the clip matters: the tightest ratio of the mse search changes some integers at 8 bits
    loose = PackedWeightOnlyLinear.from_float(lin, bits=bits, granularity=granularity, group_size=group_size)
    tight = PackedWeightOnlyLinear.from_float(lin, bits=bits, granularity=granularity, group_size=group_size,
                                              clip=MSE_CLIP_RATIOS[-1])
    assert not torch.equal(loose.codes(), tight.codes())


@settings(max_examples=60)
@given(bits=st.integers(2, 8), gran=st.sampled_from(GRANULARITIES), n=st.integers(1, 9), groups=st.integers(1, 3),
       seed=st.integers(0, 2**31), clip=st.sampled_from([1.0, 0.95, 0.85, 0.5, "mse"]), bias=st.booleans())
def test_property_outputs_equal_dequantize_then_matmul(bits: int, gran: tuple[str, int | None], n: int, groups: int,
                                                       seed: int, clip: float | str, bias: bool) -> None:
    granularity, group_size = gran
    k = 128 * groups
    lin = float_linear(n, k, seed, std=float(np.exp(np.random.default_rng(seed).uniform(-6, 2))), bias=bias)
    layer = PackedWeightOnlyLinear.from_float(lin, bits=bits, granularity=granularity, group_size=group_size, clip=clip)
    q, scale, zp = np_quantize(lin.weight.detach().numpy().astype(F32), bits, granularity, group_size, clip)
    dq = ((np_groups(q, granularity, group_size) - zp[:, None]).astype(F32) * scale[:, None]).reshape(n, k)
    assert q.min() >= 0 and q.max() <= 2**bits - 1
    assert np.array_equal(layer.codes().numpy().astype(np.int64), q)
    x = torch.randn(3, 7, k, generator=torch.Generator().manual_seed(seed))
    expected = x.reshape(-1, k) @ torch.from_numpy(dq).T  # (21, K) @ (K, N)
    if bias:
        expected = expected + lin.bias.detach()
    # more rows than the streaming kernel takes: the dequantized weight (compiled or not) and the same matmul
    assert 21 > wo_kernels.GEMV_MAX_ROWS
    assert torch.equal(layer(x), expected.reshape(3, 7, n))
    # few rows (the streaming kernel where built): the same float32 weight, another summation order --
    # within the float32 error bound of the exact product, (K + 2) u sum |x||w| + |b| u (u = 2**-24)
    few = x[0, :5]
    exact = few.double() @ torch.from_numpy(dq).double().T + (lin.bias.detach().double() if bias else 0.0)
    bound = (k + 2) * 2.0**-24 * (few.double().abs() @ torch.from_numpy(dq).double().abs().T
                                  + (lin.bias.detach().double().abs() if bias else 0.0))
    assert bool(((layer(few).double() - exact).abs() <= bound).all())
    g_count = scale.size
    assert layer.weight_bytes() == math.ceil(n * k * bits / 8) + 4 * g_count + math.ceil(g_count * bits / 8)


def test_half_even_tie_and_zero_is_exact() -> None:
    """Range (0, 1.5) at 2 bits: scale 0.5, zero point 0; 0.25 / 0.5 = 0.5 rounds to 0 (half even, a
    half-away mutant gives 1), 0.75 -> 1.5 -> 2; and 0.0 comes back as exactly 0.0."""
    lin = nn.Linear(32, 1, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, :4] = torch.tensor([0.25, 0.75, 1.5, 0.0])
    layer = PackedWeightOnlyLinear.from_float(lin, bits=2, granularity="per_channel")
    assert float(layer.w_scale) == 0.5 and layer.zero_points().tolist() == [[0]]
    assert layer.codes()[0, :4].tolist() == [0, 2, 3, 0]
    assert math.floor(0.25 / 0.5 + 0.5) == 1  # the mutant rule
    assert layer.dequantize_weight()[0, 3].item() == 0.0


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_bytes_reported_equal_bytes_stored(bits: int, tmp_path) -> None:
    lin = float_linear(40, 96, seed=1)
    model = nn.Sequential(PackedWeightOnlyLinear.from_float(lin, bits=bits, granularity="per_group", group_size=32),
                          nn.ReLU(), PackedWeightOnlyLinear.from_float(float_linear(7, 40, 2), bits=bits,
                                                                       granularity="per_tensor"))
    path = tmp_path / "m.safetensors"
    gq.save(model, path)
    with safe_open(str(path), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    for i, (n, k, groups) in ((0, (40, 96, 40 * 3)), (2, (7, 40, 1))):
        layer = model[i]
        on_disk = sum(stored[f"{i}.{t}"].numel() * stored[f"{i}.{t}"].element_size()
                      for t in ("w_q", "w_scale", "w_zero_point"))
        formula = math.ceil(n * k * bits / 8) + 4 * groups + math.ceil(groups * bits / 8)
        assert layer.weight_bytes() == on_disk == formula
    reloaded = gq.load(path)
    x = torch.randn(11, 96)
    assert torch.equal(reloaded(x), model(x))
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values(),
                                                  strict=True))


def test_registered_and_record_round_trip() -> None:
    assert LAYER_KINDS["PackedWeightOnlyLinear"] is PackedWeightOnlyLinear
    assert "WeightOnlyLinear" in LAYER_KINDS  # the int8 / int4 kind is unchanged
    layer = PackedWeightOnlyLinear.from_float(float_linear(5, 64, 3), bits=3, granularity="per_group", group_size=32,
                                              clip="mse", name="fc")
    tensors, meta = layer.record()
    assert meta == {"bits": 3, "granularity": "per_group", "group_size": 32, "in_features": 64, "out_features": 5,
                    "name": "fc"}
    again = PackedWeightOnlyLinear.from_record(tensors, meta)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), layer.state_dict().values(),
                                                  strict=True))


def test_bad_input_names_the_layer() -> None:
    lin = float_linear(4, 64, 0)
    for kwargs, match in (({"bits": 1}, "bits must be in 2..8"), ({"bits": 9}, "bits must be in 2..8"),
                          ({"bits": 4, "group_size": 48}, "group_size must be one of"),
                          ({"bits": 4, "granularity": "per_row"}, "granularity must be one of"),
                          ({"bits": 4, "clip": 0.0}, "clip must be"), ({"bits": 4, "clip": 1.5}, "clip must be"),
                          ({"bits": 4, "group_size": 128}, "not a multiple of group_size")):
        with pytest.raises(ValueError, match=match):
            PackedWeightOnlyLinear.from_float(lin, **{"granularity": "per_group", "group_size": 32, **kwargs},
                                              name="fc")
    good = PackedWeightOnlyLinear.from_float(lin, bits=3, granularity="per_channel", name="fc")
    tensors, meta = good.record()
    with pytest.raises(ValueError, match="fc: w_q must be 1-D"):
        PackedWeightOnlyLinear.from_record({**tensors, "w_q": tensors["w_q"][:-1]}, meta)
    with pytest.raises(ValueError, match="fc: w_scale must be positive"):
        PackedWeightOnlyLinear.from_record({**tensors, "w_scale": -tensors["w_scale"]}, meta)
    with pytest.raises(ValueError, match="fc: group_size is only for per_group"):
        PackedWeightOnlyLinear.from_record(tensors, {**meta, "group_size": 32})
    with pytest.raises(ValueError, match="fc: input has 63 features"):
        good(torch.randn(2, 63))
    x = torch.zeros(1, 64)
    x[0, 5] = float("nan")
    with pytest.raises(ValueError, match="fc: input: contains 1 NaN"):
        good(x)
