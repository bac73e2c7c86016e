"""Triton kernels for NVIDIA GPUs (H100/H200 first): W8A8 dynamic and weight-only int8/int4 Linear.

Each kernel computes exactly the integers of its reference (``dialects.torchao`` for W8A8 and
int8 weights, ``nn.weight_only`` for int4 groups) -- see docs/gpu.md for the claims, the float32
order of operations and how each is tested (``TRITON_INTERPRET=1`` on CPU in the unit tests,
``benchmarks/gpu.py`` on a GPU).

Import the submodules only when :func:`available` is True: they import ``triton`` at the top.
With ``TRITON_INTERPRET=1`` set before ``triton`` is imported the same kernels run on CPU
tensors through Triton's interpreter (numpy, slow); otherwise they need CUDA tensors.
"""

from __future__ import annotations

import importlib.util


def available() -> bool:
    """True when the ``triton`` package can be imported (kernels need it; a GPU or the interpreter runs them)."""
    return importlib.util.find_spec("triton") is not None


__all__ = ["available"]
