"""Dialects: executable models of each runtime's integer arithmetic (see docs/dialects.md).

Each dialect module has ``quantize``, ``choose_qparams``, ``prerounding``, ``requantize``,
``linear`` (integers in, integers out), ``dynamic_output`` and ``linear_dynamic`` (float in,
float out), and reproduces one runtime bit for bit.
"""

from __future__ import annotations

from types import ModuleType

from . import fbgemm, onednn, qnnpack

#: PyTorch engine name -> dialect module (``x86`` routes Linear to fbgemm).
ENGINES: dict[str, ModuleType] = {"x86": fbgemm, "fbgemm": fbgemm, "qnnpack": qnnpack, "onednn": onednn}


def get(engine: str) -> ModuleType:
    """The dialect module for a PyTorch engine name (``x86``, ``fbgemm``, ``qnnpack``, ``onednn``)."""
    try:
        return ENGINES[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}") from None


__all__ = ["ENGINES", "fbgemm", "get", "onednn", "qnnpack"]
