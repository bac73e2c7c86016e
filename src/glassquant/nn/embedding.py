"""Weight-only int8 Embedding: one symmetric scale per embedding vector (row).

Rows are quantized with torchao's int8 rule (``dialects.torchao``): ``scale[v] =
max(amax_v / 127.5, eps)``, ``w_q[v] = clamp(rne(w[v] * f32(1/scale[v])), -128, 127)``. A
lookup gathers the int8 rows and their scales and dequantizes them (eq. 1 with zero point 0).
An all-zero row (the usual ``padding_idx`` row) gets scale eps and comes back exactly 0.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..dialects import torchao
from ..errors import check_finite, check_integer
from ..scheme import QScheme
from .base import QuantModule, register

#: int8, symmetric, one scale per row of the (V, D) table.
INT8_PER_ROW = QScheme(bits=8, signed=True, symmetric=True, axis=0)
_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@register
class QuantEmbedding(QuantModule):
    """``nn.Embedding`` with an int8 table: ``y[..., :] = f32(w_q[i, :]) * w_scale[i]``.

    Buffers: ``w_q`` int8 (V, D); ``w_scale`` float32 (V,). ``padding_idx`` (int in [0, V) or
    None) is kept as in ``nn.Embedding``: it names the row that stays fixed in training
    (here, a row that is looked up like any other).

    Numerics of ``forward``: indices int (...) in [0, V) -> float32 (..., D); the gather is
    exact, then one float32 multiply per value.
    """

    kind = "QuantEmbedding"
    meta_fields = ("padding_idx", "name")
    optional_tensors: ClassVar[tuple[str, ...]] = ()
    w_q: Tensor
    w_scale: Tensor

    def __init__(self, w_q: Tensor, w_scale: Tensor, *, padding_idx: int | None = None,
                 name: str = "QuantEmbedding") -> None:
        super().__init__()
        check_integer(w_q, f"{name}: w_q", (torch.int8,))
        if w_q.dim() != 2:
            raise ValueError(f"{name}: w_q must be (num_embeddings, embedding_dim), got {tuple(w_q.shape)}")
        v = w_q.shape[0]
        w_scale = torch.as_tensor(w_scale)
        if not w_scale.is_floating_point() or w_scale.shape != (v,):
            raise ValueError(f"{name}: w_scale must be float ({v},), got {w_scale.dtype} {tuple(w_scale.shape)}")
        w_scale = w_scale.detach().to(torch.float32)
        check_finite(w_scale, f"{name}: w_scale")
        if w_scale.numel() and float(w_scale.min()) <= 0:
            raise ValueError(f"{name}: w_scale must be positive")
        if padding_idx is not None:
            if not -v <= int(padding_idx) < v:
                raise ValueError(f"{name}: padding_idx {padding_idx} outside [-{v}, {v})")
            padding_idx = int(padding_idx) % v  # nn.Embedding's convention: stored non-negative
        self.padding_idx, self.name = padding_idx, name
        self.register_buffer("w_q", w_q.detach().contiguous())
        self.register_buffer("w_scale", w_scale.contiguous())

    @property
    def num_embeddings(self) -> int:
        return int(self.w_q.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.w_q.shape[1])

    def forward(self, indices: Tensor) -> Tensor:
        check_integer(indices, f"{self.name}: indices", _INDEX_DTYPES)
        if indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.num_embeddings:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{self.name}: index {bad} out of range [0, {self.num_embeddings})")
        idx = indices.to(torch.int64)
        rows = self.w_q[idx]  # (..., D) int8, exact gather
        scale = self.w_scale[idx].unsqueeze(-1)  # (..., 1)
        return rows.to(torch.float32) * scale  # (..., D) float32

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"

    @classmethod
    def from_float(cls, embedding: nn.Embedding, *, name: str = "QuantEmbedding") -> QuantEmbedding:
        """Quantize an ``nn.Embedding`` table row by row (torchao's int8 rule)."""
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"{name}: from_float expects nn.Embedding, got {type(embedding).__name__}")
        if embedding.max_norm is not None:
            raise ValueError(f"{name}: max_norm renormalizes rows at lookup time; quantize a table "
                             "without max_norm")
        w_q, scale, _ = torchao.quantize_weight(embedding.weight.detach(), INT8_PER_ROW, f"{name}.weight")
        return cls(w_q, scale, padding_idx=embedding.padding_idx, name=name)
