"""Saving and loading glassquant models: one safetensors file with JSON metadata, no pickle."""

from .format import FormatError, load, save

__all__ = ["FormatError", "load", "save"]
