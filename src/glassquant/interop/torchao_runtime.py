"""Run real torchao (0.18) int8 Linears — the reference that ``dialects.torchao`` is proven against.

Nothing in glassquant's core imports this module, and it imports torchao only inside its
functions: glassquant never needs torchao at run time. Two configs are wrapped:

- ``"w8a8-dynamic"``: ``Int8DynamicActivationInt8WeightConfig()`` — int8 weights per row,
  int8 activations quantized per token at each call (``Int8Tensor`` with ``act_quant_kwargs``);
- ``"w8-weight-only"``: ``Int8WeightOnlyConfig()`` — int8 weights per row, float activations.

Both are applied with ``set_inductor_config=False``: the flag only decides whether
``quantize_`` writes five ``torch._inductor.config`` globals (``quant_api.py``,
``recommended_inductor_config_setter``); eager arithmetic is the same either way, and a
test process should not change global compiler settings for the tests that follow.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

#: glassquant's names for the two torchao configs it models.
CONFIGS = ("w8a8-dynamic", "w8-weight-only")

__all__ = ["CONFIGS", "available", "capture_activation", "run", "torchao_linear", "torchao_weight_integers"]


def available() -> tuple[bool, str]:
    """Whether torchao (with ``quantize_`` and ``Int8Tensor``) can be imported, and why not."""
    try:
        import torchao  # noqa: F401
        from torchao.quantization import Int8Tensor, quantize_  # noqa: F401
    except ImportError as e:
        return False, f"torchao is not installed or too old ({e})"
    return True, ""


def _config(config_name: str) -> Any:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if config_name == "w8a8-dynamic":
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    if config_name == "w8-weight-only":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    raise ValueError(f"torchao config must be one of {CONFIGS}, got {config_name!r}")


def torchao_linear(linear: nn.Linear, config_name: str) -> nn.Module:
    """A deep copy of ``linear`` quantized by torchao's ``quantize_`` with the named config.

    The copy's ``weight`` becomes a ``torchao.quantization.Int8Tensor`` (``qdata`` int8 (N, K),
    ``scale`` float32 (N, 1)); ``linear`` itself is left untouched. Float32 weights only:
    the dialect models float32 models.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"torchao_linear expects nn.Linear, got {type(linear).__name__}")
    if linear.weight.dtype != torch.float32:
        raise ValueError(f"torchao_linear: weight must be float32, got {linear.weight.dtype}")
    config = _config(config_name)
    from torchao.quantization import quantize_

    module = copy.deepcopy(linear)
    quantize_(module, config)
    return module


def _int8_weight(module: nn.Module) -> Any:
    from torchao.quantization import Int8Tensor

    weight = getattr(module, "weight", None)
    if not isinstance(weight, Int8Tensor):
        raise ValueError(f"expected a torchao-quantized Linear (weight an Int8Tensor), got "
                         f"{type(weight).__name__}")
    return weight


def torchao_weight_integers(module: nn.Module) -> tuple[Tensor, Tensor]:
    """``(w_q int8 (N, K), w_scale float32 (N,))`` stored in a torchao-quantized Linear's ``Int8Tensor``.

    Reads ``qdata`` and ``scale`` (kept by torchao as (N, 1)) and checks the zero point is
    0 (symmetric, as both configs use by default).
    """
    weight = _int8_weight(module)
    zero_point = weight.zero_point
    if zero_point is not None and bool(zero_point.any()):
        raise ValueError("torchao weight has a non-zero zero point: not a symmetric int8 weight")
    return weight.qdata.detach().clone(), weight.scale.detach().reshape(-1).clone()


def run(module: nn.Module, x: Tensor) -> Tensor:
    """The module's float output for ``x`` (no autograd)."""
    with torch.no_grad():
        return module(x)


@contextlib.contextmanager
def capture_activation(records: list[tuple[Tensor, Tensor, Tensor]]) -> Iterator[None]:
    """Record what torchao's int8 Linear hands to its integer matmul, while the block runs.

    Inside the block, each dynamic-activation forward appends ``(x_q int8 (M, K), x_scale
    float32 (M, 1), y_dot_scaled float32 (M, N))`` — the activation integers and per-token
    scales that ``Int8Tensor``'s linear computed, and ``int_scaled_matmul``'s result
    ``f32(acc) * x_scale`` — by wrapping the name ``int_scaled_matmul`` in
    ``torchao.quantization.quantize_.workflows.int8.int8_tensor`` (restored on exit). The
    wrapper calls the original; outputs are unchanged.
    """
    from torchao.quantization.quantize_.workflows.int8 import int8_tensor

    original = int8_tensor.int_scaled_matmul

    def recording(a: Tensor, b: Tensor, scales1: Tensor) -> Tensor:
        out = original(a, b, scales1)
        records.append((a.detach().clone(), scales1.detach().clone(), out.detach().clone()))
        return out

    int8_tensor.int_scaled_matmul = recording
    try:
        yield
    finally:
        int8_tensor.int_scaled_matmul = original
