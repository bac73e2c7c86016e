"""Fold an eval-mode BatchNorm into the Conv or Linear before it, as torch.ao does before PTQ.

BatchNorm in eval mode is an affine map per channel, ``bn(z) = (z - mean) * w / sqrt(var + eps) + b``,
so ``bn(conv(x)) = conv'(x)`` with

    r  = rsqrt(var + eps)
    W' = W * (w * r)[c]                      b' = (b_conv - mean) * r * w + b_bn      (conv)
    W' = W * (w * r)[c]                      b' = (b_lin - mean) * (w * r) + b_bn     (linear)

Both are evaluated with the float32 operations of ``torch.nn.utils.fusion.fuse_conv_bn_eval`` /
``fuse_linear_bn_eval`` in the same order (torch.ao's ``fuse_modules`` calls them), so the folded
weights are bit-identical to torch's — which is what makes glassquant's integers equal torch.ao's
for a model with BatchNorm. Note the two bias formulas round differently: the conv form
multiplies by ``r`` and then by ``w``; the linear form by the product ``w * r``.
Proven in tests/unit/test_fold.py.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

ConvT = TypeVar("ConvT", bound=_ConvNd)
LinearT = TypeVar("LinearT", bound=nn.Linear)


def _bn_terms(bn: _BatchNorm, channels: int, layer: str, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """``(mean, var, w, b, eps)`` of an eval-mode BatchNorm (``w = 1``, ``b = 0`` without affine)."""
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f"{name}: expected a BatchNorm module after the {layer}, got {type(bn).__name__}")
    if bn.training:
        raise ValueError(f"{name}: BatchNorm is in training mode; call model.eval() before folding "
                         "(folding uses the running statistics)")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{name}: BatchNorm has no running statistics (track_running_stats=False); cannot fold")
    if bn.num_features != channels:
        raise ValueError(f"{name}: BatchNorm has {bn.num_features} features, the {layer} has {channels} "
                         "output channels")
    mean, var = bn.running_mean, bn.running_var
    w = torch.ones_like(mean) if bn.weight is None else bn.weight.detach()
    b = torch.zeros_like(mean) if bn.bias is None else bn.bias.detach()
    return mean, var, w, b, bn.eps


def fold_conv_bn_weights(w_conv: Tensor, b_conv: Tensor | None, mean: Tensor, var: Tensor, eps: float,
                         w_bn: Tensor, b_bn: Tensor) -> tuple[Tensor, Tensor]:
    """Folded conv ``(weight, bias)``, torch's ``fuse_conv_bn_weights`` bit for bit.

    Numerics: float32 (the parameters' dtype); ``r = rsqrt(f32(var + f32(eps)))`` with torch's
    ``rsqrt``; ``W' = W * f32(w * r)`` broadcast over dim 0 (output channels);
    ``b' = f32(f32(f32(b_conv - mean) * r) * w) + b_bn`` (``b_conv = 0`` when absent), one
    rounding per operation, left to right. Shapes: W (C_out, C_in/groups, *k), vectors (C_out,).
    """
    with torch.no_grad():
        b_conv = torch.zeros_like(mean) if b_conv is None else b_conv
        rsqrt = torch.rsqrt(var + eps)  # (C_out,)
        scale = (w_bn * rsqrt).reshape(-1, *([1] * (w_conv.dim() - 1)))  # (C_out, 1, ..., 1)
        weight = (w_conv * scale).to(w_conv.dtype)
        bias = ((b_conv - mean) * rsqrt * w_bn + b_bn).to(b_conv.dtype)
    return weight, bias


def fold_linear_bn_weights(w_lin: Tensor, b_lin: Tensor | None, mean: Tensor, var: Tensor, eps: float,
                           w_bn: Tensor, b_bn: Tensor) -> tuple[Tensor, Tensor]:
    """Folded linear ``(weight, bias)``, torch's ``fuse_linear_bn_weights`` bit for bit.

    Numerics: float32; ``s = f32(w * rsqrt(f32(var + f32(eps))))``; ``W' = W * s[:, None]``;
    ``b' = f32(f32(b_lin - mean) * s) + b_bn``. Shapes: W (N, K), vectors (N,) (or (1,) BN
    features broadcast over N).
    """
    with torch.no_grad():
        b_lin = torch.zeros_like(mean) if b_lin is None else b_lin
        scale = w_bn * torch.rsqrt(var + eps)  # (N,)
        weight = w_lin * scale.unsqueeze(-1).to(w_lin.dtype)  # (N, K) * (N, 1)
        bias = ((b_lin - mean) * scale + b_bn).to(b_lin.dtype)
    return weight, bias


def fold_conv_bn(conv: ConvT, bn: _BatchNorm, name: str = "conv") -> ConvT:
    """A new ``nn.Conv1d/2d/3d`` computing ``bn(conv(x))`` (BN in eval mode); inputs unchanged."""
    if not isinstance(conv, _ConvNd) or conv.transposed:
        raise TypeError(f"{name}: expected nn.Conv1d/2d/3d, got {type(conv).__name__}")
    mean, var, w_bn, b_bn, eps = _bn_terms(bn, conv.out_channels, "conv", name)
    folded = copy.deepcopy(conv)
    weight, bias = fold_conv_bn_weights(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(),
                                        mean, var, eps, w_bn, b_bn)
    folded.weight = nn.Parameter(weight, conv.weight.requires_grad)
    folded.bias = nn.Parameter(bias, conv.weight.requires_grad if conv.bias is None else conv.bias.requires_grad)
    return folded


def fold_linear_bn(linear: LinearT, bn: _BatchNorm, name: str = "linear") -> LinearT:
    """A new ``nn.Linear`` computing ``bn(linear(x))`` (BatchNorm1d in eval mode); inputs unchanged."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{name}: expected nn.Linear, got {type(linear).__name__}")
    channels = 1 if isinstance(bn, _BatchNorm) and bn.num_features == 1 else linear.out_features
    mean, var, w_bn, b_bn, eps = _bn_terms(bn, channels, "linear", name)
    folded = copy.deepcopy(linear)
    b_lin = None if linear.bias is None else linear.bias.detach()
    weight, bias = fold_linear_bn_weights(linear.weight.detach(), b_lin, mean, var, eps, w_bn, b_bn)
    folded.weight = nn.Parameter(weight, linear.weight.requires_grad)
    folded.bias = nn.Parameter(bias, linear.weight.requires_grad if b_lin is None else linear.bias.requires_grad)
    return folded


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"fuse_modules: {type(model).__name__} has no submodule named {name!r}") from None


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fuse_modules(model: nn.Module, groups: Sequence[Sequence[str]] | Sequence[str]) -> list[str]:
    """Fold BatchNorms in place: each group of names ``[conv, bn]``, ``[conv, bn, relu]``,
    ``[linear, bn]`` (also ``[conv, relu]``, ``[linear, relu]``) as torch.ao's ``fuse_modules``.

    The folded layer keeps the first name (torch.ao's naming); the BatchNorm becomes
    ``nn.Identity``. A ReLU stays where it is, so the model still computes the same function in
    float; the returned list names the layers whose ReLU is fused — a converter builds them with
    ``relu=True`` (as torch.ao's ``ConvReLU2d``) and replaces the ReLU. ``groups`` may be one
    list of names or a list of lists. Returns the fused-ReLU layer names in group order.
    """
    if groups and all(isinstance(g, str) for g in groups):
        groups = [groups]  # type: ignore[list-item]
    fused_relu: list[str] = []
    for group in groups:
        names = list(group)
        mods = [_get(model, n) for n in names]
        kinds = tuple("conv" if isinstance(m, _ConvNd) and not m.transposed else
                      "linear" if isinstance(m, nn.Linear) else
                      "bn" if isinstance(m, _BatchNorm) else
                      "relu" if isinstance(m, nn.ReLU) else type(m).__name__ for m in mods)
        if kinds not in {("conv", "bn"), ("conv", "bn", "relu"), ("linear", "bn"), ("conv", "relu"),
                         ("linear", "relu")}:
            raise ValueError(f"fuse_modules: cannot fuse {names} of types {kinds}; supported: [conv, bn], "
                             "[conv, bn, relu], [linear, bn], [conv, relu], [linear, relu]")
        first, bn = mods[0], mods[1]
        if isinstance(bn, _BatchNorm):
            label = f"{names[0]} + {names[1]}"
            if isinstance(first, _ConvNd):
                _set(model, names[0], fold_conv_bn(first, bn, label))
            elif isinstance(first, nn.Linear):
                _set(model, names[0], fold_linear_bn(first, bn, label))
            identity = nn.Identity()
            identity.training = mods[0].training
            _set(model, names[1], identity)
        if kinds[-1] == "relu":
            fused_relu.append(names[0])
    return fused_relu
