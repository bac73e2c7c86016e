"""Account for one output integer of a QuantLinear, step by step (eqs. 3-5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..dialects._base import accumulate
from ..nn.linear import QuantLinear


@dataclass(frozen=True)
class Step:
    """One step of the computation: what it is, its value, and the rule that made it."""

    name: str
    value: str
    rule: str


def trace_output(layer: QuantLinear, x_q: Tensor, m: int, n: int) -> list[Step]:
    """The steps from ``x_q[m]`` to ``y_q[m, n]`` in the layer's dialect.

    Numerics: the accumulator is exact (int64 holding int32); the value before rounding is
    the dialect's own float32 ``prerounding``; rounding half to even (all PyTorch engines).
    The last step equals ``layer.forward_int(x_q)[m, n]`` (checked here).
    """
    x_row = x_q[m : m + 1]  # (1, K)
    acc = accumulate(x_row, layer.x_zero_point, layer.w_q[n : n + 1], layer.w_zero_point[n : n + 1]
                     if layer.w_zero_point.numel() > 1 else layer.w_zero_point, layer.name)[0, 0]
    w_scale = layer.w_scale[n : n + 1] if layer.w_scale.numel() > 1 else float(layer.w_scale)
    bias = None if layer.bias is None else layer.bias[n : n + 1]
    d = layer.dialect
    if d.NAME == "onednn":
        pre = d.prerounding(acc.reshape(1, 1), layer.x_scale, w_scale, bias, layer.y_scale, layer.y_zero_point)
        rounded = torch.round(pre)
        before_clamp = int(rounded)
        zp_rule = "zero point added in float32 before rounding (onednn)"
    else:
        pre = d.prerounding(acc.reshape(1, 1), layer.x_scale, w_scale, bias, layer.y_scale)
        rounded = torch.round(pre)
        before_clamp = int(rounded) + layer.y_zero_point
        zp_rule = f"+ zero point {layer.y_zero_point}, in integers"
    lo = layer.y_zero_point if layer.relu else 0
    y = min(max(before_clamp, lo), 255)
    check = int(layer.forward_int(x_q[m : m + 1], fast=False)[0, n])
    if y != check:  # pragma: no cover - would mean the trace and the layer disagree
        raise AssertionError(f"trace gives {y}, layer gives {check}")
    k = layer.in_features
    steps = [
        Step("x_q[m, :4]", str(x_q[m, :4].tolist()), f"uint8 inputs, zero point {layer.x_zero_point}"),
        Step("w_q[n, :4]", str(layer.w_q[n, :4].tolist()), "int8 weights, symmetric (zero point 0)"),
        Step("acc", str(int(acc)), f"sum over K={k} of (x_q - zx)(w_q - zw), exact int32 (eq. 4)"),
        Step("value before rounding", repr(float(pre.reshape(()))), f"{d.NAME} float32 requantization (eq. 5)"),
        Step("rounded", str(int(rounded.reshape(()))), "round half to even"),
        Step("with zero point", str(before_clamp), zp_rule),
        Step("y_q[m, n]", str(y), f"clamp to [{lo}, 255]" + (" (fused ReLU)" if layer.relu else "")),
    ]
    return steps
