"""Rate-distortion bit allocation: the seed post's ``loss = distortion + lambda * |levels|``, solved per layer.

Every float ``nn.Linear`` of a model may become a :class:`~glassquant.nn.weight_only.PackedWeightOnlyLinear`
with one of many settings (a :class:`Candidate`: bits 2..8, per tensor / channel / group of 32, 64 or 128,
a clipping ratio of the weight range or the MSE-optimal one). For each layer and candidate we build the
real layer (packed integers, scales, zero points) and measure

- its **rate** ``R``: the bytes it stores (codes + scales + zero points: ``layer.weight_bytes()``), and
- its **distortion** ``D``: the sum of squared errors of the quantized layer's actual output against the
  float layer's output, on the layer's own inputs captured from the float model on calibration data.
  With ``distortion="output"`` (default) it is weighted by the layer's measured effect on the model's
  output: ``w = SSE(model output) / SSE(layer output)`` with that one layer at a probe setting
  (4 bits per channel), so ``w * D`` estimates the model-output squared error the layer adds (errors of
  different layers add up when they are independent). ``"model"`` measures that directly: the model-output
  SSE with the one layer at each candidate and every other layer float (one model run per candidate: for
  small models). ``"layer"`` uses the plain layer SSE.

For a multiplier ``lam >= 0`` the Lagrangian ``sum_i D_i + lam * R_i`` separates: each layer takes its own
``argmin D + lam * R`` (:func:`lagrangian_choice`). Sweeping ``lam`` from infinity to 0 moves every layer
along the lower convex hull of its (R, D) points; :func:`lagrangian_path` lists every distinct solution, in
order of model bytes. A budget picks the largest solution that fits; ``max_drop`` the smallest whose
*measured* task metric (the mixed model actually run) drops by at most ``max_drop``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..kernels.int4 import packed_bytes
from ..nn.weight_only import INT4_GROUP_SIZES, PACKED_BITS, PackedWeightOnlyLinear
from .lagrangian import Choice, PathPoint, budget_point, fill_budget, lagrangian_choice, lagrangian_path, spread
from .report import default_run

__all__ = ["Allocation", "Candidate", "CandidateTable", "LayerOptions", "allocate", "allocate_command",
           "apply_allocation", "budget_point", "candidate_space", "fill_budget", "lagrangian_choice",
           "lagrangian_path", "measure_candidates"]

Run = Callable[[nn.Module, Any], Any]
Metric = Callable[[nn.Module], float]

#: Clipping ratios tried by default: the whole range, three tighter ones, and the per-group MSE-optimal one.
DEFAULT_CLIPS: tuple[float | str, ...] = (1.0, 0.95, 0.9, 0.85, "mse")
#: How a candidate's distortion is measured (module docstring).
DISTORTIONS = ("output", "model", "layer")
#: ``distortion="auto"`` measures "model" when that takes at most this many batch runs, else "output".
AUTO_MODEL_RUNS = 5000
#: Granularities tried by default: per tensor, per channel, per group of 32 / 64 / 128 (ints).
DEFAULT_GRANULARITIES: tuple[str | int, ...] = ("per_tensor", "per_channel", *INT4_GROUP_SIZES)


@dataclass(frozen=True)
class Candidate:
    """One setting of a layer's weights: ``bits``, how scales are shared, the clipping of the range."""

    bits: int
    granularity: str  # "per_tensor", "per_channel" or "per_group"
    group_size: int | None = None
    clip: float | str = 1.0

    @property
    def label(self) -> str:
        """Short name, e.g. ``"4b g128 c0.90"``, ``"8b ch c1.00"``, ``"3b t mse"``."""
        g = {"per_tensor": "t", "per_channel": "ch"}.get(self.granularity, f"g{self.group_size}")
        c = self.clip if isinstance(self.clip, str) else f"c{self.clip:.2f}"
        return f"{self.bits}b {g} {c}"

    def fits(self, in_features: int) -> bool:
        """Whether a layer with ``in_features`` inputs can take it (a group must divide K and be
        smaller than K: a group of all K is per channel)."""
        return self.granularity != "per_group" or (in_features % (self.group_size or 1) == 0
                                                   and (self.group_size or 1) < in_features)

    def weight_bytes(self, out_features: int, in_features: int) -> int:
        """Bytes the layer will store: ``ceil(N*K*b/8) + 4*G + ceil(G*b/8)`` for G (scale, zero point) pairs."""
        groups = {"per_tensor": 1, "per_channel": out_features}.get(
            self.granularity, out_features * in_features // (self.group_size or 1))
        return packed_bytes(out_features * in_features, self.bits) + 4 * groups + packed_bytes(groups, self.bits)

    def build(self, linear: nn.Module, name: str) -> PackedWeightOnlyLinear:
        """The quantized layer for a float ``nn.Linear`` (``TypeError`` for another module)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"layer {name!r}: expected nn.Linear, got {type(linear).__name__}")
        return PackedWeightOnlyLinear.from_float(linear, bits=self.bits, granularity=self.granularity,
                                                 group_size=self.group_size, clip=self.clip, name=name)


def candidate_space(bits: Iterable[int] = PACKED_BITS, granularities: Iterable[str | int] = DEFAULT_GRANULARITIES,
                    clips: Iterable[float | str] = DEFAULT_CLIPS) -> tuple[Candidate, ...]:
    """Every combination; a granularity is ``"per_tensor"``, ``"per_channel"`` or a group size (int)."""
    out = []
    for b in bits:
        for g in granularities:
            for c in clips:
                if isinstance(g, int):
                    out.append(Candidate(int(b), "per_group", g, c))
                else:
                    out.append(Candidate(int(b), g, None, c))
    return tuple(out)


@dataclass(frozen=True)
class LayerOptions:
    """One layer's measured candidates: ``bytes[j]`` and ``sse[j]`` of ``candidates[j]`` (layer-output SSE,
    or model-output SSE for distortion="model")."""

    name: str
    out_features: int
    in_features: int
    candidates: tuple[Candidate, ...]
    bytes: tuple[int, ...]
    sse: tuple[float, ...]
    weight: float  # distortion per unit of ``sse`` (1.0 unless distortion="output")
    rows: int  # calibration rows the layer SSE was measured on

    def distortion(self, j: int) -> float:
        return self.weight * self.sse[j]


@dataclass(frozen=True)
class CandidateTable:
    """Every allocatable layer's options (in model order) and how distortion was weighted."""

    layers: tuple[LayerOptions, ...]
    distortion: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CandidateTable:
        doc = json.loads(text)
        layers = tuple(LayerOptions(**{**d, "candidates": tuple(Candidate(**c) for c in d["candidates"]),
                                       "bytes": tuple(d["bytes"]), "sse": tuple(d["sse"])}) for d in doc["layers"])
        return cls(layers, doc["distortion"])

    def min_bytes(self) -> int:
        return sum(min(opt.bytes) for opt in self.layers)


def float_layers(model: nn.Module, include: Sequence[str] | None = None) -> dict[str, nn.Linear]:
    """The float ``nn.Linear`` layers (exact type) whose names match ``include`` globs (default: all)."""
    return {n: m for n, m in model.named_modules() if type(m) is nn.Linear
            and (include is None or any(fnmatch.fnmatchcase(n, p) for p in include))}


def output_tensor(y: Any) -> Tensor:
    """A model's output as one float32 tensor: a sentence-transformers dict gives ``sentence_embedding``."""
    if isinstance(y, Mapping):  # a dict, or a tokenizer's BatchEncoding that the model filled in
        y = y["sentence_embedding"] if "sentence_embedding" in y else next(iter(y.values()))
    elif isinstance(y, (tuple, list)):
        y = y[0]
    if hasattr(y, "last_hidden_state"):
        y = y.last_hidden_state
    return torch.as_tensor(y).detach().to(torch.float32)


def _outputs(model: nn.Module, batches: Sequence[Any], run: Run) -> list[Tensor]:
    with torch.no_grad():
        return [output_tensor(run(model, b)) for b in batches]


def _sse(a: Tensor, b: Tensor) -> float:
    """Sum of squared differences in float64."""
    return float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).sum())


@contextlib.contextmanager
def swapped(model: nn.Module, layers: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """``model`` with the named submodules replaced by ``layers``, restored afterwards."""
    old = {n: model.get_submodule(n) for n in layers}
    for n, m in layers.items():
        _set(model, n, m)
    try:
        yield model
    finally:
        for n, m in old.items():
            _set(model, n, m)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _attention_mask(batch: Any) -> Tensor | None:
    """The (B, T) ``attention_mask`` of a tokenized batch (a mapping, or a tuple starting with one), else None."""
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    mask = first.get("attention_mask") if isinstance(first, Mapping) else None
    return mask if isinstance(mask, Tensor) and mask.dim() == 2 else None


def capture_inputs(model: nn.Module, names: Sequence[str], batches: Sequence[Any], run: Run,
                   max_rows: int) -> dict[str, Tensor]:
    """Each layer's input rows (M, K) float32 over ``batches``, at most ``max_rows`` evenly spaced ones.

    A tokenized batch's padding positions (``attention_mask == 0``) are left out: the model computes
    them, but they never reach its output.
    """
    rows: dict[str, list[Tensor]] = {n: [] for n in names}
    mask: list[Tensor | None] = [None]

    def hook(n: str, x: Tensor) -> None:
        m = mask[0]
        keep = x[m.bool()] if m is not None and x.dim() == 3 and x.shape[:2] == m.shape else x  # (rows, K)
        rows[n].append(keep.detach().reshape(-1, x.shape[-1]).to(torch.float32))

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda mod, args, n=n: hook(n, args[0]))
               for n in names]
    try:
        with torch.no_grad():
            for b in batches:
                mask[0] = _attention_mask(b)
                run(model, b)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, parts in rows.items():
        x = torch.cat(parts)  # (M, K)
        if len(x) > max_rows:
            x = x[torch.linspace(0, len(x) - 1, max_rows).round().long()]  # (max_rows, K)
        out[n] = x
    return out


def measure_candidates(model: nn.Module, calibration: Iterable[Any], *, run: Run | None = None,
                       candidates: Sequence[Candidate] | None = None, include: Sequence[str] | None = None,
                       max_rows: int = 1024, distortion: str = "auto",
                       probe: Candidate = Candidate(4, "per_channel"),
                       progress: Callable[[str], None] | None = None) -> CandidateTable:
    """Rate and distortion of every candidate of every float Linear (module docstring).

    Numerics: SSE in float64 between the float layer's output and the quantized layer's real
    output (``PackedWeightOnlyLinear.forward``: unpacked integers, eq. 1, float32 matmul) on the
    same captured float32 input rows. ``bytes`` is the built layer's ``weight_bytes()`` (checked
    against :meth:`Candidate.weight_bytes`). ``progress`` is called with a line per measured layer.
    """
    batches, run_ = _check_calibration(calibration), run or default_run
    if distortion not in ("auto", *DISTORTIONS):
        raise ValueError(f"distortion must be 'auto' or one of {DISTORTIONS}, got {distortion!r}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    layers = float_layers(model, include)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no float nn.Linear to allocate bits to"
                         + ("" if include is None else f" matching {list(include)}"))
    space = tuple(candidates) if candidates is not None else candidate_space()
    if not space:
        raise ValueError("the candidate set is empty")
    if distortion == "auto":
        runs = sum(c.fits(m.in_features) for m in layers.values() for c in space) * len(batches)
        distortion = "model" if runs <= AUTO_MODEL_RUNS else "output"
    inputs = capture_inputs(model, list(layers), batches, run_, max_rows)
    reference = _outputs(model, batches, run_) if distortion != "layer" else []

    def model_sse(name: str, q: nn.Module) -> float:
        with swapped(model, {name: q}):
            return sum(_sse(a, b) for a, b in zip(_outputs(model, batches, run_), reference, strict=True))

    options = []
    with torch.no_grad():
        for name, lin in layers.items():
            x = inputs.pop(name)
            y = lin(x)  # (M, N) float
            cands = tuple(c for c in space if c.fits(lin.in_features))
            if not cands:
                raise ValueError(f"layer {name!r}: no candidate fits in_features {lin.in_features}")
            sizes, errs = [], []
            for c in cands:
                q = c.build(lin, name)
                sizes.append(q.weight_bytes())
                assert sizes[-1] == c.weight_bytes(lin.out_features, lin.in_features), (name, c)
                errs.append(model_sse(name, q) if distortion == "model" else _sse(q(x), y))
            weight = 1.0
            if distortion == "output":
                q = probe.build(lin, name)
                weight = model_sse(name, q) / max(_sse(q(x), y), 1e-30)
            options.append(LayerOptions(name, lin.out_features, lin.in_features, cands, tuple(sizes), tuple(errs),
                                        weight, len(x)))
            if progress is not None:
                progress(f"{len(options)}/{len(layers)} {name}: {len(cands)} candidates on {len(x)} rows")
    return CandidateTable(tuple(options), distortion)


def _check_calibration(calibration: Iterable[Any]) -> list[Any]:
    batches = list(calibration) if calibration is not None else []
    if not batches:
        raise ValueError("calibration set is empty: allocation measures distortion on calibration inputs")
    return batches


# ---- allocate a model -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """A model measured on the size / metric plane (``lam`` None for a uniform setting)."""

    label: str
    weight_bytes: int
    metric: float | None
    lam: float | None = None


@dataclass(frozen=True)
class Allocation:
    """Per-layer settings, their bytes, the metric of the mixed model actually run, and the curves.

    ``weight_bytes`` counts the allocated layers' packed codes + scales + zero points;
    ``float_weight_bytes`` the same layers' float weights; ``other_bytes`` every other tensor of the
    model as stored (biases, embeddings, norms). ``budget_bytes`` constrains ``weight_bytes``.
    """

    choices: dict[str, Candidate]
    shapes: dict[str, tuple[int, int]]  # (out_features, in_features)
    layer_bytes: dict[str, int]
    layer_distortion: dict[str, float]
    weight_bytes: int
    float_weight_bytes: int
    other_bytes: int
    lam: float
    metric: float | None
    float_metric: float | None
    pareto: tuple[Point, ...] = ()
    uniform: tuple[Point, ...] = ()
    distortion: str = "output"

    @property
    def ratio(self) -> float:
        """``weight_bytes / float_weight_bytes``."""
        return self.weight_bytes / self.float_weight_bytes


def _build(model: nn.Module, table: CandidateTable, choice: Choice) -> dict[str, nn.Module]:
    return {opt.name: opt.candidates[choice[opt.name]].build(model.get_submodule(opt.name), opt.name)
            for opt in table.layers}


def _run_metric(model: nn.Module, layers: Mapping[str, nn.Module], metric: Metric) -> float:
    with swapped(model, layers), torch.no_grad():
        return float(metric(model))


def uniform_choice(table: CandidateTable, candidate: Candidate) -> dict[str, Candidate]:
    """``candidate`` for every layer; a layer it does not fit (group vs K) gets the same bits per channel."""
    return {opt.name: candidate if candidate.fits(opt.in_features) else
            Candidate(candidate.bits, "per_channel", None, candidate.clip) for opt in table.layers}


def allocate(model: nn.Module, calibration: Iterable[Any], metric: Metric | None, budget_bytes: int | None = None,
             max_drop: float | None = None, *, lam: float | None = None, run: Run | None = None,
             candidates: Sequence[Candidate] | None = None, include: Sequence[str] | None = None,
             max_rows: int = 1024, distortion: str = "auto", pareto_points: int = 0,
             uniform: Sequence[Candidate] = (), table: CandidateTable | None = None, fill: bool = True,
             progress: Callable[[str], None] | None = None) -> Allocation:
    """Choose every float Linear's setting by the Lagrangian (module docstring); ``model`` is not changed.

    Give exactly one of ``budget_bytes`` (largest Lagrangian solution whose weight bytes fit),
    ``max_drop`` (smallest solution on the path whose measured ``metric`` is at most ``max_drop`` below
    the float model's: a binary search over the path, every answer measured) or ``lam`` (one point).
    ``metric(model) -> float`` is higher-is-better (accuracy, mean cosine). ``pareto_points`` path
    solutions spread over the byte range and every ``uniform`` setting are also run and returned.
    ``table`` reuses a :func:`measure_candidates` result (``calibration`` must still be non-empty).
    ``fill``: spend a budget's remainder with :func:`fill_budget` (budget mode only).
    """
    if sum(v is not None for v in (budget_bytes, max_drop, lam)) != 1:
        raise ValueError("give exactly one of budget_bytes, max_drop or lam")
    if lam is not None and not lam >= 0:
        raise ValueError(f"lambda (lam) must be >= 0, got {lam}")
    if max_drop is not None and (not max_drop >= 0 or metric is None):
        raise ValueError(f"max_drop must be >= 0 and needs a metric, got {max_drop} (metric {metric})")
    batches = _check_calibration(calibration)
    if budget_bytes is not None and table is None:  # fail before measuring anything
        space = tuple(candidates) if candidates is not None else candidate_space()
        smallest = sum(min((c.weight_bytes(m.out_features, m.in_features) for c in space if c.fits(m.in_features)),
                           default=0) for m in float_layers(model, include).values())
        if budget_bytes < smallest:
            raise ValueError(f"budget_bytes {budget_bytes} is below the smallest possible model: {smallest} bytes "
                             "(every layer at its smallest candidate)")
    if table is None:
        table = measure_candidates(model, batches, run=run, candidates=candidates, include=include,
                                   max_rows=max_rows, distortion=distortion, progress=progress)
    path = lagrangian_path(table)
    float_metric = None if metric is None else _run_metric(model, {}, metric)
    measured: dict[int, float] = {}

    def measure(i: int) -> float:
        if i not in measured:
            assert metric is not None
            measured[i] = _run_metric(model, _build(model, table, path[i].choice), metric)
        return measured[i]

    if lam is not None:
        choice = lagrangian_choice(table, lam)
        opts = {o.name: o for o in table.layers}
        chosen = PathPoint(lam, choice, sum(opts[n].bytes[j] for n, j in choice.items()),
                           sum(opts[n].distortion(j) for n, j in choice.items()))
        score = None if metric is None else _run_metric(model, _build(model, table, choice), metric)
    elif budget_bytes is not None:
        chosen = budget_point(path, budget_bytes)
        if fill:
            chosen = fill_budget(table, chosen, budget_bytes)
        score = None if metric is None else _run_metric(model, _build(model, table, chosen.choice), metric)
    else:
        assert max_drop is not None and float_metric is not None
        ok = lambda i: float_metric - measure(i) <= max_drop  # noqa: E731
        lo, hi = 0, len(path) - 1
        if not ok(hi):
            raise ValueError(f"max_drop {max_drop} cannot be met: the most accurate allocation drops the metric by "
                             f"{float_metric - measure(hi):.4g}")
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
        chosen, score = path[hi], measure(hi)
    pareto = tuple(Point(f"lambda {path[i].lam:.3g}", path[i].bytes, measure(i) if metric else None, path[i].lam)
                   for i in spread(path, pareto_points))
    uni, seen = [], []
    for c in uniform:
        per_layer = uniform_choice(table, c)
        if per_layer in seen:  # a group setting that fell back to per channel everywhere
            continue
        seen.append(per_layer)
        layers = {n: per_layer[n].build(model.get_submodule(n), n) for n in per_layer}
        size = sum(q.weight_bytes() for q in layers.values())
        label = "uniform " + " / ".join(dict.fromkeys(x.label for x in per_layer.values()))  # what each layer got
        uni.append(Point(label, size, None if metric is None else _run_metric(model, layers, metric)))
    return _allocation(model, table, chosen, score, float_metric, pareto, tuple(uni))


def _allocation(model: nn.Module, table: CandidateTable, p: PathPoint, score: float | None,
                float_metric: float | None, pareto: tuple[Point, ...], uniform: tuple[Point, ...]) -> Allocation:
    opts = {o.name: o for o in table.layers}
    weights = [model.get_parameter(f"{n}.weight") for n in opts]
    float_bytes = sum(w.numel() * w.element_size() for w in weights)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return Allocation(choices={n: opts[n].candidates[j] for n, j in p.choice.items()},
                      shapes={n: (o.out_features, o.in_features) for n, o in opts.items()},
                      layer_bytes={n: opts[n].bytes[j] for n, j in p.choice.items()},
                      layer_distortion={n: opts[n].distortion(j) for n, j in p.choice.items()},
                      weight_bytes=p.bytes, float_weight_bytes=float_bytes, other_bytes=total - float_bytes,
                      lam=p.lam, metric=score, float_metric=float_metric, pareto=pareto, uniform=uniform,
                      distortion=table.distortion)


def apply_allocation(model: nn.Module, allocation: Allocation) -> nn.Module:
    """Swap each allocated ``nn.Linear`` of ``model`` for its quantized layer; returns ``model`` itself.

    Every layer is built (and checked against the allocation's shape) before any is swapped.
    """
    built = {}
    for name, c in allocation.choices.items():
        try:
            m = model.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"apply_allocation: the model has no layer {name!r}") from e
        if type(m) is not nn.Linear:
            raise ValueError(f"apply_allocation: layer {name!r} is a {type(m).__name__}, not a float nn.Linear "
                             "(already quantized?)")
        if (m.out_features, m.in_features) != tuple(allocation.shapes[name]):
            raise ValueError(f"apply_allocation: layer {name!r} is ({m.out_features}, {m.in_features}), the "
                             f"allocation was made for {tuple(allocation.shapes[name])}")
        built[name] = c.build(m, name)
    for name, q in built.items():
        _set(model, name, q)
    return model


def allocate_command(args: Any, console: Any) -> int:
    """``glassquant allocate``: see :func:`glassquant.analysis.allocate_cli.allocate_command`."""
    from .allocate_cli import allocate_command as run

    return run(args, console)
