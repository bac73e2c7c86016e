"""Read and check a safetensors header by hand, before any library touches the file.

A safetensors file is ``n`` (8 bytes, little-endian unsigned) + ``n`` bytes of UTF-8 JSON
+ the tensor bytes. The JSON maps each tensor name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the start of the tensor bytes) and an
optional ``"__metadata__"`` str -> str map. Every check that the reference reader makes is
made here too (offsets contiguous from 0, covering the data exactly; byte length =
numel * itemsize), so a file that passes is one the reference reader accepts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import IO, Any

import torch

#: Largest header accepted (the reference reader's limit).
MAX_HEADER_BYTES = 100_000_000

#: Largest product of a shape's dimensions (zeros read as ones): strides must fit int64.
MAX_ELEMENTS = 2**62

#: safetensors dtype name -> torch dtype (the plain dtypes glassquant writes).
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
#: torch dtype name ("int8") -> safetensors name ("I8").
SAFETENSORS_NAME: dict[str, str] = {str(d).removeprefix("torch."): k for k, d in DTYPES.items()}


class FormatError(ValueError):
    """A glassquant file is corrupted, truncated, tampered with, or does not match the model."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it: dtype name ("I8"), shape, byte range in the data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A checked header: ``__metadata__``, tensor entries by name, and where the data starts."""

    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_start: int


def loads_strict(text: str, what: str) -> Any:
    """``json.loads`` that rejects duplicate keys, NaN/Infinity and floats that overflow to inf."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ValueError(f"duplicate key {k!r}")
            out[k] = v
        return out

    def finite(s: str) -> float:
        v = float(s)
        if not math.isfinite(v):
            raise ValueError(f"number {s[:20]!r} is not a finite float64")
        return v

    def constant(s: str) -> float:
        raise ValueError(f"{s} is not allowed")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_float=finite, parse_constant=constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise FormatError(f"{what}: invalid JSON ({type(e).__name__}: {str(e)[:200]})") from e


def is_int(v: Any) -> bool:
    """A JSON integer (``bool`` excluded)."""
    return isinstance(v, int) and not isinstance(v, bool)


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The bytes safetensors stores for ``t``: contiguous, native (little-endian) order."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def sha256_hex(t: torch.Tensor) -> str:
    """SHA-256 (hex) of :func:`tensor_bytes`."""
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def _what_is_it(first: bytes) -> str:
    """A hint about a file that is not safetensors, from its first bytes."""
    if first.startswith(b"PK\x03\x04"):
        return " (it looks like a zip archive, e.g. a torch.save checkpoint; glassquant never unpickles)"
    if len(first) >= 2 and first[0] == 0x80 and 2 <= first[1] <= 5:
        return " (it looks like a pickle; glassquant never unpickles)"
    return ""


def _entry(name: str, e: Any, data_len: int, label: str) -> TensorEntry:
    """Check one header entry: exact keys, known dtype, shape, byte range matching the shape."""
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"{label}: tensor {name!r}: header entry must have exactly dtype, shape, data_offsets")
    dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise FormatError(f"{label}: tensor {name!r}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(is_int(s) and s >= 0 for s in shape) \
            or math.prod(max(s, 1) for s in shape) > MAX_ELEMENTS:
        raise FormatError(f"{label}: tensor {name!r}: shape must be a list of non-negative integers whose "
                          f"product (zeros read as ones) is at most 2**62, got {str(shape)[:100]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len):
        raise FormatError(f"{label}: tensor {name!r}: data_offsets {offsets!r} outside the {data_len} data bytes")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise FormatError(f"{label}: tensor {name!r}: {offsets[1] - offsets[0]} bytes stored, shape {shape} of "
                          f"{dtype} needs {nbytes}")
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def read_header(f: IO[bytes], file_size: int, label: str) -> Header:
    """Parse and check the header of the safetensors file open as ``f`` (``file_size`` bytes).

    Raises :class:`FormatError` naming ``label`` (the path) for an empty or truncated file,
    a header length past the end of the file, non-UTF-8 or invalid JSON, an unknown dtype,
    a shape that disagrees with the byte range, or byte ranges that overlap, leave gaps or
    do not end exactly at the end of the file.
    """
    first = f.read(8)
    if len(first) < 8:
        raise FormatError(f"{label}: {file_size} bytes is too short for a safetensors file (empty or truncated)")
    n = int.from_bytes(first, "little")
    if n > file_size - 8 or n > MAX_HEADER_BYTES:
        raise FormatError(f"{label}: header length {n} exceeds the {file_size - 8} bytes after it: truncated "
                          f"or not a safetensors file{_what_is_it(first)}")
    try:
        text = f.read(n).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{label}: header is not UTF-8: not a safetensors file{_what_is_it(first)}") from e
    obj = loads_strict(text, f"{label}: header")
    if not isinstance(obj, dict):
        raise FormatError(f"{label}: header must be a JSON object, got {type(obj).__name__}")
    metadata = obj.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{label}: __metadata__ must map strings to strings")
    data_len = file_size - 8 - n
    tensors = {name: _entry(name, e, data_len, label) for name, e in obj.items()}
    end = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if t.begin != end:
            raise FormatError(f"{label}: tensor {name!r} starts at byte {t.begin}, expected {end} "
                              "(overlapping or gapped data)")
        end = t.end
    if end != data_len:
        raise FormatError(f"{label}: tensors cover {end} bytes but the file holds {data_len} after the header "
                          "(truncated or padded file)")
    return Header(metadata, tensors, 8 + n)
