"""Convert a float model: observe ranges on calibration batches, swap Linear layers.

``quantize(model, config, calibration)`` returns the *same* model object with each
``nn.Linear`` replaced by an integer layer (torchao's ``quantize_`` convention), a
following ``nn.ReLU`` in an ``nn.Sequential`` fused into it (as torch.ao's
``fuse_modules`` does) and replaced by ``nn.Identity``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import dialects
from .nn.linear import WEIGHT_PER_CHANNEL, WEIGHT_PER_TENSOR, DynamicQuantLinear, QuantLinear
from .observers import MinMaxObserver
from .scheme import QScheme


@dataclass(frozen=True)
class StaticConfig:
    """Static W8A8: int8 weights, uint8 activations with qparams fixed by calibration.

    ``activation`` must be unsigned with at most 8 bits; 7 bits is PyTorch's
    ``reduce_range`` ([0, 127], the x86/fbgemm default).
    """

    engine: str = "x86"
    weight: QScheme = WEIGHT_PER_CHANNEL
    activation: QScheme = field(default_factory=lambda: QScheme(bits=7, signed=False))

    def __post_init__(self) -> None:
        dialects.get(self.engine)
        a = self.activation
        if a.signed or a.bits > 8 or a.granularity != "per_tensor" or a.symmetric:
            raise ValueError(f"StaticConfig: activations must be unsigned affine per-tensor <= 8 bits, got {a}")


@dataclass(frozen=True)
class DynamicConfig:
    """Dynamic W8A8: int8 weights, activations quantized per call (uint8, per tensor)."""

    engine: str = "x86"
    weight: QScheme = WEIGHT_PER_TENSOR
    reduce_range: bool = True

    def __post_init__(self) -> None:
        dialects.get(self.engine)


_A7, _A8 = QScheme(bits=7, signed=False), QScheme(bits=8, signed=False)

#: Named configurations: each PyTorch engine's default static scheme with min/max observers.
PRESETS: dict[str, StaticConfig | DynamicConfig] = {
    "x86": StaticConfig("x86", WEIGHT_PER_CHANNEL, _A7),
    "fbgemm": StaticConfig("fbgemm", WEIGHT_PER_CHANNEL, _A7),
    "qnnpack": StaticConfig("qnnpack", WEIGHT_PER_TENSOR, _A8),
    "onednn": StaticConfig("onednn", WEIGHT_PER_CHANNEL, _A8),
    "w8a8-static": StaticConfig("x86", WEIGHT_PER_CHANNEL, _A7),
    "w8a8-dynamic": DynamicConfig("x86", WEIGHT_PER_TENSOR, True),
}


@dataclass
class ConversionResult:
    """What ``quantize`` did: converted layer names, fused pairs, layers left in float."""

    converted: list[str] = field(default_factory=list)
    fused_relu: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _resolve(config: str | StaticConfig | DynamicConfig) -> StaticConfig | DynamicConfig:
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[config]
    if not isinstance(config, (StaticConfig, DynamicConfig)):
        raise TypeError(f"config must be a preset name, StaticConfig or DynamicConfig, got {type(config).__name__}")
    return config


def linear_relu_pairs(model: nn.Module) -> dict[str, str]:
    """``{linear name: relu name}`` for each ``nn.Linear`` directly followed by ``nn.ReLU``
    inside an ``nn.Sequential``."""
    pairs: dict[str, str] = {}
    for prefix, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            names = list(mod._modules)
            for a, b in itertools.pairwise(names):
                if isinstance(mod._modules[a], nn.Linear) and isinstance(mod._modules[b], nn.ReLU):
                    p = f"{prefix}." if prefix else ""
                    pairs[p + a] = p + b
    return pairs


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


def calibrate(model: nn.Module, linears: dict[str, nn.Linear], pairs: dict[str, str],
              calibration: Iterable[Any] | None, activation: QScheme
              ) -> dict[str, tuple[MinMaxObserver, MinMaxObserver]]:
    """Run the float model on every batch, observing each Linear's input and (fused) output."""
    batches = _batches(calibration)
    observers = {n: (MinMaxObserver(activation, f"layer {n!r}: input"),
                     MinMaxObserver(activation, f"layer {n!r}: output"))
                 for n in linears}
    handles = []
    for n, lin in linears.items():
        obs_in, obs_out = observers[n]
        handles.append(lin.register_forward_pre_hook(lambda m, a, o=obs_in: o.update(a[0])))
        out_mod = model.get_submodule(pairs[n]) if n in pairs else lin
        handles.append(out_mod.register_forward_hook(lambda m, a, y, o=obs_out: o.update(y)))
    try:
        with torch.no_grad():
            for b in batches:
                model(*b) if isinstance(b, (tuple, list)) else model(b)
    finally:
        for h in handles:
            h.remove()
    for n, (obs_in, _) in observers.items():
        if obs_in.batches == 0:
            raise ValueError(f"layer {n!r} was never called on the calibration data")
    return observers


def quantize(model: nn.Module, config: str | StaticConfig | DynamicConfig = "x86",
             calibration: Iterable[Any] | None = None, *, fuse_relu: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by an integer layer; returns ``model``.

    Static configs observe each layer's input and output range with a min/max observer on
    ``calibration`` (an iterable of input batches, or tuples of positional inputs) and fix
    the qparams; dynamic configs need no calibration. ``model.glassquant_conversion`` then
    holds a :class:`ConversionResult`.
    """
    cfg = _resolve(config)
    linears = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantize")
    result = ConversionResult()
    pairs = linear_relu_pairs(model) if fuse_relu else {}
    if isinstance(cfg, DynamicConfig):
        for n, lin in linears.items():
            _set_module(model, n, DynamicQuantLinear.from_float(
                lin, weight_scheme=cfg.weight, engine=cfg.engine, reduce_range=cfg.reduce_range, name=n))
            result.converted.append(n)
    else:
        observers = calibrate(model, linears, pairs, calibration, cfg.activation)
        for n, lin in linears.items():
            (x_scale, x_zp), (y_scale, y_zp) = (o.qparams() for o in observers[n])
            q = QuantLinear.from_float(lin, float(x_scale), int(x_zp), float(y_scale), int(y_zp),
                                       weight_scheme=cfg.weight, relu=n in pairs, engine=cfg.engine, name=n)
            _set_module(model, n, q)
            result.converted.append(n)
            if n in pairs:
                _set_module(model, pairs[n], nn.Identity())
                result.fused_relu.append(n)
    result.skipped = [n for n, m in model.named_modules()
                      if n and not list(m.children()) and not isinstance(m, (QuantLinear, DynamicQuantLinear))
                      and any(p.numel() for p in m.parameters(recurse=False))]
    model.glassquant_conversion = result  # type: ignore[assignment]
    return model


def integer_outputs(model: nn.Module, *inputs: Any) -> dict[str, Tensor]:
    """Each QuantLinear's uint8 output (its integers) on one forward pass of ``model``."""
    outs: dict[str, Tensor] = {}
    handles = []
    for n, m in model.named_modules():
        if isinstance(m, QuantLinear):
            handles.append(m.register_forward_hook(
                lambda mod, a, y, n=n: outs.__setitem__(n, mod.forward_int(mod.quantize_input(a[0])))))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return outs
