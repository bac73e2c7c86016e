"""``kernels.gpu``: the Triton kernels, run by Triton's CPU interpreter, against the reference dialects.

The kernels run under ``TRITON_INTERPRET=1`` in a child Python that this file starts (see
:func:`in_child`): the interpreter runs them with numpy on CPU tensors. References:
:mod:`glassquant.dialects.torchao` (W8A8 activations, accumulators and float32 outputs -- proven against torchao in
tests/equivalence/test_torchao.py) and :mod:`glassquant.nn.weight_only` / ``kernels.int4`` (the
stored weight formats), plus float64 sums written in this file. Integers and W8A8 floats
compare with ``torch.equal``; weight-only floats by the a-priori bound of docs/gpu.md, and
exactly on one-hot rows. What the interpreter cannot show -- FMA contraction, tf32, tensor-core
accumulation -- ``benchmarks/gpu.py`` re-checks on a GPU; here the mutant checks show the
inputs on which those would differ.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from glassquant.dialects import torchao
from glassquant.floatops import fma_f32
from glassquant.kernels.int4 import unpack_int4
from glassquant.nn.weight_only import INT8_PER_ROW, WeightOnlyLinear

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'glassquant[gpu]'): the Triton kernels are not tested",
                allow_module_level=True)

#: numpy warns where float32 really overflows (a 3e38 row's outputs are Inf, in the reference too) or Inf * 0 is NaN
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")
#: True in the child process that runs the kernels through Triton's interpreter.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
RNE_MAGIC = 12582912.0


def in_child(test: Callable[..., None]) -> Callable[..., None] | None:
    """Keep ``test`` only in the interpreter child; in the parent it is run by :func:`test_kernels_in_interpreter`.

    Triton decides interpreter-or-GPU when ``@triton.jit`` runs -- for its own library too, at
    ``import triton`` -- so a process that imported triton before (torchao does, and pytest
    imports every test module first) cannot switch. The parent therefore starts one child
    Python with ``TRITON_INTERPRET=1`` that runs this file.
    """
    return test if INTERPRETED else None


def in_parent(test: Callable[..., None]) -> Callable[..., None] | None:
    """Keep ``test`` only in the parent process (the launcher of the child)."""
    return None if INTERPRETED else test


@in_parent
def test_kernels_in_interpreter() -> None:
    """Run every test of this file in a child process with TRITON_INTERPRET=1 (all must pass)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--durations=3",
           str(Path(__file__).resolve())]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"interpreter tests failed (rc {proc.returncode}):\n{out[-6000:]}"
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, out[-3000:]
    print(summary)


if INTERPRETED:
    from glassquant.kernels.gpu import _common, configs, w8a8
    from glassquant.kernels.gpu import weight_only as wo

    TileConfig = configs.TileConfig


@in_child
def test_kernels_run_in_the_interpreter() -> None:
    for kernel in (w8a8._quantize_rows_kernel, w8a8._w8a8_gemm_kernel, wo._weight_only_kernel, wo._unpack_kernel):
        assert _common.is_interpreted(kernel)


# ---------------------------------------------------------------- W8A8: activations


def activation_rows(g: torch.Generator, k: int) -> tuple[Tensor, dict[str, slice]]:
    """Float32 rows (78, k): random magnitudes, exact .5 ties, ties only after rounding, and special rows."""
    mag = torch.pow(10.0, torch.randint(-30, 30, (24, 1), generator=g).to(torch.float32))
    rand = torch.randn((24, k), generator=g) * mag  # 1e-30 .. 1e29
    # exact ties: a row max 127.5 * 2**-e gives scale 2**-e, so (j + 0.5) * 2**-e lands on a tie
    unit = torch.pow(2.0, -torch.randint(-20, 20, (24, 1), generator=g).to(torch.float64))
    ties = (torch.randint(-128, 128, (24, k), generator=g) + 0.5) * unit
    ties[:, 0], ties[:, 1] = 127.5 * unit[:, 0], -127.5 * unit[:, 0]  # -> 127 (clamped) and -128 (tie to even)
    # ties after rounding: an arbitrary row max A; x = f32((j + 0.5) / inv) makes f32(x * inv) == j + 0.5 often
    # while the exact product is not a tie -- an FMA (one rounding) would round those the other way
    amax = (torch.rand((24, 1), generator=g, dtype=torch.float64) + 0.5) * 10.0 ** torch.randint(-3, 4, (24, 1),
                                                                                              generator=g)
    amax = amax.to(torch.float32)
    inv = (1.0 / torchao.choose_qparams(-amax, amax)[0]).to(torch.float64)  # f32(1/scale), exact in float64
    rounded = ((torch.randint(-127, 127, (24, k), generator=g) + 0.5) / inv).to(torch.float32)
    rounded[:, 0] = amax[:, 0]
    special = torch.zeros((6, k))
    tiny, big = torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).max
    special[1] = torch.linspace(-1e-38, 1e-38, k)  # amax / 127.5 < eps: the clamp at 2**-23
    special[2, :3] = torch.tensor([tiny / 4, -tiny / 8, tiny])  # subnormals
    special[3, :5] = torch.tensor([-big, -big / 2, -1.0, big / 3, big])  # huge: no overflow
    special[4] = -0.0
    special[5] = torch.arange(k, dtype=torch.float32) * 3.0e-7 - 1.0e-5
    x = torch.cat([rand, ties.to(torch.float32), rounded, special])  # (78, k)
    return x, {"random": slice(0, 24), "ties": slice(24, 48), "rounded_ties": slice(48, 72), "special": slice(72, 78)}


@in_child
def test_quantize_activation_exact() -> None:
    g = torch.Generator().manual_seed(0)
    x, part = activation_rows(g, 300)  # K = 300: not a multiple of block_k = 128
    q, s = w8a8.quantize_activation(x, block_k=128, block_m=16)  # 78 rows: a partial last block
    q_ref, s_ref, _ = torchao.quantize_activation(x)
    assert q.dtype == torch.int8 and s.shape == (78, 1)
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)  # 23,400 integers, 78 scales
    assert float(s[72]) == torchao.SCALE_EPS and bool((q[72:75] == 0).all())
    assert int(q[24:48, 0].max()) == 127 and int(q[24:48, 1].min()) == -128

    inv = (1.0 / s_ref).to(torch.float32)
    v = x * inv  # float32 products, rounded once
    # mutant 1: ties rounded away from zero -- differs on the tie rows
    half_away = (torch.sign(v) * torch.floor(v.abs() + 0.5)).clamp(-128, 127).to(torch.int8)
    assert int((half_away[part["ties"]] != q[part["ties"]]).sum()) > 24 * 300 // 4
    # mutant 2: x * inv fused into the rounding add (one FMA rounding, as with enable_fp_fusion=True on a GPU)
    xr, invr, qr = x[part["rounded_ties"]], inv[part["rounded_ties"]], q[part["rounded_ties"]]
    fused = (fma_f32(xr, invr.expand_as(xr), RNE_MAGIC) - RNE_MAGIC).clamp(-128, 127).to(torch.int8)
    n_fused = int((fused != qr).sum())
    assert n_fused > 100, n_fused  # these inputs catch a contracted multiply-add
    # mutant 3: true division x / scale instead of x * f32(1/scale)
    divided = torch.round(x / s_ref).clamp(-128, 127).to(torch.int8)
    assert int((divided != q).sum()) > 0


@in_child
def test_quantize_activation_low_precision_inputs_and_one_row() -> None:
    g = torch.Generator().manual_seed(1)
    x, _ = activation_rows(g, 70)
    unit16 = torch.pow(2.0, -torch.randint(0, 8, (24, 1), generator=g).to(torch.float32))
    ties16 = (torch.randint(-128, 128, (24, 70), generator=g) + 0.5) * unit16  # exact in float16 (9 bits)
    ties16[:, 0] = 127.5 * unit16[:, 0]
    x16 = torch.cat([torch.randn(24, 70, generator=g) * 100, ties16])
    for dt, xs in ((torch.bfloat16, x[:48]), (torch.float16, x16)):
        xd = xs.to(dt)  # random + tie rows (float16: within its range)
        q, s = w8a8.quantize_activation(xd, block_k=32, block_m=8)
        q_ref, s_ref, _ = torchao.quantize_activation(xd.float())
        assert torch.equal(s, s_ref) and torch.equal(q, q_ref)
    one = x[30:31]  # M = 1, one chunk
    q, s = w8a8.quantize_activation(one)
    q_ref, s_ref, _ = torchao.quantize_activation(one)
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)
    xt = torch.randn(40, 9, generator=g).t()  # (9, 40) transposed: row stride 1, column stride 9
    q, s = w8a8.quantize_activation(xt)
    assert torch.equal(q, torchao.quantize_activation(xt)[0])


@in_child
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_quantize_activation_non_finite(bad: float) -> None:
    x = torch.ones((5, 40))
    x[3, 33] = bad
    with pytest.raises(ValueError, match="NaN"):
        w8a8.quantize_activation(x, block_k=16)
    w8a8.quantize_activation(x, check=False)  # unchecked: runs, integers unspecified
    with pytest.raises(ValueError, match="non-empty"):
        w8a8.quantize_activation(torch.ones(0, 4))
    with pytest.raises(TypeError, match="float32"):
        w8a8.quantize_activation(torch.ones(2, 4, dtype=torch.float64))


# ---------------------------------------------------------------- W8A8: GEMM and epilogue


def _weights(g: torch.Generator, n: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    w = torch.randn((n, k), generator=g) * torch.rand((n, 1), generator=g)
    w[0] = 0.0  # all-zero row: scale eps, zero integers
    w[1] = (torch.randint(-128, 128, (k,), generator=g) + 0.5) / 4  # exact ties at scale 0.25
    w[1, 0] = 127.5 / 4
    w_q, w_scale, _ = torchao.quantize_weight(w, INT8_PER_ROW)
    return w_q, w_scale, torch.randn(n, generator=g)


@in_child
def test_linear_dynamic_float32_exact() -> None:
    g = torch.Generator().manual_seed(2)
    x, _ = activation_rows(g, 300)
    w_q, w_scale, b = _weights(g, 260, 300)
    ref = torchao.linear_dynamic(x, w_q, w_scale, 0, b)
    y = w8a8.linear_dynamic(x, w_q, w_scale, b, config=TileConfig(32, 64, 64, group_m=2))
    assert y.dtype == torch.float32 and torch.equal(y, ref)  # 20,280 float32 outputs, 0 mismatches
    x_q, x_scale, _ = torchao.quantize_activation(x)
    y_nb = w8a8.gemm(x_q, x_scale, w_q, w_scale, None, config=TileConfig(16, 128, 128, group_m=1))
    assert torch.equal(y_nb, torchao.dynamic_output(x_q.long() @ w_q.long().T, x_scale, w_scale, None))
    assert torch.equal(w8a8.linear_dynamic(x[:26].reshape(2, 13, 300), w_q, w_scale, b), ref[:26].reshape(2, 13, 260))

    # mutants of the epilogue, on these very outputs: one FMA for (.) * sw + b, or sx * sw multiplied first
    acc = (x_q.to(torch.int64) @ w_q.to(torch.int64).T).to(torch.float32)  # (M, N), rounded past 2**24
    t = acc * x_scale
    assert int((fma_f32(t, w_scale.expand_as(t), b.expand_as(t)) != y).sum()) > 100
    assert int((acc * (x_scale * w_scale) + b != y).sum()) > 100


@in_child
def test_gemm_accumulators_exact_past_2_pow_24() -> None:
    g = torch.Generator().manual_seed(3)
    m, n, k = 20, 64, 1100  # K not a multiple of block_k; |acc| up to 1100 * 16384 > 2**24
    x_q = torch.where(torch.rand((m, k), generator=g) < 0.5, -128, 127).to(torch.int8)
    w_q = torch.where(torch.rand((n, k), generator=g) < 0.5, -128, 127).to(torch.int8)
    x_q[10:], w_q[32:] = -128, -128  # near the largest sums: |acc| > 2**24 with odd parts from the random entries
    x_q[10:, :30] = torch.randint(-128, 128, (m - 10, 30), generator=g, dtype=torch.int8)
    w_q[32:, :30] = torch.randint(-128, 128, (n - 32, 30), generator=g, dtype=torch.int8)
    x_q[0], w_q[0] = -128, -128  # acc[0, 0] = 1100 * 16384, the largest
    x_q[1] = torch.randint(-128, 128, (k,), generator=g, dtype=torch.int8)
    sx = torch.rand((m, 1), generator=g) * 1e-2
    sw = torch.rand(n, generator=g) * 1e-3
    b = torch.randn(n, generator=g)
    expected = x_q.to(torch.int64) @ w_q.to(torch.int64).T  # (M, K) @ (K, N) -> (M, N) int64, exact
    for cfg in (TileConfig(16, 32, 64), TileConfig(32, 64, 128, group_m=1)):
        acc = w8a8.gemm(x_q, sx, w_q, sw, b, torch.int32, cfg)
        assert acc.dtype == torch.int32 and torch.equal(acc.to(torch.int64), expected)
        y = w8a8.gemm(x_q, sx, w_q, sw, b, torch.float32, cfg)
        assert torch.equal(y, torchao.dynamic_output(expected, sx, sw, b))
    assert int(expected[0, 0]) == k * 16384
    assert bool((expected.to(torch.float32).to(torch.int64) != expected).any())  # f32(acc) really rounds here
    y_t = w8a8.gemm(x_q, sx, w_q, float(sw[0]), None, torch.float32, TileConfig(16, 64, 64))  # per-tensor scale
    assert torch.equal(y_t, torchao.dynamic_output(expected, sx, float(sw[0]), None))


@in_child
def test_linear_dynamic_bfloat16_in_and_out() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn((37, 200), generator=g) * 3
    w_q, w_scale, b = _weights(g, 96, 200)
    ref = torchao.linear_dynamic(x, w_q, w_scale, 0, b)
    y16 = w8a8.linear_dynamic(x, w_q, w_scale, b, out_dtype=torch.bfloat16, config=TileConfig(16, 32, 64))
    assert y16.dtype == torch.bfloat16 and torch.equal(y16, ref.to(torch.bfloat16))  # nearest-even, bit for bit
    truncated = (ref.view(torch.int32) >> 16 << 16).view(torch.float32).to(torch.bfloat16)
    assert int((truncated != y16).sum()) > 100  # round-toward-zero would differ
    xb = x.to(torch.bfloat16)
    yb = w8a8.linear_dynamic(xb, w_q, w_scale, b, config=TileConfig(16, 32, 64))
    assert torch.equal(yb, torchao.linear_dynamic(xb.float(), w_q, w_scale, 0, b))
    y1 = w8a8.linear_dynamic(x[5], w_q, w_scale, b, config=TileConfig(16, 32, 64))  # M = 1: rows wrap in the tile
    assert torch.equal(y1, ref[5])


@in_child
def test_w8a8_bad_arguments() -> None:
    x_q = torch.zeros((4, 8), dtype=torch.int8)
    w_q = torch.zeros((3, 8), dtype=torch.int8)
    sx, sw = torch.ones(4), torch.ones(3)
    with pytest.raises(TypeError, match="w_q"):
        w8a8.gemm(x_q, sx, w_q.to(torch.int16), sw)
    with pytest.raises(ValueError, match="w_scale"):
        w8a8.gemm(x_q, sx, w_q, torch.ones(2))
    with pytest.raises(ValueError, match="x_scale"):
        w8a8.gemm(x_q, torch.ones(3), w_q, sw)
    with pytest.raises(ValueError, match="bias"):
        w8a8.gemm(x_q, sx, w_q, sw, torch.ones(4))
    with pytest.raises(ValueError, match="out_dtype"):
        w8a8.gemm(x_q, sx, w_q, sw, out_dtype=torch.float16)
    with pytest.raises(ValueError, match="overflow"):
        big = torch.zeros((1, w8a8.MAX_K + 1), dtype=torch.int8)
        w8a8.gemm(big, torch.ones(1), big, torch.ones(1))
    with pytest.raises(ValueError, match="features"):
        w8a8.linear_dynamic(torch.ones(2, 7), w_q, sw)
    with pytest.raises(ValueError, match="power of two"):
        TileConfig(48, 64, 64)
    with pytest.raises(ValueError, match="tensor-core"):
        w8a8.gemm(x_q, sx, w_q, sw, config=TileConfig(16, 16, 16))


# ---------------------------------------------------------------- weight-only: integers


def _int4_layer(g: torch.Generator, n: int, k: int, group_size: int, bias: bool = True) -> WeightOnlyLinear:
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn((n, k), generator=g) * 0.1 + torch.randn((n, 1), generator=g) * 0.05)
        lin.weight[0] = 0.0  # an all-zero row: scale eps, zero point 0
        lin.weight[1, :group_size] = torch.linspace(0.5, 2.0, group_size)  # a one-signed group: zero point 0
        lin.weight[2, :group_size] = -torch.linspace(0.5, 2.0, group_size)  # zero point 15
    return WeightOnlyLinear.from_float(lin, bits=4, group_size=group_size)


def _reference_integers(layer: WeightOnlyLinear) -> tuple[Tensor, Tensor]:
    """(d int32 (N, K), scale float32 (N, K)) from the stored buffers, by kernels.int4 and torch."""
    if layer.bits == 8:
        return layer.w_q.to(torch.int32), layer.w_scale.expand(-1, layer.in_features)
    assert layer.w_zero_point is not None
    g = layer.group_size
    q = unpack_int4(layer.w_q).to(torch.int32)  # (N, K) in [0, 15]
    return q - layer.w_zero_point.to(torch.int32).repeat_interleave(g, 1), layer.w_scale.repeat_interleave(g, 1)


@in_child
@pytest.mark.parametrize("group_size,block_k", [(32, 32), (64, 64), (128, 64)])
def test_unpack_int4_exact(group_size: int, block_k: int) -> None:
    g = torch.Generator().manual_seed(group_size)
    layer = _int4_layer(g, 40, 512, group_size)
    assert layer.w_zero_point is not None
    d, s_k = wo.unpack_weights(layer.w_q, layer.w_scale, layer.w_zero_point, 4, group_size, block_n=32,
                               block_k=block_k)
    d_ref, s_ref = _reference_integers(layer)
    assert torch.equal(d, d_ref) and torch.equal(s_k, s_ref)  # 20,480 integers and scales, 0 mismatches
    assert int(d.min()) >= -15 and int(d.max()) <= 15 and {0, 15} <= set(layer.w_zero_point.flatten().tolist())
    # mutants: high nibble first, or a symmetric zero point of 8, give other integers
    q = unpack_int4(layer.w_q).to(torch.int32)
    swapped = q.reshape(40, 256, 2).flip(-1).reshape(40, 512)
    assert int((swapped - (q - d) != d).sum()) > 10_000
    assert int((q - 8 != d).sum()) > 10_000


@in_child
def test_unpack_int8_exact() -> None:
    lin = torch.nn.Linear(300, 80)
    layer = WeightOnlyLinear.from_float(lin, bits=8)
    d, s_k = wo.unpack_weights(layer.w_q, layer.w_scale, None, 8, block_n=32, block_k=64)  # K = 300: a tail
    d_ref, s_ref = _reference_integers(layer)
    assert torch.equal(d, d_ref) and torch.equal(s_k, s_ref)  # 24,000 integers and scales


# ---------------------------------------------------------------- weight-only: outputs

U32 = 2.0**-23  # float32 unit roundoff, doubled: tensor cores may accumulate with truncation
ONE_HOT = {torch.float32: 1 + 2.0**-15, torch.bfloat16: 1 + 2.0**-7, torch.float16: 1 + 2.0**-10}


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def weight_only_inputs(g: torch.Generator, m: int, k: int, dtype: torch.dtype) -> tuple[Tensor, list[int]]:
    """Rows of ``x``: random ones, then one-hot rows (a single value at column k_i), returned with the k_i.

    The one-hot value has more significant bits than tf32 keeps (or than bfloat16, for float32
    inputs), so a kernel that rounded x before multiplying would miss the exact result.
    """
    n_hot = max(1, min(m // 2, 24))
    x = torch.randn((m, k), generator=g) * 10.0 ** torch.randint(-2, 3, (m, 1), generator=g)
    cols = [0, 1, k - 1, k - 2, 31, 32, 63, 64, 127, 128, *torch.randint(0, k, (n_hot,), generator=g).tolist()]
    cols = [c % k for c in cols[:n_hot]]
    for i, c in enumerate(cols):
        r = m - n_hot + i
        x[r] = 0.0
        x[r, c] = ONE_HOT[dtype] * 2.0 ** int(torch.randint(-3, 4, (1,), generator=g)) * (-1) ** i
    return x.to(dtype), cols


def check_bound(layer: WeightOnlyLinear, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Assert ``|y - exact| <= gamma(K + 2) * (sum |x d s| + |b|)`` everywhere; returns (exact, bound, x64, w64)."""
    d, s = _reference_integers(layer)
    w64 = d.to(torch.float64) * s.to(torch.float64)  # (N, K) exact
    x64 = x.to(torch.float64)
    b64 = torch.zeros(layer.out_features, dtype=torch.float64) if layer.bias is None else layer.bias.double()
    exact = x64 @ w64.T + b64  # (M, K) @ (K, N) -> (M, N); float64 error far below the bound
    k = layer.in_features
    mass = x64.abs() @ w64.abs().T + b64.abs()
    bound = (_gamma(k + 2, U32) + _gamma(k + 2, 2.0**-53)) * mass + 2.0**-140
    err = (y.to(torch.float64) - exact).abs()
    assert bool((err <= bound).all()), float((err / bound).max())
    return exact, bound, x64, w64


def check_weight_only(layer: WeightOnlyLinear, x: Tensor, cols: list[int], y: Tensor) -> int:
    """Assert the a-priori bound on every output and exactness on the one-hot rows; returns outputs compared."""
    exact, bound, x64, w64 = check_bound(layer, x, y)
    d, s = _reference_integers(layer)
    k = layer.in_features
    b64 = exact - x64 @ w64.T
    # one-hot rows: x * d is exact in float32, one rounding by the scale, one by the bias, in any order
    n_hot = len(cols)
    hot = y[-n_hot:]
    prod = (x64[-n_hot:].sum(1, keepdim=True) * w64[:, cols].T).to(torch.float32)  # (n_hot, N): f32(x d s)
    expected = prod if layer.bias is None else prod + layer.bias
    assert torch.equal(hot, expected)
    if x.dtype == torch.float32:  # the one-hot values do not survive tf32 or bfloat16: rounding x would show
        assert bool((x[-n_hot:].to(torch.bfloat16).double() != x64[-n_hot:]).any(1).all())
    # the bound would catch these wrong weights: nibbles swapped (int4), every 7th integer off by one (int8)
    if layer.bits == 4:
        q = unpack_int4(layer.w_q).to(torch.int32)
        swapped = q.reshape(q.shape[0], -1, 2).flip(-1).reshape(q.shape)
        wrong = (swapped - (q - d)).to(torch.float64) * s.to(torch.float64)
    else:
        wrong = (d + (torch.arange(k) % 7 == 0).to(torch.int32)).to(torch.float64) * s.to(torch.float64)
    assert bool(((x64 @ wrong.T + b64 - exact).abs() > bound).any())
    return y.numel()


#: (input dtype, tile, rows): the GEMV path (block_m 1) at decode sizes, split-K with atomics, the dot path
#: past one tile; block_k 64 divides every group size tested.
WO_RUNS = [(torch.float32, TileConfig(1, 64, 64, split_k=3), 2), (torch.bfloat16, TileConfig(1, 128, 64), 2),
           (torch.float16, TileConfig(1, 32, 64, split_k=2), 1), (torch.float32, TileConfig(16, 64, 64, split_k=2), 37),
           (torch.bfloat16, TileConfig(32, 128, 64), 37), (torch.float16, TileConfig(64, 128, 64), 70),
           ] if INTERPRETED else []


@in_child
@pytest.mark.parametrize("bits,group_size", [(8, 0), (4, 64), (4, 128)])
def test_weight_only_outputs(bits: int, group_size: int) -> None:
    g = torch.Generator().manual_seed(bits + group_size)
    if bits == 8:
        layer = WeightOnlyLinear.from_float(torch.nn.Linear(300, 200), bits=8)  # K = 300: a tail tile
    else:
        layer = _int4_layer(g, 200, 256, group_size)
    compared = 0
    for dtype, cfg, m in WO_RUNS:
        x, cols = weight_only_inputs(g, m, layer.in_features, dtype)
        y = wo.linear_module(layer, x, cfg)
        assert y.dtype == torch.float32 and y.shape == (m, layer.out_features)
        compared += check_weight_only(layer, x, cols, y)
    assert compared >= 20_000, compared
    # the default configuration and leading dimensions; the reference module's float path obeys the same bound
    x, cols = weight_only_inputs(g, 16, layer.in_features, torch.float32)
    y = wo.linear_module(layer, x.reshape(2, 8, -1)).reshape(16, -1)
    check_weight_only(layer, x, cols, y)
    ref = layer(x)
    check_bound(layer, x, ref)
    if bits == 8:  # the same roundings on one-hot rows: f32(f32(x w) s) + b
        assert torch.equal(y[-len(cols):], ref[-len(cols):])


@in_child
def test_weight_only_bad_arguments() -> None:
    layer = WeightOnlyLinear.from_float(torch.nn.Linear(128, 8), bits=4, group_size=64)
    with pytest.raises(ValueError, match="block_k"):
        wo.linear_module(layer, torch.randn(2, 128), TileConfig(1, 32, 128))
    with pytest.raises(ValueError, match="block_m 1"):
        wo.linear_module(layer, torch.randn(2, 128), TileConfig(4, 32, 64))
    with pytest.raises(ValueError, match="features"):
        wo.linear_module(layer, torch.randn(2, 64))
    with pytest.raises(TypeError, match="float32"):
        wo.linear_module(layer, torch.randn(2, 128, dtype=torch.float64))
    x = torch.randn(2, 128)
    x[1, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        wo.linear_module(layer, x)
    with pytest.raises(ValueError, match="w_zero_point"):
        wo.linear(torch.randn(2, 128), layer.w_q, layer.w_scale, None, bits=4, group_size=64)
    with pytest.raises(ValueError, match="bits"):
        wo.linear(torch.randn(2, 128), layer.w_q, layer.w_scale, None, bits=2)
