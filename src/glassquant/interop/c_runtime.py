"""Run an integer-only model through the exported C99 runtime (compiled with the system cc).

Export (``glassquant.export.c.export_c``) to a temporary directory, build the example
program with ``cc -std=c99 -O2``, feed it raw int8 samples on stdin and read every layer's
int8 outputs back. Used by ``glassquant verify --against c``; the tests in
tests/equivalence/test_c_runtime.py build it with -Werror and the sanitizers.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["compiler", "run_c"]


def compiler() -> str | None:
    """The C compiler on PATH (gcc, else cc), or None."""
    return shutil.which("gcc") or shutil.which("cc")


def run_c(model: nn.Module, x_q: Tensor) -> list[Tensor]:
    """Every layer's int8 outputs, (M, N_l) each, from the compiled C runtime on int8 ``x_q`` (M, K).

    ``model``: an ``IntLinear`` or an ``nn.Sequential`` chain of them (see ``IntegerModel``).
    Raises RuntimeError if no compiler is found or the program fails.
    """
    from ..export.c import compile_command, export_c
    from ..nn.integer import IntegerModel

    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (gcc or cc) on PATH")
    chain = IntegerModel.from_module(model)
    if x_q.dtype != torch.int8 or x_q.dim() != 2 or x_q.shape[1] != chain.input_size:
        raise ValueError(f"run_c: expected int8 (M, {chain.input_size}) input, got {x_q.dtype} {tuple(x_q.shape)}")
    with tempfile.TemporaryDirectory(prefix="glassquant-c-") as tmp:
        out = Path(tmp)
        export_c(chain, out, name="model")
        program = out / "model_main"
        build = subprocess.run(compile_command(out, program, cc=cc), capture_output=True, text=True)
        if build.returncode != 0:
            raise RuntimeError(f"C build failed: {build.stderr[-2000:]}")
        r = subprocess.run([str(program)], input=x_q.contiguous().numpy().tobytes(), capture_output=True,
                           timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"C runtime exited {r.returncode}: {r.stderr.decode()[-2000:]}")
    widths = [layer.out_features for layer in chain.layers]
    flat = torch.from_numpy(np.frombuffer(r.stdout, dtype=np.int8).copy()).reshape(x_q.shape[0], sum(widths))
    return list(flat.split(widths, dim=1))
