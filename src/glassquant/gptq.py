"""GPTQ: int4 weights that compensate each rounding error in the columns not yet rounded.

Frantar, Ashkboos, Hoefler, Alistarh (2022), "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", Algorithm 1, and their reference ``gptq.py``
(IST-DASLab/gptq, ``GPTQ.add_batch`` / ``GPTQ.fasterquant``). For one Linear with weight
``W`` (N, K) and calibration inputs ``X`` (n, K), GPTQ looks for integers whose output error
``||X W^T - X Wq^T||^2 = sum_r (w_r - wq_r)^T H (w_r - wq_r) / 2`` is small, with

    H = 2/n * sum_t x_t x_t^T                                                   (G1)

the Hessian of that loss (each row ``w_r`` of ``W`` shares it). Columns are rounded one at a
time; after column ``j`` the rounding error is spread over the columns ``F`` not yet rounded
by the optimal-brain-surgeon update

    delta_F = -(w_j - wq_j) / [H_F^-1]_jj * [H_F^-1]_{j,F}                      (G2)

with ``H_F`` the rows and columns of ``H`` in ``F = {j, j+1, ..., K-1}``. Row ``j`` of the
upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``) is ``[H_F^-1]_{j,F} / sqrt([H_F^-1]_jj)``,
so (G2) reads ``delta_F = -(w_j - wq_j) / U_jj * U_{j,F}`` with one factorization for all ``j``
(G3); updates to columns beyond the current block of ``block_size`` columns are applied once
per block (lazy batch updates, the same sums in another order).

The integers lie on exactly ``WeightOnlyLinear``'s int4 grid: per group of ``group_size``
consecutive columns, ``(scale, zero_point)`` come from ``quantize_int4_groupwise`` (eq. 2,
asymmetric min/max) applied to the group's *current* weights — original plus all updates so
far — at the moment the group's first column is rounded; each column is rounded with eq. 3.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .affine import dequantize, quantize
from .convert import run_batches
from .errors import check_finite
from .kernels.int4 import pack_int4
from .nn.weight_only import WeightOnlyLinear, int4_scheme, quantize_int4_groupwise

#: Dampening added to H's diagonal, as a fraction of its mean diagonal (the reference's ``percdamp``).
PERCDAMP = 0.01
#: One column's own (scale, zero point): the int4 grid with a group of one along K.
_COLUMN = int4_scheme(1)

__all__ = ["PERCDAMP", "HessianAccumulator", "dampen", "gptq_model", "gptq_quantize", "hessian_from_inputs",
           "inverse_cholesky_upper", "quantize_linear_gptq"]


class HessianAccumulator:
    """Running ``sum_t x_t x_t^T`` over every token of one Linear's input; ``hessian()`` is (G1).

    Numerics: each batch ``x`` float (..., K) is flattened to rows (M, K) and converted to
    float64 (exact); ``x^T x`` is summed in float64. ``hessian()`` returns ``2/n * sum``
    float64 (K, K), ``n`` the number of rows (tokens) seen. The reference keeps a float32
    running mean, rescaled after every batch, and counts sequences rather than tokens: its H
    is ours times (tokens per sequence) up to float32 roundings, and GPTQ does not depend on
    a constant factor of H (dampening is relative; ``U`` and the errors scale inversely).
    """

    def __init__(self, in_features: int, name: str = "layer") -> None:
        if in_features < 1:
            raise ValueError(f"{name}: in_features must be >= 1, got {in_features}")
        self.in_features, self.name = int(in_features), name
        self.sum_xxt = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.tokens = 0

    def add(self, x: Tensor) -> None:
        """Add every row of ``x`` (..., K) to the sum."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{self.name}: calibration input must be a float tensor, got "
                            f"{type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self.name}: calibration input has shape {tuple(x.shape)}, "
                             f"expected (..., {self.in_features})")
        check_finite(x, f"{self.name}: calibration input")
        rows = x.detach().reshape(-1, self.in_features).to(torch.float64)  # (M, K)
        self.sum_xxt += rows.T @ rows  # (K, M) @ (M, K) -> (K, K) float64
        self.tokens += rows.shape[0]

    def hessian(self) -> Tensor:
        """``H = 2/n * sum_t x_t x_t^T`` float64 (K, K) (G1), undampened."""
        if self.tokens == 0:
            raise ValueError(f"{self.name}: no calibration input was seen; the layer was never called")
        return self.sum_xxt * (2.0 / self.tokens)


def hessian_from_inputs(inputs: Tensor | Iterable[Tensor], name: str = "layer") -> Tensor:
    """(G1) from a Linear's calibration inputs: one tensor (..., K) or an iterable of them."""
    batches = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if not batches:
        raise ValueError(f"{name}: no calibration inputs given")
    first = batches[0]
    if not isinstance(first, Tensor) or first.dim() == 0:
        raise TypeError(f"{name}: calibration inputs must be tensors of shape (..., K)")
    acc = HessianAccumulator(first.shape[-1], name)
    for x in batches:
        acc.add(x)
    return acc.hessian()


def dampen(hessian: Tensor, percdamp: float = PERCDAMP, name: str = "layer") -> tuple[Tensor, Tensor]:
    """The reference's preparation of H: dead inputs, then dampening. Returns ``(H', dead)``.

    Dead inputs (``H_ii == 0``: the input was 0 on every calibration token) get ``H'_ii = 1``;
    the caller zeroes their weight columns (no input ever reaches them). Then
    ``H' = H + percdamp * mean(diag(H)) * I`` (mean taken after the dead fix, as the reference).

    Numerics: float64 (K, K) out, ``dead`` bool (K,). ``percdamp >= 0``; ``H`` must be square,
    finite and symmetric (checked to 1e-9 relative: it is a sum of outer products).
    """
    if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"{name}: Hessian must be square (K, K), got shape {tuple(hessian.shape)}")
    if not hessian.is_floating_point():
        raise TypeError(f"{name}: Hessian must be a float tensor, got {hessian.dtype}")
    check_finite(hessian, f"{name}: Hessian")
    if percdamp < 0:
        raise ValueError(f"{name}: percdamp must be >= 0, got {percdamp}")
    h = hessian.detach().to(torch.float64).clone()
    asym = float((h - h.T).abs().max()) if h.numel() else 0.0
    if asym > 1e-9 * max(float(h.abs().max()), 1e-300):
        raise ValueError(f"{name}: Hessian is not symmetric (max |H - H^T| = {asym:.3g})")
    diag = torch.diagonal(h)  # (K,) view
    dead = diag == 0
    h[dead, dead] = 1.0
    diag += percdamp * float(diag.mean())
    return h, dead


def inverse_cholesky_upper(hessian: Tensor, name: str = "layer") -> Tensor:
    """Upper-triangular ``U`` with ``H^-1 = U^T U`` (G3): the reference's cholesky -> cholesky_inverse -> cholesky.

    Numerics: float64 (K, K) in and out; ``H`` must be positive definite (dampen it first);
    a ``ValueError`` asks for more dampening otherwise.
    """
    lower, info = torch.linalg.cholesky_ex(hessian)  # H = L L^T
    if int(info) == 0:
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)  # H^-1 = U^T U
    if int(info) != 0:
        raise ValueError(f"{name}: Hessian is not positive definite after dampening; raise percdamp")
    return upper


def gptq_quantize(weight: Tensor, hessian: Tensor, bits: int = 4, group_size: int = 128, block_size: int = 128,
                  act_order: bool = False, percdamp: float = PERCDAMP,
                  name: str = "weight") -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ int4 weights on ``WeightOnlyLinear``'s grid: ``(w_q uint8 (N, K) in [0, 15], scale, zero_point)``.

    ``hessian`` is (G1) undampened (``dampen`` is applied here). ``act_order``: round columns
    in decreasing ``H_ii`` (the reference's ``actorder``); groups stay ``group_size``
    consecutive columns of the original order, and a group's qparams are chosen when the
    first of its columns is rounded, from all its columns' current weights.

    Numerics: weights, H, its Cholesky factor and every update in float64. Group qparams:
    ``quantize_int4_groupwise`` on the float32 rounding of the group's current weights (eq. 2:
    float32, ``scale >= eps``, zero point half to even, clamped to [0, 15]) -> ``scale``
    float32 (N, K/g), ``zero_point`` uint8 (N, K/g). Column ``j``: ``q = clamp(rne(f32(w_j) / scale)
    + zero_point, 0, 15)`` (eq. 3, one float32 division), ``wq = f32(q - zero_point) * scale``
    (eq. 1, float32), error ``(w_j - wq) / U_jj`` in float64, spread by (G2)-(G3). Dead
    columns (``H_ii == 0``) are set to 0 before rounding. With a diagonal H no error is spread
    and the result equals round to nearest (``quantize_int4_groupwise``) bit for bit.
    """
    if bits != 4:
        raise ValueError(f"{name}: GPTQ here targets the int4 weight-only grid; bits must be 4, got {bits}")
    if weight.dim() != 2 or weight.numel() == 0 or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a non-empty float (N, K) weight, got {weight.dtype} "
                         f"{tuple(weight.shape)}")
    n, k = weight.shape
    if group_size < 1 or k % group_size:
        raise ValueError(f"{name}: in_features {k} is not a multiple of group_size {group_size}")
    if block_size < 1:
        raise ValueError(f"{name}: block_size must be >= 1, got {block_size}")
    if hessian.shape != (k, k):
        raise ValueError(f"{name}: Hessian shape {tuple(hessian.shape)} does not match in_features ({k}, {k})")
    check_finite(weight, name)
    h, dead = dampen(hessian, percdamp, name)
    w = weight.detach().to(torch.float64).clone()  # (N, K)
    w[:, dead] = 0.0
    if act_order:  # the reference sorts diag(H) after the dead fix, before dampening
        diag = torch.where(dead, 1.0, torch.diagonal(hessian).detach().to(torch.float64))  # (K,)
        perm = torch.argsort(diag, descending=True, stable=True)
    else:
        perm = torch.arange(k)
    invperm = torch.argsort(perm)  # position of original column c is invperm[c]
    w = w[:, perm]  # (N, K), columns in rounding order
    u = inverse_cholesky_upper(h[perm][:, perm], name)  # (K, K) upper
    groups = k // group_size
    scale = torch.zeros(n, groups, dtype=torch.float32)
    zero_point = torch.zeros(n, groups, dtype=torch.uint8)
    started = [False] * groups
    q = torch.zeros(n, k, dtype=torch.uint8)  # rounding order
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()  # (N, B): the block, kept up to date column by column
        err1 = torch.zeros_like(w1)  # (N, B): (w_j - wq_j) / U_jj
        for j in range(i1, i2):
            g = int(perm[j]) // group_size
            if not started[g]:
                pos = invperm[g * group_size:(g + 1) * group_size]  # (g,) positions, original column order
                current = _current_columns(w, w1, err1, u, pos, i1, j)  # (N, g) float64
                _, s, zp = quantize_int4_groupwise(current.to(torch.float32), group_size, f"{name} group {g}")
                scale[:, g], zero_point[:, g] = s[:, 0], zp[:, 0]
                started[g] = True
            col = w1[:, j - i1 : j - i1 + 1]  # (N, 1) float64
            s_g, zp_g = scale[:, g : g + 1], zero_point[:, g : g + 1].to(torch.int32)  # (N, 1) each
            q_col = quantize(col.to(torch.float32), s_g, zp_g, _COLUMN)  # (N, 1) uint8, eq. 3
            wq = dequantize(q_col, s_g, zp_g, _COLUMN).to(torch.float64)  # (N, 1), eq. 1
            q[:, j] = q_col[:, 0]
            e = (col - wq) / u[j, j]  # (N, 1)
            w1[:, j - i1 :] -= e * u[j, j:i2]  # (N, 1) * (B',) -> (N, B'): (G2)-(G3) inside the block
            err1[:, j - i1] = e[:, 0]
        w[:, i2:] -= err1 @ u[i1:i2, i2:]  # (N, B) @ (B, K - i2) -> (N, K - i2): lazy update of the rest
    return q[:, invperm], scale, zero_point


def _current_columns(w: Tensor, w1: Tensor, err1: Tensor, u: Tensor, pos: Tensor, i1: int, j: int) -> Tensor:
    """Current weights at rounding positions ``pos`` (all >= j) while rounding column ``j`` of the block at ``i1``.

    Inside the block, ``w1`` is up to date; beyond it, ``w`` lacks the pending updates of
    the block's columns ``i1 .. j-1``: ``- err1[:, :j-i1] @ u[i1:j, pos]``.
    """
    i2 = i1 + w1.shape[1]
    inside = pos < i2
    out = torch.empty(w.shape[0], len(pos), dtype=torch.float64)  # (N, g)
    out[:, inside] = w1[:, pos[inside] - i1]
    far = pos[~inside]
    out[:, ~inside] = w[:, far] - err1[:, : j - i1] @ u[i1:j, far]  # (N, j-i1) @ (j-i1, f) -> (N, f)
    return out


def quantize_linear_gptq(linear: nn.Linear, hessian: Tensor, bits: int = 4, group_size: int = 128,
                         name: str = "WeightOnlyLinear", *, block_size: int = 128, act_order: bool = False,
                         percdamp: float = PERCDAMP) -> WeightOnlyLinear:
    """A ``WeightOnlyLinear`` (int4, ``group_size`` in 32/64/128) with GPTQ integers for ``linear``.

    ``hessian``: (G1) of the layer's calibration inputs (``hessian_from_inputs`` or a
    ``HessianAccumulator``). Same buffers as ``WeightOnlyLinear.from_float``: packed ``w_q``,
    ``w_scale``, ``w_zero_point``, float32 bias.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{name}: quantize_linear_gptq expects nn.Linear, got {type(linear).__name__}")
    q, scale, zero_point = gptq_quantize(linear.weight.detach(), hessian, bits, group_size, block_size, act_order,
                                         percdamp, f"{name}.weight")
    bias = None if linear.bias is None else linear.bias.detach()
    return WeightOnlyLinear(pack_int4(q, f"{name}.weight"), scale, zero_point, bias, bits=bits,
                            group_size=group_size, name=name)


def gptq_model(model: nn.Module, batches: Iterable[Any], run: Callable[[nn.Module, Any], Any] | None = None,
               bits: int = 4, group_size: int = 128, include: Sequence[str] | None = None, *,
               block_size: int = 128, act_order: bool = False, percdamp: float = PERCDAMP,
               replace: bool = True) -> dict[str, WeightOnlyLinear]:
    """GPTQ every ``nn.Linear`` of ``model`` (names matching the ``include`` globs, default all).

    One pass of the float model over ``batches`` (``run(model, batch)``; default: ``model(batch)``,
    ``model(*batch)`` for tuples, ``model(**batch)`` for dicts) collects each layer's (G1) with
    forward pre-hooks; every layer is then quantized from its own float inputs (not
    layer-by-layer through already quantized layers). Returns ``{name: WeightOnlyLinear}``;
    ``replace=True`` also swaps them into ``model``.
    """
    layers = {n: m for n, m in model.named_modules() if type(m) is nn.Linear
              and (include is None or any(fnmatch.fnmatchcase(n, p) for p in include))}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear to quantize with GPTQ"
                         + ("" if include is None else f" matching {list(include)}"))
    accs = {n: HessianAccumulator(m.in_features, f"layer {n!r}") for n, m in layers.items()}
    handles = [m.register_forward_pre_hook(lambda mod, args, a=accs[n]: a.add(args[0])) for n, m in layers.items()]
    if run_batches(model, batches, handles, run=run) == 0:
        raise ValueError("GPTQ needs calibration data: batches is empty")
    out: dict[str, WeightOnlyLinear] = {}
    for n, m in layers.items():
        out[n] = quantize_linear_gptq(m, accs[n].hessian(), bits, group_size, n, block_size=block_size,
                                      act_order=act_order, percdamp=percdamp)
        accs[n].sum_xxt = torch.empty(0)  # free (K, K) float64 as we go
    if replace:
        for n, layer in out.items():
            parent_name, _, child = n.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return out
