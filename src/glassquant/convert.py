"""Convert a float model: fuse, observe ranges on calibration batches, swap layers.

``quantize(model, config, calibration)`` returns the *same* model object with its
``nn.Linear`` (and, for static configs, ``nn.Conv1d``/``nn.Conv2d``; for weight-only,
``nn.Embedding``) replaced by glassquant layers — torchao's ``quantize_`` convention, so a
SentenceTransformer keeps its ``encode``. In an ``nn.Sequential``, a Linear/Conv followed by
``nn.ReLU`` is fused (as torch.ao's ``fuse_modules`` does); Conv followed by BatchNorm is
folded first. Layers that cannot be quantized stay float and are listed with the reason.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import observers as _observers
from .config import PRESETS, Config, DynamicConfig, StaticConfig, WeightOnlyConfig, resolve
from .nn.base import QuantModule
from .nn.linear import DynamicQuantLinear, QuantLinear

__all__ = [
    "PRESETS",
    "ConversionResult",
    "DynamicConfig",
    "LayerCalibration",
    "StaticConfig",
    "WeightOnlyConfig",
    "integer_outputs",
    "quantize",
]


@dataclass
class LayerCalibration:
    """What calibration saw for one layer: raw ranges and the qparams chosen."""

    input_range: tuple[float, float]
    output_range: tuple[float, float]
    x_qparams: tuple[float, int]
    y_qparams: tuple[float, int]
    batches: int


@dataclass
class ConversionResult:
    """What ``quantize`` did: converted layers, fused ReLUs, folded BNs, layers left in float."""

    config: Any = None
    converted: list[str] = field(default_factory=list)
    fused_relu: list[str] = field(default_factory=list)
    folded_bn: list[str] = field(default_factory=list)
    smoothed: list[str] = field(default_factory=list)  # Linears given SmoothQuant channel scales
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason
    calibration: dict[str, LayerCalibration] = field(default_factory=dict)


def _static_types() -> tuple[type[nn.Module], ...]:
    return (nn.Linear, nn.Conv1d, nn.Conv2d)


def _candidate_types(cfg: Config) -> tuple[type[nn.Module], ...]:
    if isinstance(cfg, StaticConfig):
        return _static_types()
    if isinstance(cfg, WeightOnlyConfig):
        return (nn.Linear, nn.Embedding) if cfg.embeddings else (nn.Linear,)
    return (nn.Linear,)


def sequential_patterns(model: nn.Module) -> list[list[str]]:
    """Fusion groups found in ``nn.Sequential`` containers, torch.ao's eager patterns:
    ``[conv, bn, relu]``, ``[conv, bn]``, ``[conv|linear, relu]``, ``[linear, bn]``."""
    groups: list[list[str]] = []
    for prefix, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        names = list(mod._modules)
        p = f"{prefix}." if prefix else ""
        i = 0
        while i < len(names):
            kinds = [type(mod._modules[n]) for n in names[i:i + 3]]
            is_conv = kinds and kinds[0] in (nn.Conv1d, nn.Conv2d)
            is_bn = len(kinds) > 1 and kinds[1] in (nn.BatchNorm1d, nn.BatchNorm2d)
            if is_conv and is_bn and len(kinds) > 2 and kinds[2] is nn.ReLU:
                groups.append([p + n for n in names[i:i + 3]])
                i += 3
            elif (is_conv or (kinds and kinds[0] is nn.Linear)) and is_bn:
                groups.append([p + n for n in names[i:i + 2]])
                i += 2
            elif kinds and kinds[0] in (nn.Linear, nn.Conv1d, nn.Conv2d) and len(kinds) > 1 and kinds[1] is nn.ReLU:
                groups.append([p + n for n in names[i:i + 2]])
                i += 2
            else:
                i += 1
    return groups


def linear_relu_pairs(model: nn.Module) -> dict[str, str]:
    """``{layer name: relu name}`` for each Linear/Conv directly followed by ``nn.ReLU`` in an
    ``nn.Sequential`` (used by the torch.ao interop to fuse the same pairs)."""
    return {g[0]: g[-1] for g in sequential_patterns(model) if len(g) == 2 and isinstance(
        model.get_submodule(g[1]), nn.ReLU)}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _batches(calibration: Iterable[Any] | None) -> list[Any]:
    if calibration is None:
        raise ValueError("static quantization needs calibration data (an iterable of input batches)")
    if isinstance(calibration, Tensor):
        calibration = [calibration]
    batches = list(calibration)
    if not batches:
        raise ValueError("calibration data is empty: give at least one input batch")
    return batches


def run_batch(model: nn.Module, batch: Any) -> None:
    """Feed one calibration batch to ``model``: ``model(**batch)`` for a dict, ``model(*batch)`` for a
    tuple or list, else ``model(batch)`` (the rule of every calibration pass: observers, GPTQ, AdaRound,
    QAT)."""
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


def _progress(enabled: bool | None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    on = sys.stderr.isatty() if enabled is None else enabled
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), disable=not on,
                    transient=False)


def _fuse(model: nn.Module, groups: list[list[str]], result: ConversionResult) -> dict[str, str]:
    """Fold BNs into the layer before them; return ``{layer: relu}`` for fused ReLUs."""
    relu_of: dict[str, str] = {}
    for g in groups:
        mods = [model.get_submodule(n) for n in g]
        if len(mods) > 1 and isinstance(mods[1], (nn.BatchNorm1d, nn.BatchNorm2d)):
            from .fold import fold_conv_bn, fold_linear_bn

            layer, bn = mods[0], mods[1]
            folded: nn.Module = (fold_linear_bn(layer, bn, g[0]) if isinstance(layer, nn.Linear)
                                 else fold_conv_bn(layer, bn, g[0]))  # type: ignore[arg-type, type-var]
            _set_module(model, g[0], folded)
            _set_module(model, g[1], nn.Identity())
            result.folded_bn.append(g[0])
        if isinstance(mods[-1], nn.ReLU):
            relu_of[g[0]] = g[-1]
    return relu_of


def _selected(name: str, module: nn.Module, types: tuple[type[nn.Module], ...],
              include: Sequence[str] | None, exclude: Sequence[str] | None) -> str | None:
    """``None`` if the layer is to be quantized, else the reason it is not."""
    if type(module) not in types:
        return f"type {type(module).__name__} not selected"
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return "not matched by include patterns"
    if exclude is not None and any(fnmatch.fnmatchcase(name, p) for p in exclude):
        return "excluded by pattern"
    return None


def run_batches(model: nn.Module, batches: Iterable[Any], handles: Sequence[Any] = (), *,
                run: Callable[[nn.Module, Any], Any] | None = None, progress: bool | None = False,
                description: str = "calibration") -> int:
    """Run the model on every batch (``run``, default :func:`run_batch`; no grad; a progress bar when
    ``progress``), then remove the hooks in ``handles`` (also on error). Returns the number of batches
    (the caller decides whether 0 is an error)."""
    seen = 0
    try:
        with torch.no_grad(), _progress(progress) as bar:
            task = bar.add_task(description, total=len(batches) if isinstance(batches, Sized) else None)
            for b in batches:
                (run or run_batch)(model, b)
                seen += 1
                bar.advance(task)
    finally:
        for h in handles:
            h.remove()
    return seen


def calibrate(model: nn.Module, layers: dict[str, nn.Module], relu_of: dict[str, str], batches: list[Any],
              cfg: StaticConfig, progress: bool | None = None) -> dict[str, tuple[Any, Any]]:
    """Run the float model on every batch, observing each layer's input and (fused) output."""
    make = _observers.make_observer
    observers = {n: (make(cfg.observer, cfg.activation, f"layer {n!r}: input"),
                     make(cfg.observer, cfg.activation, f"layer {n!r}: output"))
                 for n in layers}
    handles = []
    for n, layer in layers.items():
        obs_in, obs_out = observers[n]
        handles.append(layer.register_forward_pre_hook(lambda m, a, o=obs_in: o.update(a[0].detach())))
        out_mod = model.get_submodule(relu_of[n]) if n in relu_of else layer
        handles.append(out_mod.register_forward_hook(lambda m, a, y, o=obs_out: o.update(y.detach())))
    run_batches(model, batches, handles, progress=progress, description=f"calibrating {len(layers)} layers")
    for n, (obs_in, _) in observers.items():
        if obs_in.batches == 0:
            raise ValueError(f"layer {n!r} was never called on the calibration data")
    return observers


def _convert_static(name: str, module: nn.Module, x: tuple[float, int], y: tuple[float, int],
                    cfg: StaticConfig, relu: bool) -> nn.Module:
    if isinstance(module, nn.Linear):
        return QuantLinear.from_float(module, x[0], x[1], y[0], y[1], weight_scheme=cfg.weight, relu=relu,
                                      engine=cfg.engine, name=name)
    from .nn.conv import QuantConv1d, QuantConv2d

    cls = QuantConv1d if isinstance(module, nn.Conv1d) else QuantConv2d
    return cls.from_float(module, x[0], x[1], y[0], y[1], weight_scheme=cfg.weight, relu=relu,
                          engine=cfg.engine, name=name)


def _convert_other(name: str, module: nn.Module, cfg: DynamicConfig | WeightOnlyConfig) -> nn.Module:
    if isinstance(cfg, DynamicConfig):
        assert isinstance(module, nn.Linear)
        return DynamicQuantLinear.from_float(module, weight_scheme=cfg.weight, engine=cfg.engine,
                                             reduce_range=cfg.reduce_range, name=name)
    if isinstance(module, nn.Embedding):
        from .nn.embedding import QuantEmbedding

        return QuantEmbedding.from_float(module, name=name)
    from .nn.weight_only import WeightOnlyLinear

    assert isinstance(module, nn.Linear)
    return WeightOnlyLinear.from_float(module, bits=cfg.bits, group_size=cfg.group_size, name=name)


def _gptq_hessians(model: nn.Module, layers: dict[str, nn.Module], calibration: Iterable[Any] | None,
                   cfg: WeightOnlyConfig, progress: bool | None) -> dict[str, Any]:
    """Input Hessians ``2/n sum x x^T`` of the int4 Linears, when GPTQ applies (see WeightOnlyConfig)."""
    if cfg.bits != 4 or cfg.method == "rtn" or (cfg.method == "auto" and calibration is None):
        return {}
    from .gptq import HessianAccumulator

    batches = _batches(calibration)
    accs = {n: HessianAccumulator(m.in_features, f"layer {n!r}") for n, m in layers.items()
            if isinstance(m, nn.Linear)}
    handles = [layers[n].register_forward_pre_hook(lambda mod, a, acc=acc: acc.add(a[0].detach()))
               for n, acc in accs.items()]
    run_batches(model, batches, handles, progress=progress, description=f"GPTQ statistics for {len(accs)} layers")
    return accs


def quantize(model: nn.Module, config: str | Config = "x86", calibration: Iterable[Any] | None = None, *,
             include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
             types: Sequence[type[nn.Module]] | None = None, fuse: Sequence[Sequence[str]] | None = None,
             progress: bool | None = None) -> nn.Module:
    """Replace the quantizable layers of ``model`` by glassquant layers; returns ``model``.

    ``config``: a preset name (``glassquant.PRESETS``) or a config object. Static configs
    observe each layer's input and output on ``calibration`` (an iterable of batches: tensors,
    tuples of positional inputs, or dicts of keyword inputs). ``include``/``exclude``: glob
    patterns on layer names; ``types``: module types to consider; ``fuse``: extra
    ``[[conv, bn, relu], ...]`` name groups for models that are not ``nn.Sequential``.
    ``model.glassquant_conversion`` then holds a :class:`ConversionResult`.
    """
    cfg = resolve(config)
    result = ConversionResult(config=cfg)
    model.eval()
    candidates = _candidate_types(cfg) if types is None else tuple(types)
    if isinstance(cfg, StaticConfig):
        groups = sequential_patterns(model) + [list(g) for g in (fuse or [])]
        relu_of = _fuse(model, groups, result)
    else:
        relu_of = {}
    moved: dict[str, str] = {}
    if isinstance(cfg, StaticConfig) and cfg.smoothing is not None:
        from .smooth import smooth

        calibration = _batches(calibration)  # a list: smoothing and calibration both read it
        want = [n for n, m in model.named_modules() if n and type(m) is nn.Linear and n not in relu_of
                and _selected(n, m, candidates, include, exclude) is None]
        result.smoothed = smooth(model, calibration, cfg.smoothing, outputs=True, names=want)
        moved = {f"{n}.1": n for n in result.smoothed}  # a smoothed Linear moves into a wrapper
    layers: dict[str, nn.Module] = {}
    for n, m in model.named_modules():
        if not n or isinstance(m, QuantModule) or list(m.children()):
            continue
        reason = _selected(moved.get(n, n), m, candidates, include, exclude)
        if reason is None:
            layers[n] = m
        elif any(p.numel() for p in m.parameters(recurse=False)) and type(m) not in (nn.LayerNorm,):
            result.skipped[n] = reason
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layer to quantize "
                         f"(looked for {', '.join('nn.' + t.__name__ for t in candidates)})")
    observers = calibrate(model, layers, relu_of, _batches(calibration), cfg, progress) \
        if isinstance(cfg, StaticConfig) else {}
    hessians = _gptq_hessians(model, layers, calibration, cfg, progress) if isinstance(cfg, WeightOnlyConfig) else {}
    with _progress(progress) as bar:
        task = bar.add_task(f"converting {len(layers)} layers", total=len(layers))
        for n, m in layers.items():
            try:
                if isinstance(cfg, StaticConfig):
                    obs_in, obs_out = observers[n]
                    (xs, xz), (ys, yz) = obs_in.qparams(), obs_out.qparams()
                    x, y = (float(xs), int(xz)), (float(ys), int(yz))
                    new = _convert_static(n, m, x, y, cfg, relu=n in relu_of)
                    in_lo, in_hi = obs_in.observed_range()
                    out_lo, out_hi = obs_out.observed_range()
                    result.calibration[n] = LayerCalibration(
                        (float(in_lo), float(in_hi)), (float(out_lo), float(out_hi)), x, y, obs_in.batches)
                elif n in hessians:
                    from .gptq import quantize_linear_gptq

                    assert isinstance(cfg, WeightOnlyConfig) and isinstance(m, nn.Linear)
                    new = quantize_linear_gptq(m, hessians[n].hessian(), cfg.bits, cfg.group_size or 128, n,
                                               act_order=cfg.act_order, percdamp=cfg.percdamp)
                else:
                    new = _convert_other(n, m, cfg)
            except (ValueError, OverflowError) as e:  # e.g. an int32 overflow certificate fails
                result.skipped[n] = f"left in float: {e}"
                bar.advance(task)
                continue
            _set_module(model, n, new)
            result.converted.append(n)
            if n in relu_of:
                _set_module(model, relu_of[n], nn.Identity())
                result.fused_relu.append(n)
            bar.advance(task)
    model.glassquant_conversion = result  # type: ignore[assignment]
    return model


def integer_outputs(model: nn.Module, *inputs: Any) -> dict[str, Tensor]:
    """Each static layer's output integers (uint8) on one forward pass of ``model``."""
    outs: dict[str, Tensor] = {}
    handles = []
    for n, m in model.named_modules():
        if hasattr(m, "forward_int") and hasattr(m, "quantize_input"):
            handles.append(m.register_forward_hook(
                lambda mod, a, y, n=n: outs.__setitem__(n, mod.forward_int(mod.quantize_input(a[0])))))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return outs


