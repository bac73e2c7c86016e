"""SmoothQuant (Xiao et al. 2022, arXiv:2211.10438): move activation outliers into the weights.

For a Linear ``y = x @ W.T + b`` with input channels ``j = 0..K-1`` and any ``s > 0`` (K,)::

    y = (x / s) @ (W * s).T + b                                              (S1)

so dividing input channel ``j`` by ``s_j`` and multiplying weight column ``W[:, j]`` by it
changes nothing in exact arithmetic. Choosing (SmoothQuant's eq. 4)::

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)                        (S2)

(``max|X_j|`` over the calibration batches, ``max|W_j|`` over the column) flattens the
per-channel ranges of ``x / s`` — a per-tensor activation scale then wastes fewer levels on
a few outlier channels — at the price of wider weight columns (int8 per output channel).
``alpha = 0`` leaves activations alone (up to the weight normalization), ``alpha = 1``
moves all of their range into the weights.

Where ``x / s`` is computed:

* **folded into a LayerNorm**: when every call of the Linear takes exactly a
  ``nn.LayerNorm``'s output (the same tensor object) and that output reaches nothing but
  smoothed Linears (pre-LN attention: q, k, v), the LayerNorm's weight and bias are
  multiplied by ``1 / s`` and the Linears it feeds share one ``s`` (max over their
  activations and over their concatenated weight columns, as SmoothQuant does for q/k/v).
  Consumers are found on a traced forward pass (a ``TorchFunctionMode`` sees every op that
  reads the LayerNorm's output); a residual add, an in-place op or the model's output
  reading it forbids the fold (post-LN BERT: every LayerNorm feeds a residual).
* **otherwise** an explicit float :class:`ChannelScale` (``x * inv_s``) is put in front:
  the Linear at ``name`` becomes ``nn.Sequential(ChannelScale, Linear)``, so after
  smoothing the Linear lives at ``name + ".1"`` and its scale at ``name + ".0"``.

Static integer layers also requantize their *output* to one per-tensor uint8 grid, and
eq. S2 cannot help there. In all-MiniLM-L6-v2 that is the larger error: BERT's FFN
down-projection writes a few huge residual-stream channels; uint8 output grids alone cap the
mean embedding cosine near 0.957 (input grids alone: 0.9935), and eq. S2 alone moves static
W8A8 from 0.9525 to 0.9545 only. ``outputs=True`` applies the same identity to the output
side::

    y = ((x / s) @ (W * s * t[:, None]).T + b * t) / t                    (S3)

with powers of two ``t >= 1`` (:func:`output_scales`) that widen each output channel towards
the per-tensor range without leaving it; the ``/ t`` is a :class:`ChannelScale` behind the
Linear (``nn.Sequential(ChannelScale | Identity, Linear, ChannelScale)``). Row scaling by a
power of two leaves per-channel int8 weights unchanged (only ``w_scale`` moves), so this is
per-channel output quantization expressed with a per-tensor integer layer.

With ``pow2=True`` (default) every ``s_j`` is a power of two: ``x * 2**-k`` and ``W * 2**k``
are exact in float32 (no overflow, no subnormals inside the clamp), every product
``x_j * W[i, j]`` is unchanged, and the smoothed float model computes the *same* floats as
the original (bit for bit when the kernels accumulate in the same order). The rounding of
``s`` to a power of two moves each channel's range by at most a factor sqrt(2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["S_MAX", "S_MIN", "ChannelScale", "channel_max", "default_run", "insert_channel_scale",
           "smooth", "smoothing_scales"]

#: Clamp of ``s`` (powers of two, so the clamp itself is exact): SmoothQuant clamps at 1e-5.
S_MIN, S_MAX = 2.0 ** -16, 2.0 ** 16


class ChannelScale(nn.Module):
    """Multiply the last dimension by a float32 vector: ``x * inv_s`` (the ``x / s`` of eq. S1).

    Built from JSON-able arguments only (``num_features``; ``inv_s`` starts at ones and is
    a persistent buffer), so the file format can rebuild it with its ``state_dict``.
    """

    def __init__(self, num_features: int, inv_s: Tensor | None = None) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"ChannelScale: num_features must be a positive int, got {num_features!r}")
        if inv_s is None:
            inv_s = torch.ones(num_features, dtype=torch.float32)
        if not isinstance(inv_s, Tensor) or inv_s.dtype != torch.float32 or inv_s.shape != (num_features,):
            got = f"{inv_s.dtype} {list(inv_s.shape)}" if isinstance(inv_s, Tensor) else type(inv_s).__name__
            raise ValueError(f"ChannelScale: inv_s must be float32 of shape [{num_features}], got {got}")
        if not inv_s.is_meta and not bool((torch.isfinite(inv_s) & (inv_s > 0)).all()):
            raise ValueError("ChannelScale: inv_s must be finite and > 0")
        self.num_features = num_features
        self.inv_s: Tensor
        self.register_buffer("inv_s", inv_s.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """x (..., K) float -> x * inv_s (..., K); one float multiply per element, in x's dtype."""
        if x.shape[-1] != self.num_features:
            raise ValueError(f"ChannelScale: input has {x.shape[-1]} features, expected {self.num_features}")
        return x * self.inv_s.to(x.dtype)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"


def channel_max(x: Tensor) -> Tensor:
    """max |x| over every dimension but the last: the per-input-channel range of eq. S2.

    Numerics: x float (..., K) -> float32 (K,), exact (a max, then a widening cast).
    """
    return x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).to(torch.float32)  # (M, K) -> (K,)


def smoothing_scales(act_max: Tensor, weight_max: Tensor, alpha: float, *, pow2: bool = True
                     ) -> tuple[Tensor, Tensor]:
    """``(s, inv_s)`` of eq. S2 for one input-channel vector.

    Numerics: act_max, weight_max float (K,), >= 0, finite. Computed in float64:
    ``s = act_max ** alpha / weight_max ** (1 - alpha)``; a channel with ``act_max == 0`` or
    ``weight_max == 0`` has nothing to migrate and gets ``s = 1``; ``pow2`` rounds
    ``log2(s)`` to the nearest integer (within a factor sqrt(2) of eq. S2; a tie would need
    ``s = 2**(k + 1/2)``, irrational, so none occurs); then clamp to
    ``[S_MIN, S_MAX] = [2**-16, 2**16]``. Returns float32 (K,) ``s`` and ``inv_s`` = the
    float32 of ``1 / s`` (exact when ``pow2``). Example: act_max 64, weight_max 0.25,
    alpha 0.5 -> s = 8 / 0.5 = 16, inv_s = 0.0625.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    if act_max.shape != weight_max.shape or act_max.dim() != 1:
        raise ValueError(f"smoothing_scales: act_max {list(act_max.shape)} and weight_max {list(weight_max.shape)} "
                         "must be the same 1-D shape (K,)")
    a, w = act_max.to(torch.float64), weight_max.to(torch.float64)
    if not bool((torch.isfinite(a) & torch.isfinite(w) & (a >= 0) & (w >= 0)).all()):
        raise ValueError("smoothing_scales: act_max and weight_max must be finite and >= 0")
    live = (a > 0) & (w > 0)
    s = torch.where(live, a.clamp_min(1e-300) ** alpha / w.clamp_min(1e-300) ** (1.0 - alpha), 1.0)
    if pow2:
        s = torch.exp2(torch.round(torch.log2(s)))
    s = s.clamp(S_MIN, S_MAX)
    return s.to(torch.float32), (1.0 / s).to(torch.float32)


def default_run(model: nn.Module, batch: Any) -> Any:
    """One forward pass: a dict is keyword inputs, a tuple/list positional inputs, else one input."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def output_scales(out_min: Tensor, out_max: Tensor) -> tuple[Tensor, Tensor]:
    """``(t, inv_t)`` of eq. S3: powers of two that widen each output channel towards the whole
    per-tensor range ``[LO, HI] = [min_i out_min[i], max_i out_max[i]]`` without leaving it.

    Numerics: out_min, out_max float (N,), finite, ``out_min <= out_max`` (per-channel range of
    ``y`` on the calibration data). ``t_i = 2**k_i`` with ``k_i`` the largest integer such that
    ``t_i * out_max[i] <= HI`` (if ``out_max[i] > 0``) and ``t_i * out_min[i] >= LO`` (if
    ``out_min[i] < 0``): ``floor(log2(HI / out_max[i]))`` etc. in float64, corrected by one when
    the log rounds across an integer (products with powers of two are exact, so the check is).
    Hence the range of ``y * t`` is the range of ``y`` (same per-tensor qparams) and every
    channel gets at least as many levels. ``k_i >= 0``; an all-zero channel gets ``k_i = 0``;
    ``t <= S_MAX``. Returns float32 (N,) ``t`` and the exact ``inv_t = 1 / t``. Example: ranges
    [-8, 8], [-1, 3], [0, 0.5] -> t [1, 2, 16] ([-2, 6], [0, 8] inside [-8, 8]).
    """
    lo, hi = out_min.to(torch.float64), out_max.to(torch.float64)
    if lo.dim() != 1 or lo.shape != hi.shape or lo.numel() == 0 or \
            not bool((torch.isfinite(lo) & torch.isfinite(hi) & (lo <= hi)).all()):
        raise ValueError(f"output_scales: out_min {list(out_min.shape)} and out_max {list(out_max.shape)} must be "
                         "non-empty 1-D ranges, finite, with out_min <= out_max")
    top, bottom = hi.max(), lo.min()
    inf = torch.full_like(hi, math.inf)

    def largest_k(bound: Tensor, v: Tensor, live: Tensor) -> Tensor:  # max k with 2**k * v within bound
        k = torch.where(live, torch.floor(torch.log2(bound / torch.where(live, v, 1.0))), inf)
        return torch.where(live & (torch.exp2(k) * v.abs() > bound.abs()), k - 1, k)

    k = torch.minimum(largest_k(top, hi, hi > 0), largest_k(bottom, lo, lo < 0))
    k = torch.where(torch.isinf(k), 0.0, k)
    t = torch.exp2(k).clamp(1.0, S_MAX)
    return t.to(torch.float32), (1.0 / t).to(torch.float32)


def _wrapper(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, child name, Linear) of the nn.Linear at ``name``; ValueError otherwise."""
    if not name:
        raise ValueError("insert_channel_scale: the root module cannot be wrapped; give a submodule name")
    linear = model.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"layer {name!r}: needs an nn.Linear, got {type(linear).__name__}")
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child, linear


def _is_wrapped(parent: nn.Module, child: str) -> bool:
    """Whether ``parent`` is a wrapper made here: ``Sequential(ChannelScale, Linear)`` or
    ``Sequential(ChannelScale | Identity, Linear, ChannelScale)``, the Linear at "1"."""
    if not isinstance(parent, nn.Sequential) or child != "1":
        return False
    if len(parent) == 2:
        return isinstance(parent[0], ChannelScale)
    return (len(parent) == 3 and isinstance(parent[0], (ChannelScale, nn.Identity))
            and isinstance(parent[2], ChannelScale))


def insert_channel_scale(model: nn.Module, name: str, inv_s: Tensor, *, after: bool = False) -> str:
    """Put ``ChannelScale(inv_s)`` in front of (``after``: behind) the nn.Linear at ``name``.

    The module at ``name`` becomes ``nn.Sequential(ChannelScale | Identity, Linear[,
    ChannelScale])``; returns the Linear's new name, ``name + ".1"``. If the Linear already sits
    in such a wrapper (smoothed twice), the existing scale is multiplied by ``inv_s`` (or an
    Identity replaced, or the output scale appended) instead of nesting.
    """
    parent, child, linear = _wrapper(model, name)
    k = linear.out_features if after else linear.in_features
    if inv_s.shape != (k,):
        raise ValueError(f"layer {name!r}: inv_s must have shape [{k}] ({'out' if after else 'in'}_features), "
                         f"got {list(inv_s.shape)}")
    inv_s = inv_s.to(torch.float32)
    if not _is_wrapped(parent, child):
        wrapped = nn.Sequential(nn.Identity(), linear)
        setattr(parent, child, wrapped)
        parent, child, name = wrapped, "1", f"{name}.1"
    assert isinstance(parent, nn.Sequential)
    slot = 2 if after else 0
    old = parent[slot] if slot < len(parent) else None
    if isinstance(old, ChannelScale):
        old.inv_s.mul_(inv_s)
    elif after:
        parent.append(ChannelScale(k, inv_s))
    else:
        parent[0] = ChannelScale(k, inv_s)
    return name


class _Trace(TorchFunctionMode):
    """Hooks and a torch-function mode for one forward pass: who produced each Linear input,
    what else reads each LayerNorm output, and each Linear's per-channel input range."""

    def __init__(self, linears: dict[str, nn.Linear], norms: dict[str, nn.LayerNorm]) -> None:
        super().__init__()
        self.paused = False
        self.ln_out: dict[int, tuple[str, Tensor]] = {}  # id -> (LayerNorm, output kept alive)
        self.weight_of = {id(m.weight): n for n, m in linears.items()}
        self.act_max: dict[str, Tensor] = {}
        self.out_range: dict[str, tuple[Tensor, Tensor]] = {}  # per-channel (min, max) of the output
        self.producers: dict[str, set[str | None]] = {n: set() for n in linears}
        self.module_calls = dict.fromkeys(linears, 0)
        self.functional_calls = dict.fromkeys(linears, 0)
        self.foreign: dict[str, str] = {}  # LayerNorm -> the op that read its output
        self.ln_readers: dict[str, set[str]] = {n: set() for n in norms}  # LayerNorm -> Linears (F.linear)
        self.handles = [m.register_forward_pre_hook(self._linear_hook(n), with_kwargs=True)
                        for n, m in linears.items()]
        self.handles += [m.register_forward_hook(self._output_hook(n)) for n, m in linears.items()]
        self.handles += [m.register_forward_hook(self._norm_hook(n)) for n, m in norms.items()]

    def _linear_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs.get("input")
            if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() == 0:
                raise ValueError(f"layer {name!r}: smoothing needs a non-empty float tensor input, "
                                 f"got {type(x).__name__}")
            self.paused = True
            try:  # NaN propagates through the max and is reported by smooth()
                m = channel_max(x)
                self.act_max[name] = m if name not in self.act_max else torch.maximum(self.act_max[name], m)
            finally:
                self.paused = False
            hit = self.ln_out.get(id(x))
            self.producers[name].add(hit[0] if hit is not None and hit[1] is x else None)
            self.module_calls[name] += 1
        return hook

    def _output_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], y: Tensor) -> None:
            self.paused = True
            try:
                y2 = y.detach().reshape(-1, y.shape[-1])  # (M, N)
                lo, hi = y2.amin(dim=0).float(), y2.amax(dim=0).float()
                if name in self.out_range:
                    lo, hi = torch.minimum(self.out_range[name][0], lo), torch.maximum(self.out_range[name][1], hi)
                self.out_range[name] = (lo, hi)
            finally:
                self.paused = False
        return hook

    def _norm_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], y: Any) -> None:
            if isinstance(y, Tensor):
                self.ln_out[id(y)] = (name, y)
        return hook

    def _tracked(self, values: Iterable[Any]) -> list[tuple[str, Tensor]]:
        hits = []
        for v in values:
            hit = self.ln_out.get(id(v)) if isinstance(v, Tensor) else None
            if hit is not None and hit[1] is v:
                hits.append(hit)
        return hits

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused:
            return out
        if func is torch.nn.functional.linear:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            if id(w) in self.weight_of:
                self.functional_calls[self.weight_of[id(w)]] += 1
        hits = self._tracked(tree_flatten((args, kwargs))[0])
        if not hits:
            return out
        name = getattr(func, "__name__", str(func))
        in_place = (name.endswith("_") and not name.startswith("__")) or name.startswith("__i")
        if func is torch.nn.functional.linear and len(hits) == 1 and len(args) > 1 and args[0] is hits[0][1] \
                and id(args[1]) in self.weight_of:
            self.ln_readers[hits[0][0]].add(self.weight_of[id(args[1])])
            return out  # a Linear reads it: allowed if that Linear joins the LayerNorm's group
        if not in_place and any(o is t for _, t in hits for o in tree_flatten(out)[0]):
            return out  # a pass-through (eval dropout, contiguous): later readers are seen
        if not in_place and not any(isinstance(o, Tensor) for o in tree_flatten(out)[0]):
            return out  # metadata (size, dim, dtype)
        for ln, _ in hits:
            self.foreign.setdefault(ln, name)
        return out

    def end_batch(self, output: Any) -> None:
        """The model's output may not be a LayerNorm's output (it would change); forget ids."""
        for ln, _ in self._tracked(_leaves(output)):
            self.foreign.setdefault(ln, "model output")
        self.ln_out.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _leaves(obj: Any) -> list[Any]:
    """Tensors in nested dicts / lists / tuples (HF ``ModelOutput`` is a dict)."""
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _leaves(v)]
    return [obj] if isinstance(obj, Tensor) else []


def _eligible(model: nn.Module, names: Collection[str] | None) -> dict[str, nn.Linear]:
    """Plain float nn.Linear layers whose weight no other module shares (tied weights would change)."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    out = {}
    for n, m in model.named_modules():
        if n and type(m) is nn.Linear and (names is None or n in names) and m.weight.is_floating_point() \
                and owners[id(m.weight)] == 1:
            out[n] = m
    return out


def _fold_groups(trace: _Trace, norms: dict[str, nn.LayerNorm], called: Collection[str]) -> dict[str, list[str]]:
    """LayerNorm -> the Linears (model order) whose input may be divided by ``s`` inside it: the
    LayerNorm is affine, its output reaches only these Linears, and they read nothing else."""
    groups = {}
    for ln, readers in trace.ln_readers.items():
        if readers and ln not in trace.foreign and norms[ln].weight is not None and \
                all(n in called and trace.producers[n] == {ln} for n in readers):
            groups[ln] = [n for n in called if n in readers]
    return groups


def smooth(model: nn.Module, batches: Iterable[Any], alpha: float | None,
           run: Callable[[nn.Module, Any], Any] = default_run, *, outputs: bool = False, pow2: bool = True,
           names: Collection[str] | None = None) -> list[str]:
    """SmoothQuant ``model`` in place (eqs. S1, S2); returns the names of the smoothed Linears.

    ``batches``: calibration inputs, each given to ``run(model, batch)`` (which should return
    the model's output: a LayerNorm output that leaves the model is never folded).
    ``alpha``: migration strength of eq. S2 (``None``: inputs untouched). ``outputs``: also
    equalize each Linear's output channels (eq. S3, a ChannelScale behind the Linear).
    ``names``: only these Linears (default every ``nn.Linear`` below the root called on the
    batches; one whose weight another module shares, or that is used outside its own forward,
    is left alone). Names returned are those before smoothing; a Linear that got a
    :class:`ChannelScale` now lives at ``name + ".1"``. The float model computes the same
    function: exactly the same floats with ``pow2=True`` (see module docstring).
    """
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not 0.0 <= alpha <= 1.0):
        raise ValueError(f"smooth: alpha must be None or a number in [0, 1], got {alpha!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"smooth: model must be an nn.Module, got {type(model).__name__}")
    linears = _eligible(model, names)
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    trace = _Trace(linears, norms)
    seen = 0
    try:
        with torch.no_grad(), trace:
            for b in batches:
                trace.end_batch(run(model, b))
                seen += 1
    finally:
        trace.remove()
    if seen == 0:
        raise ValueError("smooth: calibration data is empty: give at least one input batch")
    called = {n: m for n, m in linears.items()
              if trace.module_calls[n] > 0 and trace.module_calls[n] == trace.functional_calls[n]}
    for n in called:
        if not all(bool(torch.isfinite(v).all()) for v in (trace.act_max[n], *trace.out_range[n])):
            raise ValueError(f"layer {n!r}: NaN or Inf on the calibration data; smoothing needs finite values")
    with torch.no_grad():
        where = {n: n for n in called}  # current name of each Linear (wrapping moves it to name + ".1")
        if alpha is not None:
            folded: set[str] = set()
            for ln, members in _fold_groups(trace, norms, called).items():
                norm = norms[ln]
                act = torch.stack([trace.act_max[n] for n in members]).amax(dim=0)  # (K,)
                w_max = torch.cat([linears[n].weight.detach().abs() for n in members]).amax(dim=0).float()  # (K,)
                s, inv_s = smoothing_scales(act, w_max, alpha, pow2=pow2)
                for n in members:
                    linears[n].weight.mul_(s.to(linears[n].weight.dtype))  # (N, K) * (K,)
                assert norm.weight is not None
                norm.weight.mul_(inv_s.to(norm.weight.dtype))
                if norm.bias is not None:
                    norm.bias.mul_(inv_s.to(norm.bias.dtype))
                folded.update(members)
            for n, m in called.items():
                if n not in folded:
                    w_max = m.weight.detach().abs().amax(dim=0).float()  # (K,)
                    s, inv_s = smoothing_scales(trace.act_max[n], w_max, alpha, pow2=pow2)
                    m.weight.mul_(s.to(m.weight.dtype))  # (N, K) * (K,)
                    where[n] = insert_channel_scale(model, n, inv_s)
        if outputs:
            for n, m in called.items():
                t, inv_t = output_scales(*trace.out_range[n])
                m.weight.mul_(t.to(m.weight.dtype)[:, None])  # (N, K) * (N, 1)
                if m.bias is not None:
                    m.bias.mul_(t.to(m.bias.dtype))
                where[n] = insert_channel_scale(model, where[n], inv_t, after=True)
    return list(called)
