"""Hypothesis profiles and shared markers."""

from __future__ import annotations

import os

import pytest
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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``), restored
    after: for thousands of small operations one thread is about as fast on an idle machine, and on a
    busy one two OpenMP threads competing for the cores were measured ~30x slower (275 s against 8 s,
    the MiniLM allocation test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
