"""Test helpers: torch.ao references and adversarial case generators (used by tests only)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from glassquant.dialects._base import accumulate
from glassquant.interop import torch_ao

AO_OK, AO_WHY = torch_ao.available()
needs_torch_ao = pytest.mark.skipif(not AO_OK, reason=f"reference unavailable: {AO_WHY}")

warnings.filterwarnings("ignore", message=".*deprecated.*")


@dataclass
class StaticCase:
    """One static Linear problem: integers, qparams, float bias."""

    x_q: Tensor  # uint8 (M, K)
    x_scale: float
    x_zero_point: int
    w_q: Tensor  # int8 (N, K)
    w_scale: Tensor  # float32 (N,) or (1,)
    w_zero_point: Tensor  # int32, same shape
    bias: Tensor | None  # float32 (N,)
    y_scale: float
    y_zero_point: int
    relu: bool = False

    @property
    def per_channel(self) -> bool:
        return self.w_scale.numel() > 1

    def w_scale_arg(self) -> Tensor | float:
        return self.w_scale if self.per_channel else float(self.w_scale)


def torch_static_linear(engine: str, c: StaticCase) -> Tensor:
    """The engine's ``quantized::linear`` (or ``linear_relu``) output integers."""
    with torch_ao.engine(engine):
        x = torch._make_per_tensor_quantized_tensor(c.x_q, c.x_scale, c.x_zero_point)
        w = torch_ao.make_qweight(c.w_q, c.w_scale, c.w_zero_point)
        packed = torch.ops.quantized.linear_prepack(w, c.bias)
        op = torch.ops.quantized.linear_relu if c.relu else torch.ops.quantized.linear
        return op(x, packed, c.y_scale, c.y_zero_point).int_repr()


def torch_dynamic_linear(engine: str, x: Tensor, w_q: Tensor, w_scale: Tensor, w_zero_point: Tensor,
                         bias: Tensor | None, reduce_range: bool) -> Tensor:
    """The engine's ``quantized::linear_dynamic`` float output."""
    with torch_ao.engine(engine):
        packed = torch.ops.quantized.linear_prepack(torch_ao.make_qweight(w_q, w_scale, w_zero_point), bias)
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range)


def _pow2(g: torch.Generator, lo: int, hi: int) -> float:
    return 2.0 ** -int(torch.randint(lo, hi, (1,), generator=g))


def random_static_case(g: torch.Generator, m: int, k: int, n: int, *, per_channel: bool,
                       reduce_range: bool, full_range: bool = False, pow2_scales: bool = False,
                       relu: bool = False, small: bool = False) -> StaticCase:
    """Random integers and qparams; ``full_range`` uses only the extreme integers (0/255,
    -128/127) so accumulators reach their largest values; ``pow2_scales`` makes every
    float step exact; ``small`` (with pow2 scales) keeps ``|x - zx|, |w| <= 3`` and sets the
    multiplier to 1/2 or less, so about half of all outputs are exact .5 ties."""
    x_hi = 127 if reduce_range else 255
    if full_range:
        x_q = (torch.randint(0, 2, (m, k), generator=g) * x_hi).to(torch.uint8)
        w_q = torch.where(torch.randint(0, 2, (n, k), generator=g) == 1, 127, -128).to(torch.int8)
    else:
        x_q = torch.randint(0, x_hi + 1, (m, k), generator=g, dtype=torch.uint8)
        w_q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    x_zp = int(torch.randint(0, x_hi + 1, (1,), generator=g))
    if small:
        x_zp = min(max(x_zp, 3), x_hi - 3)
        x_q = (x_zp + torch.randint(-3, 4, (m, k), generator=g)).to(torch.uint8)
        w_q = torch.randint(-3, 4, (n, k), generator=g, dtype=torch.int8)
    nsc = n if per_channel else 1
    if pow2_scales:
        x_scale = _pow2(g, 2, 9)
        w_scale = torch.tensor([_pow2(g, 2, 12) for _ in range(nsc)], dtype=torch.float32)
    else:
        x_scale = float(torch.rand(1, generator=g) * 0.1 + 1e-3)
        w_scale = (torch.rand(nsc, generator=g) * 0.02 + 1e-4).to(torch.float32)
    w_zp = torch.zeros(nsc, dtype=torch.int32)
    acc = accumulate(x_q, x_zp, w_q, w_zp).to(torch.float64)
    span = float(acc.abs().max()) * x_scale * float(w_scale.max()) + 1e-3
    y_scale = span / float(torch.randint(30, 250, (1,), generator=g))
    if pow2_scales:
        y_scale = 2.0 ** round(math.log2(y_scale))
        if small:
            w_scale = float(w_scale.max()) * 2.0 ** -torch.randint(0, 2, w_scale.shape, generator=g).float()
            y_scale = 2.0 * x_scale * float(w_scale.max())
        bias = (torch.randint(-4000, 4000, (n,), generator=g).to(torch.float32)
                * x_scale * w_scale.expand(n) / 4)
    else:
        bias = torch.randn(n, generator=g) * span / 4
    y_zp = int(torch.randint(0, 256, (1,), generator=g))
    return StaticCase(x_q, x_scale, x_zp, w_q, w_scale, w_zp, bias, y_scale, y_zp, relu)


def force_ties(c: StaticCase, prerounding, span: int = 256) -> int:
    """Re-choose the bias so that, in row ``n % M`` of column ``n``, the dialect's value before
    rounding is exactly ``j + 0.5`` — an adversarial tie the engine must break the same way.

    ``prerounding(acc, x_scale, w_scale, bias, y_scale)`` is the dialect's own formula;
    candidates are the ``2 * span + 1`` float32 neighbours of an estimate. Returns the
    number of columns that now hold a tie (the rest keep their bias).
    """
    m, n = c.x_q.shape[0], c.w_q.shape[0]
    acc = accumulate(c.x_q, c.x_zero_point, c.w_q, c.w_zero_point)
    rows = torch.arange(n) % m
    acc_sel = acc[rows, torch.arange(n)]  # (N,)
    sw = c.w_scale.expand(n).to(torch.float64)
    mult = c.x_scale * sw / c.y_scale
    base = prerounding(acc_sel.reshape(1, n), c.x_scale, c.w_scale_arg(), c.bias, c.y_scale)[0].to(torch.float64)
    target = torch.floor(base) + 0.5
    estimate = (c.bias.to(torch.float64) + (target - base) / mult * c.x_scale * sw).to(torch.float32)  # (N,)
    steps = torch.arange(-span, span + 1, dtype=torch.int32)
    bits = estimate.view(torch.int32).reshape(1, n) + steps.reshape(-1, 1)  # (C, N)
    cands = bits.view(torch.float32)
    cands = torch.where(torch.sign(cands) == torch.sign(estimate), cands, estimate)
    flat_acc = acc_sel.repeat(cands.shape[0]).reshape(1, -1)  # (1, C*N)
    w_arg = c.w_scale.expand(n).repeat(cands.shape[0]) if c.per_channel else float(c.w_scale)
    t = prerounding(flat_acc, c.x_scale, w_arg, cands.reshape(-1), c.y_scale).reshape(cands.shape)
    is_tie = (t - torch.floor(t)) == 0.5
    found = is_tie.any(dim=0)
    first = is_tie.to(torch.int8).argmax(dim=0)
    c.bias = torch.where(found, cands[first, torch.arange(n)], c.bias)
    return int(found.sum())


#: (M, K, N, kind) of the static suite; kinds: random, full (extreme integers), pow2 (exact
#: float steps, many ties), ties (bias re-chosen to force a tie per column), nobias.
STATIC_SHAPES = [
    (300, 64, 512, "random"), (1, 4096, 512, "full"), (64, 4096, 64, "full"), (200, 256, 300, "pow2"),
    (100, 777, 300, "ties"), (50, 4096, 128, "ties"), (17, 1, 3, "random"), (1, 1, 1, "random"),
    (33, 100, 200, "nobias"), (5, 3000, 511, "random"), (256, 16, 64, "small"), (1, 12, 512, "small"),
]


def static_suite(engine: str, dialect, per_channel: bool, seed: int = 0) -> dict[str, int]:
    """Run every STATIC_SHAPES case (reduce_range on and off, ReLU on some) through the real
    engine and the dialect; returns counts of outputs, mismatches and forced ties."""
    g = torch.Generator().manual_seed(seed)
    stats = {"outputs": 0, "mismatches": 0, "forced_ties": 0, "exact_ties": 0}
    for i, (m, k, n, kind) in enumerate(STATIC_SHAPES):
        for reduce_range in (False, True):
            c = random_static_case(g, m, k, n, per_channel=per_channel, reduce_range=reduce_range,
                                   full_range=kind == "full", pow2_scales=kind in ("pow2", "small"),
                                   small=kind == "small", relu=(i + reduce_range) % 3 == 0)
            if kind == "nobias":
                c.bias = None
            if kind == "ties":
                stats["forced_ties"] += force_ties(c, dialect.prerounding)
            acc = accumulate(c.x_q, c.x_zero_point, c.w_q, c.w_zero_point)
            pre = dialect.prerounding(acc, c.x_scale, c.w_scale_arg(), c.bias, c.y_scale)
            stats["exact_ties"] += int(((pre - torch.floor(pre)) == 0.5).sum())
            ref = torch_static_linear(engine, c)
            got = dialect.linear(c.x_q, c.x_scale, c.x_zero_point, c.w_q, c.w_scale_arg(), c.w_zero_point,
                                 c.bias, c.y_scale, c.y_zero_point, relu=c.relu)
            assert got.dtype == ref.dtype == torch.uint8
            stats["outputs"] += ref.numel()
            stats["mismatches"] += int((ref != got).sum())
    return stats


def dynamic_inputs(g: torch.Generator) -> list[Tensor]:
    """Float inputs for the dynamic suite: ordinary, one-signed, zero, tiny, huge, and
    values on an exact power-of-two grid that put activation quantization on ties."""
    xs = [
        torch.randn(300, 64, generator=g) * 3 + 1,
        torch.randn(1, 4096, generator=g),
        torch.randn(64, 1024, generator=g).relu(),
        -torch.rand(128, 256, generator=g) * 50,
        torch.zeros(8, 32),
        torch.randn(16, 48, generator=g) * 1e-7,
        torch.randn(32, 100, generator=g) * 1e4,
        torch.full((4, 7), 3.25),
    ]
    # range [0, 127/16] -> scale 1/16 exactly with reduce_range: x = (j + 0.5)/16 are ties
    grid = (torch.randint(0, 127, (200, 160), generator=g).to(torch.float32) + 0.5) / 16
    grid[0, 0], grid[0, 1] = 0.0, 127 / 16
    xs.append(grid)
    grid8 = (torch.randint(0, 255, (100, 160), generator=g).to(torch.float32) + 0.5) / 8
    grid8[0, 0], grid8[0, 1] = 0.0, 255 / 8
    xs.append(grid8)
    return xs


def dynamic_cases(g: torch.Generator, per_channel: bool):
    """Yield ``(x, w_q, w_scale, w_zero_point, bias, reduce_range)`` for the dynamic suite."""
    for i, x in enumerate(dynamic_inputs(g)):
        k = x.shape[1]
        for n, reduce_range in ((int(torch.randint(1, 513, (1,), generator=g)), True), (96, False)):
            w_q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
            nsc = n if per_channel else 1
            w_scale = (torch.rand(nsc, generator=g) * 0.02 + 1e-4).to(torch.float32)
            w_zp = torch.zeros(nsc, dtype=torch.int32)
            bias = None if i == 3 else torch.randn(n, generator=g)
            yield x, w_q, w_scale, w_zp, bias, reduce_range


class HalfAwayMutant:
    """A dialect with one rule changed: ties rounded away from zero instead of to even.

    The suites must catch it; otherwise they could not tell the true rule from a plausible one.
    """

    def __init__(self, dialect) -> None:
        self.d = dialect
        self.prerounding = dialect.prerounding

    def linear(self, x_q, x_scale, x_zero_point, w_q, w_scale, w_zero_point, bias, y_scale, y_zero_point,
               relu=False):
        from glassquant.rounding import round_half_away

        ref = self.d.linear(x_q, x_scale, x_zero_point, w_q, w_scale, w_zero_point, bias, y_scale, y_zero_point,
                            relu=relu)
        acc = accumulate(x_q, x_zero_point, w_q, w_zero_point)
        pre = self.d.prerounding(acc, x_scale, w_scale, bias, y_scale)
        tie = (pre - torch.floor(pre)) == 0.5
        bumped = (round_half_away(pre) - torch.round(pre)).to(torch.int64)
        ref64 = ref.to(torch.int64)
        return torch.where(tie & (ref > 0) & (ref < 255), (ref64 + bumped).clamp(0, 255), ref64).to(torch.uint8)


def dynamic_suite(engine: str, dialect, per_channel: bool, seed: int = 0):
    """Yield ``(reference float output, dialect float output, case)`` for every dynamic case."""
    g = torch.Generator().manual_seed(seed)
    for x, w_q, w_scale, w_zp, bias, reduce_range in dynamic_cases(g, per_channel):
        ref = torch_dynamic_linear(engine, x, w_q, w_scale, w_zp, bias, reduce_range)
        w_arg = w_scale if per_channel else float(w_scale)
        got = dialect.linear_dynamic(x, w_q, w_arg, w_zp, bias, reduce_range=reduce_range)
        yield ref, got, (x, w_q, w_scale, w_zp, bias, reduce_range)


def int32_edges() -> list[int]:
    """±2**k ± {0, 1, 2} for k in 0..31, clipped to int32, plus 0 and the int32 limits: the values where
    fixed-point shifts, roundings and saturations change behaviour."""
    lo, hi = -(2**31), 2**31 - 1
    vals = {0, lo, hi}
    for k in range(32):
        for d in (-2, -1, 0, 1, 2):
            for v in (2**k + d, -(2**k) + d):
                if lo <= v <= hi:
                    vals.add(v)
    return sorted(vals)
