"""A small MLP (64-128-10) on scikit-learn's bundled digits, trained deterministically.

The data ships with scikit-learn (no download). Training takes a few seconds on a CPU;
the weights are cached as safetensors (never pickle) under ``$GLASSQUANT_CACHE`` or
``~/.cache/glassquant``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

SEED = 0
EPOCHS = 60
BATCH = 64


@dataclass(frozen=True)
class Digits:
    """Train/test split of the 8x8 digits, pixels scaled to [0, 1]: x (n, 64) float32, y (n,) int64."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits_split(test_fraction: float = 0.25) -> Digits:
    """The 1,797 bundled digits, shuffled with a fixed seed and split train/test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # (1797, 64)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
    n_test = round(len(x) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return Digits(x[train], y[train], x[test], y[test])


def make_mlp(hidden: int = 128) -> nn.Sequential:
    """Linear(64, hidden) -> ReLU -> Linear(hidden, 10)."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train_mlp(data: Digits, hidden: int = 128, epochs: int = EPOCHS) -> nn.Sequential:
    """Adam, cross-entropy, fixed seeds and batch order: the same weights on every run."""
    torch.manual_seed(SEED)
    model = make_mlp(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(SEED)
    n = len(data.x_train)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            opt.step()
    return model.eval()


def cache_dir() -> Path:
    """Where trained weights are cached."""
    return Path(os.environ.get("GLASSQUANT_CACHE", Path.home() / ".cache" / "glassquant"))


def digits_mlp(data: Digits | None = None, hidden: int = 128) -> nn.Sequential:
    """The trained MLP, from the safetensors cache when present, else trained and cached."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"digits-mlp-{hidden}-e{EPOCHS}-s{SEED}-torch{torch.__version__.split('+')[0]}.safetensors"
    model = make_mlp(hidden)
    if path.exists():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a corrupt cache is retrained, never trusted
            path.unlink(missing_ok=True)
    trained = train_mlp(data or load_digits_split(), hidden)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp))
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    return trained


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return float((logits.argmax(dim=1) == y).float().mean())
