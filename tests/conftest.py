"""Hypothesis profiles and shared markers."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")

import pathlib  # noqa: E402

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per worker: no oversubscription on 2 cores

#: Trained digits weights shared by the tests (safetensors, written atomically).
SHARED_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "glassquant-models"
os.environ.setdefault("GLASSQUANT_CACHE", str(SHARED_CACHE))
