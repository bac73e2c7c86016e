"""``kernels.weight_only`` (``_wo.c``): the compiled weight-only Linear.

Claims and how they are checked:

- ``dequantize`` writes ``f32(code - zero_point) * scale`` bit for bit as ``affine.dequantize``
  (``torch.equal``) for every b in 2..8, per tensor / row / group, K not a multiple of the kernel's
  64 lanes, odd K for b != 4;
- ``linear`` (the streaming kernel for few rows) is within the float32 error bound of the exact
  (float64) product of the same float32 weight: ``|y - y_exact| <= (K + 2) u sum_k |x||w| + u |b|``,
  u = 2**-24; a deliberately wrong grid (zero points of the next group) breaks that bound, so the
  check can fail;
- the layers (``WeightOnlyLinear`` int4 / int8, ``PackedWeightOnlyLinear``) take the kernel for
  <= GEMV_MAX_ROWS rows and agree with their pure-torch reference within the bound, and above it
  are bit-identical to the reference; 1 and 2 threads give identical floats (rows are independent);
- in-place changes of a layer's tensors rebuild the kernel's view; copies get their own;
  autograd inputs take the torch path; bad grids get clear errors.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from glassquant.affine import dequantize
from glassquant.dialects import torchao
from glassquant.kernels import weight_only as wo
from glassquant.kernels.int4 import pack_bits
from glassquant.nn.weight_only import PackedWeightOnlyLinear, WeightOnlyLinear, group_rows, row_scheme

pytestmark = pytest.mark.skipif(not wo.available(), reason="the compiled weight-only kernels (_wo.c) are not built")
U = 2.0**-24


def test_library_is_built() -> None:
    """``pip install`` builds _wo.c here (gcc is present); a missing build must not pass silently."""
    assert wo.available()


def _random_grid(bits: int, n: int, k: int, granularity: str, group: int | None, seed: int
                 ) -> tuple[wo.Grid, Tensor]:
    """A grid of random codes / scales / zero points and its reference float32 weight (affine.dequantize)."""
    g = torch.Generator().manual_seed(seed)
    row_groups = {"per_tensor": 0, "per_channel": 1}.get(granularity, k // (group or k))
    groups = max(1, n * row_groups)
    codes = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.uint8)
    zp = torch.randint(0, 2**bits, (groups,), generator=g, dtype=torch.uint8)
    scale = torch.exp(torch.randn(groups, generator=g) * 2 - 6).to(torch.float32)
    grid = wo.Grid(pack_bits(codes, bits), bits, n, k, scale, zp, group or k, row_groups)
    size = k if granularity != "per_group" else group
    rows = codes.reshape(-1, size) if granularity != "per_tensor" else codes.reshape(1, -1)
    ref = dequantize(rows, scale, zp.to(torch.int32), row_scheme(bits)).reshape(n, k)
    return grid, ref


def _within_bound(y: Tensor, x: Tensor, w: Tensor, bias: Tensor | None) -> bool:
    exact = x.double() @ w.double().T + (0.0 if bias is None else bias.double())
    bound = (x.shape[1] + 2) * U * (x.double().abs() @ w.double().abs().T
                                    + (0.0 if bias is None else bias.double().abs()))
    return bool(((y.double() - exact).abs() <= bound).all())


CASES = [(b, gran, grp) for b in range(2, 9) for gran, grp in (("per_tensor", None), ("per_channel", None),
                                                                ("per_group", 32), ("per_group", 128))]


@pytest.mark.parametrize(("bits", "granularity", "group"), CASES)
def test_dequantize_is_bit_identical_and_linear_within_bound(bits: int, granularity: str, group: int | None) -> None:
    k = 256 + (0 if granularity == "per_group" else (2 if bits == 4 else 37))  # tails past the 64 lanes
    grid, ref = _random_grid(bits, 11, k, granularity, group, seed=bits * 100 + k)
    assert torch.equal(wo.dequantize(grid), ref)
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(7))
    bias = torch.randn(11)
    for b in (None, bias):
        assert _within_bound(wo.linear(x, grid, b), x, ref, b)


def test_a_wrong_grid_breaks_the_bound() -> None:
    """The bound check is sharp enough to catch a real mistake: zero points shifted by one group."""
    grid, ref = _random_grid(4, 16, 256, "per_group", 32, seed=3)
    zp = grid.zero_point
    assert zp is not None
    wrong = wo.Grid(grid.codes, 4, 16, 256, grid.scale, torch.roll(zp, 1).contiguous(), 32, 8)
    x = torch.randn(3, 256)
    assert _within_bound(wo.linear(x, grid, None), x, ref, None)
    assert not _within_bound(wo.linear(x, wrong, None), x, ref, None)


def test_signed_int8_scale_after_matches_torchao_within_bound() -> None:
    torch.manual_seed(0)
    n, k = 40, 300
    lin = nn.Linear(k, n)
    layer = WeightOnlyLinear.from_float(lin, bits=8)
    x = torch.randn(4, k)
    y = wo.linear(x, wo.Grid(layer.w_q.reshape(-1), 8, n, k, layer.w_scale.reshape(-1), None, k, 1,
                             signed_int8=True), layer.bias)
    ref = torchao.linear_weight_only(x, layer.w_q, layer.w_scale.reshape(-1), layer.bias)
    w = layer.w_q.to(torch.float32) * layer.w_scale  # |scale * sum| <= scale * sum |x||q|: the same bound
    assert _within_bound(y, x, w, layer.bias) and _within_bound(ref, x, w, layer.bias)


@pytest.mark.parametrize("kind", ["int4", "int8", "packed3", "packed5-tensor"])
def test_layers_take_the_kernel_for_few_rows_and_the_exact_path_for_many(kind: str) -> None:
    torch.manual_seed(1)
    lin = nn.Linear(384, 96)
    layer: nn.Module
    if kind == "int4":
        layer = WeightOnlyLinear.from_float(lin, bits=4, group_size=64)
    elif kind == "int8":
        layer = WeightOnlyLinear.from_float(lin, bits=8)
    elif kind == "packed3":
        layer = PackedWeightOnlyLinear.from_float(lin, bits=3, granularity="per_group", group_size=128)
    else:
        layer = PackedWeightOnlyLinear.from_float(lin, bits=5, granularity="per_tensor")
    w = layer.dequantize_weight()
    few, many = torch.randn(2, 3, 384), torch.randn(4, 10, 384)
    with torch.no_grad():
        y_few, y_many = layer(few), layer(many)
    assert _within_bound(y_few.reshape(-1, 96), few.reshape(-1, 384), w, layer.bias)
    if kind == "int8":  # the reference: torchao's order (sum, then scale)
        ref = torchao.linear_weight_only(many, layer.w_q, layer.w_scale.reshape(-1), layer.bias)
    else:
        ref = (many.reshape(-1, 384) @ w.T + layer.bias).reshape(4, 10, 96)
    assert torch.equal(y_many, ref)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(few)
        torch.set_num_threads(2)
        assert torch.equal(layer(few), one)
    finally:
        torch.set_num_threads(threads)
    # a strided input (every other feature of a wider tensor) gives the same floats
    wide = torch.randn(3, 768)
    assert torch.equal(layer(wide[:, ::2]), layer(wide[:, ::2].contiguous()))


def test_cache_follows_in_place_changes_and_copies() -> None:
    torch.manual_seed(2)
    layer = PackedWeightOnlyLinear.from_float(nn.Linear(128, 8), bits=4, granularity="per_channel")
    x = torch.randn(1, 128)
    before = layer(x)
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        layer.w_scale.mul_(2.0)  # in place: the kernel must see it
    assert torch.allclose(layer(x) - layer.bias, 2 * (before - layer.bias), rtol=1e-5, atol=1e-6)
    assert torch.equal(twin(x), before)  # the copy kept its own tensors and view


def test_autograd_inputs_take_the_torch_path() -> None:
    layer = WeightOnlyLinear.from_float(nn.Linear(64, 4), bits=4, group_size=32)
    x = torch.randn(2, 64, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, layer.dequantize_weight().sum(0).expand(2, 64))


def test_bad_grids_and_inputs() -> None:
    codes = pack_bits(torch.zeros(4, 64, dtype=torch.uint8), 3)
    zp, scale = torch.zeros(4, dtype=torch.uint8), torch.ones(4)
    with pytest.raises(ValueError, match="codes must hold"):
        wo.Grid(codes[:-1].contiguous(), 3, 4, 64, scale, zp, 64, 1)
    with pytest.raises(ValueError, match=r"bits must be in 2\.\.8"):
        wo.Grid(codes, 9, 4, 64, scale, zp, 64, 1)
    with pytest.raises(ValueError, match="do not fit K"):
        wo.Grid(codes, 3, 4, 64, scale, zp, 48, 1)
    with pytest.raises(ValueError, match="scale must have 4 values"):
        wo.Grid(codes, 3, 4, 64, torch.ones(3), zp, 64, 1)
    with pytest.raises(ValueError, match="zero_point must be contiguous uint8"):
        wo.Grid(codes, 3, 4, 64, scale, zp.to(torch.int32), 64, 1)
    grid = wo.Grid(codes, 3, 4, 64, scale, zp, 64, 1)
    with pytest.raises(ValueError, match=r"x must be a CPU float32 \(M, 64\)"):
        wo.linear(torch.zeros(2, 63), grid, None)
    with pytest.raises(ValueError, match="bias must be contiguous float32"):
        wo.linear(torch.zeros(2, 64), grid, torch.zeros(5))
    assert wo.linear(torch.zeros(0, 64), grid, None).shape == (0, 4)
    layer = PackedWeightOnlyLinear.from_float(nn.Linear(128, 8), bits=4, granularity="per_channel")
    assert torch.equal(group_rows(layer.codes(), layer.scheme).reshape(8, 128), layer.codes())


@pytest.mark.needs_cc
def test_kernel_sources_under_sanitizers(tmp_path: Path) -> None:
    """``_wo.c`` with ASan + UBSan over every packed width and layout, code buffers of exactly the packed
    size (a read past the stream aborts): the harness is tests/unit/data/wo_harness.c."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler on PATH")
    kernel = Path(wo.__file__).with_name("_wo.c")
    harness = Path(__file__).with_name("data") / "wo_harness.c"
    exe = tmp_path / "harness"
    build = subprocess.run([cc, "-std=gnu99", "-O1", "-g", "-fopenmp", "-Wall", "-Wextra", "-Werror",
                            "-fsanitize=address,undefined", "-fno-sanitize-recover=all", str(kernel), str(harness),
                            "-o", str(exe)], capture_output=True, text=True)
    if build.returncode != 0 and "sanitize" in build.stderr:
        pytest.skip(f"{cc} cannot build with sanitizers here: {build.stderr.strip()[:200]}")
    assert build.returncode == 0, build.stderr
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1", "OMP_NUM_THREADS": "2"}
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
