"""Dialects: executable models of each runtime's integer arithmetic (see docs/dialects.md).

Each dialect module has ``quantize``, ``choose_qparams``, ``prerounding``, ``requantize``,
``linear`` (integers in, integers out), ``dynamic_output`` and ``linear_dynamic`` (float in,
float out), and reproduces one runtime bit for bit.
"""

from __future__ import annotations

from types import ModuleType

from . import fbgemm, integer, onednn, onnx, qnnpack, tflite, torchao

#: PyTorch engine name -> dialect module (``x86`` routes Linear to fbgemm).
ENGINES: dict[str, ModuleType] = {"x86": fbgemm, "fbgemm": fbgemm, "qnnpack": qnnpack, "onednn": onednn,
                                  "torchao": torchao, "onnx": onnx}


def get(engine: str) -> ModuleType:
    """The dialect module for a PyTorch engine name (``x86``, ``fbgemm``, ``qnnpack``, ``onednn``)."""
    try:
        return ENGINES[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}") from None


def get_static(engine: str) -> ModuleType:
    """A dialect that has a static (integer in, integer out) Linear."""
    d = get(engine)
    if not hasattr(d, "requantize"):
        static = sorted(k for k, v in ENGINES.items() if hasattr(v, "requantize"))
        raise ValueError(f"engine {engine!r} has no static integer path; choose one of {static}")
    return d


#: deployment runtimes with their own integer API (int8 activations, int32 bias): not engines
#: of ``QuantLinear``, which calls its dialect with uint8 activations and a float bias
RUNTIMES: dict[str, ModuleType] = {"tflite": tflite, "glassquant": integer}

__all__ = ["ENGINES", "RUNTIMES", "fbgemm", "get", "integer", "onednn", "onnx", "qnnpack", "tflite", "torchao"]
