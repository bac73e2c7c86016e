"""``fold``: BatchNorm folding bit-identical to torch's own fusion.

Reference: ``torch.nn.utils.fusion.fuse_conv_bn_eval`` / ``fuse_linear_bn_eval`` (what torch.ao's
``fuse_modules`` calls) and ``torch.ao.quantization.fuse_modules`` itself. Folded weights and
biases compare with ``torch.equal`` over Conv1d/2d/3d, grouped convs, with and without conv
bias, non-affine BatchNorm, running variances from 1e-6 to 1e3 and two eps values. A mutant
that multiplies the conv bias by ``w * r`` (the Linear order) must differ: the order matters.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from glassquant.fold import fold_conv_bn, fold_conv_bn_weights, fold_linear_bn, fuse_modules

from gq_testing import needs_torch_ao


def random_bn(bn: nn.modules.batchnorm._BatchNorm, g: torch.Generator) -> nn.modules.batchnorm._BatchNorm:
    """Running statistics spread over many magnitudes (variances 1e-6 .. 1e3), eval mode."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g) * 3)
        bn.running_var.copy_(10.0 ** (torch.rand(c, generator=g) * 9 - 6))
        if bn.affine:
            bn.weight.copy_(torch.randn(c, generator=g))
            bn.bias.copy_(torch.randn(c, generator=g))
    return bn.eval()


CONVS = [
    (nn.Conv1d, nn.BatchNorm1d, dict(in_channels=6, out_channels=64, kernel_size=3)),
    (nn.Conv2d, nn.BatchNorm2d, dict(in_channels=8, out_channels=128, kernel_size=3, padding=1)),
    (nn.Conv2d, nn.BatchNorm2d, dict(in_channels=32, out_channels=64, kernel_size=5, groups=32)),
    (nn.Conv3d, nn.BatchNorm3d, dict(in_channels=3, out_channels=16, kernel_size=2)),
]


@pytest.mark.parametrize("conv_type, bn_type, kwargs", CONVS, ids=["1d", "2d", "2d-grouped", "3d"])
@pytest.mark.parametrize("conv_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("affine, eps", [(True, 1e-5), (True, 1e-3), (False, 1e-5)], ids=["affine", "eps", "plain"])
def test_fold_conv_bn_bit_identical_to_torch(conv_type, bn_type, kwargs, conv_bias: bool, affine: bool,
                                             eps: float) -> None:
    g = torch.Generator().manual_seed(int(eps * 1e5) + 10 * conv_bias + 100 * affine)
    for _ in range(3):
        conv = conv_type(**kwargs, bias=conv_bias).eval()
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        bn = random_bn(bn_type(conv.out_channels, eps=eps, affine=affine), g)
        w_before = conv.weight.detach().clone()
        ours, ref = fold_conv_bn(conv, bn), fuse_conv_bn_eval(conv, bn)
        assert type(ours) is conv_type and ours is not conv
        assert torch.equal(ours.weight, ref.weight)
        assert torch.equal(ours.bias, ref.bias)
        assert torch.equal(conv.weight, w_before)  # inputs unchanged


@pytest.mark.parametrize("linear_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("features", [96, 1], ids=["per_feature", "one_feature"])
def test_fold_linear_bn_bit_identical_to_torch(linear_bias: bool, features: int) -> None:
    g = torch.Generator().manual_seed(features + linear_bias)
    for eps in (1e-5, 1e-3):
        linear = nn.Linear(40, 96, bias=linear_bias).eval()
        bn = random_bn(nn.BatchNorm1d(features, eps=eps), g)
        ours, ref = fold_linear_bn(linear, bn), fuse_linear_bn_eval(linear, bn)
        assert type(ours) is nn.Linear
        assert torch.equal(ours.weight, ref.weight)
        assert torch.equal(ours.bias, ref.bias)


def test_operation_order_matters() -> None:
    """The conv bias is ``((b - mean) * r) * w``: the Linear order ``(b - mean) * (w * r)`` differs
    from torch in some elements, so the bit-identity tests above can fail."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 4096, 1).eval()
    bn = random_bn(nn.BatchNorm2d(4096), g)
    ref = fuse_conv_bn_eval(conv, bn)
    mean, var, w, b = bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach()
    _, ours = fold_conv_bn_weights(conv.weight.detach(), conv.bias.detach(), mean, var, bn.eps, w, b)
    assert torch.equal(ours, ref.bias)
    linear_order = (conv.bias.detach() - mean) * (w * torch.rsqrt(var + bn.eps)) + b
    assert not torch.equal(linear_order, ref.bias)


def test_folded_conv_computes_bn_of_conv() -> None:
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(3, 8, 3, padding=1).eval()
    bn = random_bn(nn.BatchNorm2d(8), g)
    with torch.no_grad():
        bn.running_var.clamp_(min=0.1)  # keep the comparison well conditioned
    x = torch.randn(2, 3, 6, 6, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


class Net(nn.Module):
    """Conv-BN-ReLU, Conv-BN, a nested block, Linear-BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc, self.bn3 = nn.Linear(4 * 4 * 4, 10), nn.BatchNorm1d(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        return self.bn3(self.fc(x.flatten(1)))


GROUPS = [["conv1", "bn1", "relu1"], ["conv2", "bn2"], ["block.0", "block.1", "block.2"], ["fc", "bn3"]]


@needs_torch_ao
def test_fuse_modules_matches_torch_ao() -> None:
    import torch.ao.quantization as tq

    g = torch.Generator().manual_seed(2)
    model = Net().eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            random_bn(m, g)
    ref = tq.fuse_modules(copy.deepcopy(model), GROUPS)
    ours = copy.deepcopy(model)
    assert fuse_modules(ours, GROUPS) == ["conv1", "block.0"]
    for name in ("bn1", "bn2", "block.1", "bn3"):
        assert type(ours.get_submodule(name)) is nn.Identity is type(ref.get_submodule(name))
    for name in ("conv1", "conv2", "block.0", "fc"):
        r = ref.get_submodule(name)
        r = r[0] if isinstance(r, nn.Sequential) else r  # torch.ao's ConvReLU2d holds (conv, relu)
        o = ours.get_submodule(name)
        assert type(o) is type(r)
        assert torch.equal(o.weight, r.weight) and torch.equal(o.bias, r.bias), name
    assert isinstance(ours.relu1, nn.ReLU)  # the float model still applies its ReLUs
    x = torch.randn(5, 1, 6, 6, generator=g)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def test_fuse_modules_single_group_and_errors() -> None:
    model = Net().eval()
    assert fuse_modules(model, ["conv2", "bn2"]) == []
    assert isinstance(model.bn2, nn.Identity)
    with pytest.raises(ValueError, match="no submodule named 'conv9'"):
        fuse_modules(Net().eval(), [["conv9", "bn1"]])
    with pytest.raises(ValueError, match="cannot fuse"):
        fuse_modules(Net().eval(), [["bn1", "conv1"]])
    train = Net()  # training mode
    with pytest.raises(ValueError, match="conv1 \\+ bn1: BatchNorm is in training mode"):
        fuse_modules(train, [["conv1", "bn1"]])
    with pytest.raises(ValueError, match="has 8 features, the conv has 16"):
        fold_conv_bn(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(8).eval())
    with pytest.raises(ValueError, match="has 8 features, the linear has 10"):
        fold_linear_bn(nn.Linear(3, 10), nn.BatchNorm1d(8).eval())
    with pytest.raises(ValueError, match="no running statistics"):
        fold_conv_bn(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8, track_running_stats=False).eval())
    with pytest.raises(TypeError, match=r"expected nn\.Conv1d/2d/3d"):
        fold_conv_bn(nn.ConvTranspose2d(1, 8, 3), nn.BatchNorm2d(8).eval())
