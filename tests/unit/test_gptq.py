"""``glassquant.gptq``: Hessians, GPTQ integers and the ``WeightOnlyLinear`` they build.

References: an independent numpy float64 GPTQ written from the paper's optimal-brain-surgeon
update (G2) with an explicit inverse of ``H_F`` for every column — no Cholesky factor, no lazy
block updates — and eqs. 1-3 restated in numpy with one float32 rounding per step (as in
``test_weight_only.py``); round to nearest (``WeightOnlyLinear.from_float``) for diagonal
Hessians; the output error ``||X W^T - X Wq^T||^2`` in float64 for the quality claim.
Integers compare with ``torch.equal``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from safetensors.torch import load, save
from torch import Tensor, nn

from glassquant.gptq import (
    HessianAccumulator,
    gptq_model,
    gptq_quantize,
    hessian_from_inputs,
    quantize_linear_gptq,
)
from glassquant.kernels.int4 import unpack_int4
from glassquant.nn.weight_only import WeightOnlyLinear, quantize_int4_groupwise

F32 = np.float32
EPS = F32(2.0**-23)


# ----- independent reference ----------------------------------------------------------------------


def np_group_qparams(w32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 2 for one group (N, g) of float32 values: scale = max(f32(f32(hi - lo) / 15), eps),
    zp = clamp(-rne(f32(lo / scale)), 0, 15)."""
    lo = np.minimum(w32.min(axis=1), 0).astype(np.float64)
    hi = np.maximum(w32.max(axis=1), 0).astype(np.float64)
    scale = np.maximum(((hi - lo).astype(F32).astype(np.float64) / 15).astype(F32), EPS)  # (N,)
    zp = np.clip(-np.rint((lo / scale.astype(np.float64)).astype(F32)), 0, 15)  # np.rint: half to even
    return scale, zp


def naive_gptq(w: np.ndarray, h: np.ndarray, g: int, act_order: bool = False,
               percdamp: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ as the paper states it: round column c, then (G2) on every column F not yet rounded,
    with H_F^-1 inverted afresh; a group's qparams from its current weights when its first column is rounded."""
    w, h = w.astype(np.float64).copy(), h.astype(np.float64).copy()
    n, k = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    h += percdamp * np.mean(np.diag(h)) * np.eye(k)
    q = np.zeros((n, k), np.uint8)
    scale = np.zeros((n, k // g), F32)
    zp = np.zeros((n, k // g))
    started = np.zeros(k // g, bool)
    remaining = list(order)
    for c in order:
        grp = c // g
        if not started[grp]:
            scale[:, grp], zp[:, grp] = np_group_qparams(w[:, grp * g:(grp + 1) * g].astype(F32))
            started[grp] = True
        s, z = scale[:, grp].astype(np.float64), zp[:, grp]
        q_c = np.clip(np.rint((w[:, c].astype(F32).astype(np.float64) / s).astype(F32)) + z, 0, 15)
        wq = ((q_c - z) * s).astype(F32).astype(np.float64)  # eq. 1, one float32 multiply
        q[:, c] = q_c
        # torch's inverse: numpy's OpenBLAS would start its own threads beside the other xdist worker
        hinv = torch.linalg.inv(torch.from_numpy(h[np.ix_(remaining, remaining)])).numpy()  # remaining[0] == c
        w[:, remaining] -= np.outer((w[:, c] - wq) / hinv[0, 0], hinv[0])  # (G2)
        remaining.pop(0)
    return q, scale, zp.astype(np.uint8)


def correlated_problem(seed: int, n: int = 512, k: int = 256, out: int = 64) -> tuple[Tensor, Tensor]:
    """Weights N(0, 0.05^2); inputs with a decaying spectrum (strongly correlated features) and 4 outlier features."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) * torch.logspace(0, -2, k)[:, None]  # (K, K)
    x = torch.randn(n, k, generator=g) @ mix  # (n, K) @ (K, K) -> (n, K)
    x[:, :4] *= 10
    return torch.randn(out, k, generator=g) * 0.05, x


def output_error(w: Tensor, x: Tensor, q: Tensor, scale: Tensor, zp: Tensor) -> float:
    """``||X W^T - X Wq^T||^2`` in float64, Wq = (q - zp) * scale (eq. 1) restated in numpy."""
    g = w.shape[1] // scale.shape[1]
    wq = ((q.numpy().astype(np.float64) - np.repeat(zp.numpy(), g, 1)) * np.repeat(scale.numpy(), g, 1)).astype(F32)
    d = x.numpy().astype(np.float64) @ (w.numpy().astype(np.float64) - wq.astype(np.float64)).T  # (n, N)
    return float((d**2).sum())


def as_torch(ref: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in ref)  # type: ignore[return-value]


def assert_same(got: tuple[Tensor, Tensor, Tensor], want: tuple[Tensor, Tensor, Tensor]) -> None:
    for name, a, b in zip(("q", "scale", "zero_point"), got, want, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), (name, int((a != b).sum()))


# ----- Hessian --------------------------------------------------------------------------------------


def test_hessian_is_two_over_n_sum_of_outer_products_over_every_token() -> None:
    """Inputs on a grid of 1/4 in [-2, 2), 16 tokens in all: every float64 product and sum is exact, 2/16 is a
    power of two, so the accumulated matrix must equal the one-shot numpy sum bit for bit."""
    g = torch.Generator().manual_seed(0)
    x3 = torch.randint(-8, 8, (2, 3, 40), generator=g).to(torch.float32) / 4  # 6 tokens (B, T, K)
    x2 = torch.randint(-8, 8, (10, 40), generator=g).to(torch.float32) / 4  # 10 tokens
    rows = np.concatenate([x3.numpy().reshape(-1, 40), x2.numpy()]).astype(np.float64)  # (16, 40)
    want = torch.from_numpy(rows.T @ rows * (2.0 / 16))
    assert torch.equal(hessian_from_inputs([x3, x2]), want)
    acc = HessianAccumulator(40, "enc.fc")
    acc.add(x3)
    acc.add(x2.to(torch.float64))
    assert acc.tokens == 16 and torch.equal(acc.hessian(), want)
    assert torch.equal(hessian_from_inputs(x2), torch.from_numpy(x2.numpy().astype(np.float64).T
                                                                 @ x2.numpy().astype(np.float64) * (2.0 / 10)))


def test_gptq_does_not_depend_on_the_scale_of_h() -> None:
    """The reference divides by the number of *sequences*, we by tokens: H differs by a constant c. GPTQ is
    invariant: damping is relative, U scales by c^-1/2, the error (w - wq) / U_jj by c^1/2, their product not
    at all. With c = 4 every step scales exactly, so the integers are identical."""
    w, x = correlated_problem(1, n=256, k=128, out=16)
    h = hessian_from_inputs(x)
    assert_same(gptq_quantize(w, 4 * h, group_size=32), gptq_quantize(w, h, group_size=32))


# ----- GPTQ integers --------------------------------------------------------------------------------


@functools.cache
def obs_problem(act_order: bool) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Weights, H and the reference's integers (computed once per order)."""
    w, x = correlated_problem(2, n=300, k=192, out=24)
    x[:, 5] = 0.0
    x[:, 70] = 0.0
    w[3] = 0.0
    h = hessian_from_inputs(x)
    return w, h, as_torch(naive_gptq(w.numpy(), h.numpy(), 32, act_order))


@pytest.mark.parametrize("act_order", [False, True], ids=["in_order", "act_order"])
@pytest.mark.parametrize("block_size", [1, 48, 128])
def test_gptq_equals_the_column_by_column_obs_reference(block_size: int, act_order: bool) -> None:
    """Cholesky rows (G3) and lazy block updates give the same integers as (G2) with fresh inverses; blocks of
    48 cut groups of 32 in two, and act_order visits groups out of order (their qparams come from columns
    not yet updated by the current block). Two dead inputs (columns 5 and 70) and a zero weight row."""
    w, h, want = obs_problem(act_order)
    got = gptq_quantize(w, h, group_size=32, block_size=block_size, act_order=act_order)
    assert_same(got, want)
    q, scale, zp = got
    assert torch.equal(q[:, [5, 70]], zp[:, [0, 2]])  # dead inputs: weight 0, i.e. the zero point
    assert float(scale[3].max()) == 2.0**-23  # zero row: every group gets the zero-range scale


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_diagonal_hessian_is_round_to_nearest(group_size: int) -> None:
    """With H diagonal, every H_F^-1 is diagonal, so (G2) moves no column but the one just rounded (which is
    then discarded): each column is rounded from its original value, each group's qparams come from its
    original values, and the order (act_order) does not matter. In floats: the Cholesky factors of a
    diagonal matrix have exact zeros off the diagonal, so every update subtracts e * 0 = 0 and the float64
    weights stay the float32 originals exactly — the integers must equal round to nearest bit for bit."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 256, generator=g) * 0.05
    w[0, :group_size] = 0.0  # zero group
    w[1, :group_size] = torch.rand(group_size, generator=g) + 0.5  # one-signed groups: zero point 0 / 15
    w[2, :group_size] = -torch.rand(group_size, generator=g) - 0.5
    rtn = quantize_int4_groupwise(w, group_size)
    assert_same(gptq_quantize(w, torch.eye(256, dtype=torch.float64), group_size=group_size), rtn)
    diag = torch.diag(torch.rand(256, generator=g, dtype=torch.float64) + 0.1)
    assert_same(gptq_quantize(w, diag, group_size=group_size, block_size=48, act_order=True), rtn)
    lin = nn.Linear(256, 40)
    with torch.no_grad():
        lin.weight.copy_(w)
    ours, theirs = quantize_linear_gptq(lin, torch.eye(256), 4, group_size), \
        WeightOnlyLinear.from_float(lin, bits=4, group_size=group_size)
    for name, t in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], t), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_output_error_is_below_round_to_nearest(seed: int) -> None:
    """On the same grid, GPTQ minimizes ||X W^T - X Wq^T||^2 greedily; nothing forces it below RTN, so this
    can fail. Measured GPTQ/RTN error ratios, seeds 0-4: correlated inputs 0.070-0.090 (act_order
    0.062-0.078); i.i.d. N(0, 1) inputs 0.735-0.768. Asserted: < 0.15 and < 0.85."""
    w, x = correlated_problem(seed)
    h = hessian_from_inputs(x)
    for group_size in (32, 128):
        rtn = output_error(w, x, *quantize_int4_groupwise(w, group_size))
        for act_order in (False, True):
            gptq = output_error(w, x, *gptq_quantize(w, h, group_size=group_size, act_order=act_order))
            assert gptq < 0.15 * rtn, (group_size, act_order, gptq / rtn)
    g = torch.Generator().manual_seed(seed)
    x_iid = torch.randn(512, 256, generator=g)
    rtn = output_error(w, x_iid, *quantize_int4_groupwise(w, 64))
    gptq = output_error(w, x_iid, *gptq_quantize(w, hessian_from_inputs(x_iid), group_size=64))
    assert gptq < 0.85 * rtn, gptq / rtn


# ----- the layer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_layer_holds_the_gptq_integers_and_round_trips_its_record(bias: bool) -> None:
    w, x = correlated_problem(4, n=256, k=128, out=20)
    lin = nn.Linear(128, 20, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(w)
    h = hessian_from_inputs(x)
    layer = quantize_linear_gptq(lin, h, 4, 64, "enc.fc", act_order=True)
    q, scale, zp = gptq_quantize(w, h, group_size=64, act_order=True)
    assert layer.w_q.shape == (20, 64) and layer.w_q.dtype == torch.uint8
    assert torch.equal(unpack_int4(layer.w_q), q)
    assert torch.equal(layer.w_scale, scale) and layer.w_zero_point is not None
    assert torch.equal(layer.w_zero_point, zp)
    deq = (q.numpy().astype(np.float64) - np.repeat(zp.numpy(), 64, 1)) * np.repeat(scale.numpy(), 64, 1)
    assert torch.equal(layer.dequantize_weight(), torch.from_numpy(deq.astype(F32)))
    tensors, meta = layer.record()
    again = WeightOnlyLinear.from_record(load(save(tensors)), meta)  # through safetensors bytes
    assert set(again.state_dict()) == set(layer.state_dict())
    for name, t in layer.state_dict().items():
        assert again.state_dict()[name].dtype == t.dtype and torch.equal(again.state_dict()[name], t), name
    assert torch.equal(again(x[:8]), layer(x[:8]))
    assert (again.bits, again.group_size, again.name) == (4, 64, "enc.fc")


def test_gptq_model_uses_each_layers_float_inputs() -> None:
    """One pass of the float model: layer 2's Hessian comes from relu(fc1(x)) of the *float* fc1."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    fc1, fc2 = nn.Linear(64, 96), nn.Linear(96, 32)
    fc1.load_state_dict(model[0].state_dict())
    fc2.load_state_dict(model[2].state_dict())
    batches = [torch.randn(7, 64), torch.randn(3, 5, 64)]
    with torch.no_grad():
        h1 = hessian_from_inputs(batches)
        h2 = hessian_from_inputs([torch.relu(fc1(b)) for b in batches])
    out = gptq_model(model, batches, group_size=32)
    assert list(out) == ["0", "2"] and model[0] is out["0"] and model[2] is out["2"]
    for layer, ref in ((out["0"], quantize_linear_gptq(fc1, h1, 4, 32, "0")),
                       (out["2"], quantize_linear_gptq(fc2, h2, 4, 32, "2"))):
        for name, t in ref.state_dict().items():
            assert torch.equal(layer.state_dict()[name], t), name
    model2 = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    only = gptq_model(model2, [(b,) for b in batches], lambda m, b: m(*b), group_size=32, include=["2"],
                      replace=False)
    assert list(only) == ["2"] and type(model2[2]) is nn.Linear


# ----- bad input ------------------------------------------------------------------------------------


def test_bad_input_names_the_layer() -> None:
    w = torch.randn(8, 64)
    h = hessian_from_inputs(torch.randn(100, 64))
    with pytest.raises(ValueError, match=r"fc\.weight.*Hessian shape"):
        gptq_quantize(w, h[:32, :32], group_size=32, name="fc.weight")
    with pytest.raises(ValueError, match=r"fc\.weight.*NaN"):
        gptq_quantize(w, h.clone().fill_diagonal_(float("nan")), group_size=32, name="fc.weight")
    asym = h.clone()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match=r"fc\.weight.*not symmetric"):
        gptq_quantize(w, asym, group_size=32, name="fc.weight")
    with pytest.raises(ValueError, match=r"fc\.weight.*multiple of group_size 48"):
        gptq_quantize(w, h, group_size=48, name="fc.weight")
    with pytest.raises(ValueError, match="bits must be 4"):
        gptq_quantize(w, h, bits=8, group_size=32)
    with pytest.raises(ValueError, match="block_size"):
        gptq_quantize(w, h, group_size=32, block_size=0)
    with pytest.raises(ValueError, match="percdamp"):
        gptq_quantize(w, h, group_size=32, percdamp=-0.1)
    v = torch.rand(64, dtype=torch.float64) + 0.5
    with pytest.raises(ValueError, match=r"fc\.weight.*positive definite"):  # rank one, no dampening
        gptq_quantize(w, torch.outer(v, v), group_size=32, percdamp=0.0, name="fc.weight")
    w_bad = w.clone()
    w_bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"fc\.weight.*Inf"):
        gptq_quantize(w_bad, h, group_size=32, name="fc.weight")
    acc = HessianAccumulator(64, "layer 'enc.fc'")
    with pytest.raises(ValueError, match=r"enc\.fc.*no calibration input"):
        acc.hessian()
    with pytest.raises(ValueError, match=r"enc\.fc.*\(\.\.\., 64\)"):
        acc.add(torch.zeros(3, 63))
    with pytest.raises(TypeError, match=r"enc\.fc"):
        acc.add(torch.zeros(3, 64, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        quantize_linear_gptq(nn.Conv1d(2, 2, 1), h)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"enc\.fc.*group_size"):  # the layer's own rule: 32, 64 or 128
        quantize_linear_gptq(nn.Linear(96, 8), hessian_from_inputs(torch.randn(50, 96)), 4, 48, "enc.fc")


def test_gptq_model_bad_input() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(32, 8), nn.Linear(32, 8)

        def forward(self, x: Tensor) -> Tensor:
            return self.used(x)

    with pytest.raises(ValueError, match=r"'unused'.*never called"):
        gptq_model(TwoHeads(), [torch.randn(4, 32)], group_size=32)
    with pytest.raises(ValueError, match="batches is empty"):
        gptq_model(TwoHeads(), [], group_size=32)
    with pytest.raises(ValueError, match=r"no nn\.Linear.*nothing\*"):
        gptq_model(TwoHeads(), [torch.randn(4, 32)], group_size=32, include=["nothing*"])
    m = TwoHeads()
    gptq_model(m, [torch.randn(4, 32)], group_size=32, include=["used"])
    assert isinstance(m.used, WeightOnlyLinear) and type(m.unused) is nn.Linear
