"""What every glassquant layer shares: a record (plain tensors + JSON-able metadata) to save
and rebuild it without pickle, and a registry of layer kinds for the file format."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

#: kind name -> layer class, filled by ``@register``
LAYER_KINDS: dict[str, type[QuantModule]] = {}


def register(cls: type[QuantModule]) -> type[QuantModule]:
    """Class decorator: make a layer kind loadable by ``glassquant.load``."""
    LAYER_KINDS[cls.kind] = cls
    return cls


class QuantModule(nn.Module):
    """Base of glassquant's integer layers.

    A layer is rebuilt from ``record()``: its tensors (``state_dict``; plain dtypes only)
    and ``meta`` — the JSON-able constructor arguments named in ``meta_fields``. The
    constructor takes the tensors by their buffer names as keyword arguments, so
    ``cls(**tensors, **meta)`` rebuilds it exactly.
    """

    kind: ClassVar[str] = "base"
    meta_fields: ClassVar[tuple[str, ...]] = ()
    optional_tensors: ClassVar[tuple[str, ...]] = ("bias",)

    @property
    def dialect(self) -> Any:
        """The dialect module of ``self.engine`` (looked up, never stored: modules cannot be copied)."""
        from .. import dialects

        engine: str = self.__dict__["engine"]  # a plain attribute of every layer that has a dialect
        return dialects.get(engine)

    def record(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(tensors, meta)``: everything needed to rebuild this layer, nothing executable."""
        tensors = {k: v.detach().clone().contiguous() for k, v in self.state_dict().items() if v is not None}
        meta = {f: getattr(self, f) for f in self.meta_fields}
        return tensors, meta

    @classmethod
    def from_record(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> QuantModule:
        """Rebuild a layer from ``record()``'s output (constructor validates every value)."""
        args: dict[str, Any] = {k: None for k in cls.optional_tensors}
        args.update(tensors)
        args.update(meta)
        return cls(**args)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # type: ignore[override]
                              unexpected_keys, error_msgs):
        for key, buf in self._buffers.items():
            if buf is not None and prefix + key in state_dict and state_dict[prefix + key].dtype != buf.dtype:
                error_msgs.append(f"{prefix}{key}: dtype {state_dict[prefix + key].dtype} != {buf.dtype}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def meta_float(v: Any) -> float:
    """A Python float from a tensor or number (for JSON metadata)."""
    return float(v.item() if isinstance(v, torch.Tensor) else v)


def quantize_static_input(layer: Any, x: Tensor) -> Tensor:
    """A static layer's float input to uint8 with its ``x_scale`` / ``x_zero_point`` and its engine's rule.

    Where the rule is ``dialects.pytorch.quantize`` (x86, fbgemm, qnnpack, onednn) and the VNNI
    kernels are built, one compiled pass gives the same integers (``kernels.vnni.quantize_u8``,
    tested bit for bit); otherwise, or for NaN / Inf inputs, the dialect's torch steps run and
    name the layer in their error.
    """
    from ..dialects import pytorch
    from ..errors import check_finite
    from ..kernels import vnni

    dialect = layer.dialect
    if dialect.quantize is pytorch.quantize:
        q = vnni.quantize_u8(x, layer.x_scale, layer.x_zero_point)
        if q is not None:
            return q
    check_finite(x, f"{layer.name}: input")
    return dialect.quantize(x, layer.x_scale, layer.x_zero_point, torch.uint8)  # type: ignore[no-any-return]
