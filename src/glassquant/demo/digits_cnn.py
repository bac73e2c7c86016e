"""A small CNN (conv-BN-ReLU twice, then Linear) on scikit-learn's bundled 8x8 digits.

Same data split as :mod:`glassquant.demo.digits` (no download). The model is an
``nn.Sequential`` with named children, so it can be wrapped by ``QuantStub`` / ``DeQuantStub``
and its BatchNorms folded by name (``glassquant.fold.fuse_modules``):

    conv1  Conv2d(1, 16, 3, padding=1)            (n, 1, 8, 8)  -> (n, 16, 8, 8)
    bn1, relu1
    conv2  Conv2d(16, 32, 3, padding=1, stride=2) (n, 16, 8, 8) -> (n, 32, 4, 4)
    bn2, relu2
    flatten                                       (n, 32, 4, 4) -> (n, 512)
    fc     Linear(512, 10)

Training is deterministic (fixed seeds, batch order, one thread) and takes a few seconds on
one core; the weights are cached as safetensors (never pickle) next to the MLP's.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import Tensor, nn

from .digits import SEED, Digits, cache_dir, load_digits_split

EPOCHS = 30
BATCH = 64
CONV_BN_RELU = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"]]  #: the name groups to fuse


def as_images(x: Tensor) -> Tensor:
    """Flat digits (n, 64) as images (n, 1, 8, 8)."""
    return x.reshape(-1, 1, 8, 8)


def make_cnn() -> nn.Sequential:
    """conv1-bn1-relu1-conv2-bn2-relu2-flatten-fc (see the module docstring for shapes)."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)),
        ("bn1", nn.BatchNorm2d(16)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1, stride=2)),
        ("bn2", nn.BatchNorm2d(32)),
        ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(32 * 4 * 4, 10)),
    ]))


def train_cnn(data: Digits, epochs: int = EPOCHS) -> nn.Sequential:
    """Adam (lr 3e-3), cross-entropy, fixed seeds and batch order, one thread: the same weights on every
    run (``qat.train_classifier``, after seeding the initial weights). Returns the model in eval mode
    (BatchNorm uses its running statistics)."""
    from ..qat import train_classifier

    torch.manual_seed(SEED)
    model = make_cnn()
    train_classifier(model, as_images(data.x_train), data.y_train, epochs=epochs, lr=3e-3, batch_size=BATCH,
                     seed=SEED)
    return model


def digits_cnn(data: Digits | None = None) -> nn.Sequential:
    """The trained CNN (eval mode), from the safetensors cache when present, else trained and cached."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"digits-cnn-e{EPOCHS}-s{SEED}-torch{torch.__version__.split('+')[0]}.safetensors"
    model = make_cnn()
    if path.exists():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a corrupt cache is retrained, never trusted
            path.unlink(missing_ok=True)
    trained = train_cnn(data or load_digits_split())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp))
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    return trained
