"""Device helpers shared by the Triton kernels: exact rounding written so the interpreter and the GPU agree.

Triton's own rounding functions are unusable here: ``libdevice.rint`` does not run in the
interpreter (``TRITON_INTERPRET=1`` raises on extern calls), and the interpreter's
float32 -> bfloat16 conversion is not round-to-nearest-even. The helpers below use only
float32 adds and integer bit operations, which the interpreter (numpy) and the GPU
(PTX ``add.rn.f32``, integer ALU) compute identically -- provided the kernel is launched
with ``enable_fp_fusion=False`` where a multiply feeds one of these adds (the W8A8 kernels
are).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: ``1.5 * 2**23``: adding it to a float32 |v| < 2**22 leaves no fraction bits, so the add rounds to an integer.
RNE_MAGIC = 12582912.0


@triton.jit
def round_half_even(v):
    """Round float32 ``v`` to the nearest integer, ties to even, for ``|v| < 2**22`` (returns float32).

    Numerics: ``(v + 1.5 * 2**23) - 1.5 * 2**23``. The sum lies in [2**23, 2**24), where
    float32's spacing is 1, so the (IEEE round-to-nearest-even) add rounds ``v`` to an
    integer, ties to even (``1.5 * 2**23`` is even); the subtraction is exact. Example:
    2.5 -> 12582914.5 -> 12582914 -> 2; -42.5 -> -42; 3.5 -> 4. The caller guarantees
    ``|v| < 2**22`` and that ``v`` is already rounded to float32 (no FMA into the add).
    """
    return (v + 12582912.0) - 12582912.0


@triton.jit
def to_bf16_rne(y):
    """Round float32 ``y`` to bfloat16, nearest-even, by integer bit arithmetic (returns bfloat16).

    Numerics: ``bits = bitcast_u32(y)``; ``(bits + 0x7FFF + ((bits >> 16) & 1)) >> 16`` is
    the top half rounded to nearest, ties to even; a carry out of the mantissa steps the
    exponent (so values past bfloat16's max become Inf, as ``torch`` does). Exact for finite
    ``y`` and +-Inf; equals ``torch.Tensor.to(torch.bfloat16)`` there. NaN is not produced
    by the callers (inputs are checked finite).
    """
    bits = y.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


def is_interpreted(kernel: object) -> bool:
    """True when ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (it then runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(kernel: object, name: str, *tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless every tensor is on one CUDA device (or all on CPU under the interpreter)."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise ValueError(f"{name}: tensors are on several devices {sorted(map(str, devices))}")
    dev = devices.pop()
    if is_interpreted(kernel):
        if dev.type != "cpu":
            raise ValueError(f"{name}: under TRITON_INTERPRET=1 the kernels take CPU tensors, got {dev}")
    elif dev.type != "cuda":
        raise ValueError(f"{name}: the Triton kernels need CUDA tensors, got {dev} "
                         "(set TRITON_INTERPRET=1 before importing triton to run them on CPU, slowly)")


def launch_options(num_warps: int, num_stages: int, fp_fusion: bool) -> dict[str, object]:
    """Keyword launch options; the interpreter ignores them, the GPU compiler honours them.

    ``enable_fp_fusion=False`` stops LLVM and ptxas (``--fmad=false``) from contracting a
    float32 multiply and add into one FMA, which would round once where the reference
    rounds twice.
    """
    return {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": fp_fusion}


__all__ = ["RNE_MAGIC", "check_device", "is_interpreted", "launch_options", "round_half_even", "to_bf16_rne"]
