"""Locating the compiled kernel libraries that ``pip install`` builds next to this package."""

from __future__ import annotations

import ctypes
import importlib.machinery
from pathlib import Path

__all__ = ["load_extension"]


def load_extension(stem: str) -> ctypes.CDLL | None:
    """``kernels/<stem><suffix>`` loaded with ctypes, or None when it was not built or does not load.

    torch (and its libgomp) is imported before this runs, so an OpenMP library resolves to
    torch's copy (same soname).
    """
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{stem}{suffix}"
        if path.is_file():
            try:
                return ctypes.CDLL(str(path))
            except OSError:  # pragma: no cover - a broken build
                return None
    return None
