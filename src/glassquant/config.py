"""Quantization configurations: data, not code. Presets name the common ones."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import dialects
from .scheme import QScheme

#: PyTorch engines' default weight grid: int8, symmetric, one scale per output channel.
WEIGHT_PER_CHANNEL = QScheme(bits=8, signed=True, symmetric=True, axis=0)
#: qnnpack's default (and quantize_dynamic's) weight grid: int8, symmetric, one scale per tensor.
WEIGHT_PER_TENSOR = QScheme(bits=8, signed=True, symmetric=True)
ACT_UINT7 = QScheme(bits=7, signed=False)  # PyTorch's reduce_range: [0, 127]
ACT_UINT8 = QScheme(bits=8, signed=False)


@dataclass(frozen=True)
class StaticConfig:
    """Static W8A8: int8 weights, uint8 activations with qparams fixed by calibration.

    ``activation`` must be unsigned, per tensor, at most 8 bits (7 bits is PyTorch's
    ``reduce_range``). ``observer`` names the calibration rule (see
    ``glassquant.observers.make_observer``): ``"minmax"`` reproduces torch.ao's
    MinMaxObserver, ``"histogram"`` its default HistogramObserver.
    """

    engine: str = "x86"
    weight: QScheme = WEIGHT_PER_CHANNEL
    activation: QScheme = field(default_factory=lambda: ACT_UINT7)
    observer: str = "minmax"
    #: SmoothQuant migration strength alpha in [0, 1] (None = off). When set, every selected Linear
    #: also gets output equalization (glassquant.smooth, eq. S3): power-of-two channel scales
    #: that leave the float model's outputs unchanged.
    smoothing: float | None = None

    def __post_init__(self) -> None:
        dialects.get_static(self.engine)
        if self.smoothing is not None and not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"StaticConfig.smoothing must be in [0, 1], got {self.smoothing}")
        a = self.activation
        if a.signed or a.bits > 8 or a.granularity != "per_tensor" or a.symmetric:
            raise ValueError(f"StaticConfig: activations must be unsigned affine per-tensor <= 8 bits, got {a}")


@dataclass(frozen=True)
class DynamicConfig:
    """Dynamic W8A8: int8 weights, activations quantized on every call.

    The dialect decides the activation rule: PyTorch engines use one uint8 scale per
    tensor (``reduce_range`` halves it); ``engine="torchao"`` uses one symmetric int8
    scale per row (per token).
    """

    engine: str = "x86"
    weight: QScheme = WEIGHT_PER_TENSOR
    reduce_range: bool = True

    def __post_init__(self) -> None:
        dialects.get(self.engine)


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Weight-only: int8 per output channel, or int4 per group of ``group_size`` along K.

    Activations stay float. ``embeddings=True`` also stores ``nn.Embedding`` tables as
    int8 per row.
    """

    bits: int = 8
    group_size: int | None = None
    embeddings: bool = True
    #: "rtn" (round to nearest), "gptq" (error-compensating, needs calibration), or "auto":
    #: GPTQ for int4 when calibration data is given, else round to nearest.
    method: str = "auto"
    act_order: bool = True  # GPTQ: quantize columns in order of decreasing Hessian diagonal
    percdamp: float = 0.1  # GPTQ: dampening, a fraction of the mean Hessian diagonal

    def __post_init__(self) -> None:
        if self.method not in ("rtn", "gptq", "auto"):
            raise ValueError(f"WeightOnlyConfig.method must be 'rtn', 'gptq' or 'auto', got {self.method!r}")
        if self.method == "gptq" and self.bits != 4:
            raise ValueError("GPTQ is implemented for int4 weight-only (bits=4)")
        if not self.percdamp > 0:
            raise ValueError(f"WeightOnlyConfig.percdamp must be > 0, got {self.percdamp}")
        if self.bits not in (4, 8):
            raise ValueError(f"WeightOnlyConfig.bits must be 4 or 8, got {self.bits}")
        if self.bits == 4 and self.group_size not in (32, 64, 128):
            raise ValueError(f"int4 weight-only needs group_size 32, 64 or 128, got {self.group_size}")


Config = StaticConfig | DynamicConfig | WeightOnlyConfig

#: Named configurations. The engine names are each PyTorch engine's static scheme with
#: min/max observers; ``*-default`` use torch.ao's default HistogramObserver.
#: ``w8a8-dynamic`` quantizes activations per token (torchao's rule, per-channel weights);
#: ``w8a8-dynamic-per-tensor`` is PyTorch's ``quantize_dynamic`` (x86), integer for integer.
PRESETS: dict[str, Config] = {
    "x86": StaticConfig("x86", WEIGHT_PER_CHANNEL, ACT_UINT7),
    "fbgemm": StaticConfig("fbgemm", WEIGHT_PER_CHANNEL, ACT_UINT7),
    "qnnpack": StaticConfig("qnnpack", WEIGHT_PER_TENSOR, ACT_UINT8),
    "onednn": StaticConfig("onednn", WEIGHT_PER_CHANNEL, ACT_UINT8),
    "onnx": StaticConfig("onnx", WEIGHT_PER_CHANNEL, ACT_UINT8),
    "x86-default": StaticConfig("x86", WEIGHT_PER_CHANNEL, ACT_UINT7, observer="histogram"),
    "fbgemm-default": StaticConfig("fbgemm", WEIGHT_PER_CHANNEL, ACT_UINT7, observer="histogram"),
    "qnnpack-default": StaticConfig("qnnpack", WEIGHT_PER_TENSOR, ACT_UINT8, observer="histogram"),
    "onednn-default": StaticConfig("onednn", WEIGHT_PER_CHANNEL, ACT_UINT8, observer="histogram"),
    "w8a8-static": StaticConfig("x86", WEIGHT_PER_CHANNEL, ACT_UINT8, observer="minmax", smoothing=0.7),
    "w8a8-dynamic-per-tensor": DynamicConfig("x86", WEIGHT_PER_TENSOR, True),
    "w8a8-dynamic": DynamicConfig("torchao", WEIGHT_PER_CHANNEL, False),
    "w8-weight-only": WeightOnlyConfig(8),
    "w4g32-weight-only": WeightOnlyConfig(4, 32),
    "w4g64-weight-only": WeightOnlyConfig(4, 64),
    "w4g128-weight-only": WeightOnlyConfig(4, 128),
}


def resolve(config: str | Config) -> Config:
    """A config object from a preset name or a config object."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[config]
    if not isinstance(config, (StaticConfig, DynamicConfig, WeightOnlyConfig)):
        raise TypeError("config must be a preset name, StaticConfig, DynamicConfig or WeightOnlyConfig, "
                        f"got {type(config).__name__}")
    return config
