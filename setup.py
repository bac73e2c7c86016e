"""Optional compiled parts of glassquant (src/glassquant/kernels/*.c).

Built by the ordinary ``pip install``; nothing is downloaded. If no C compiler is present
a build is skipped (``optional=True``) and glassquant uses its pure-torch paths, which
give the same numbers more slowly.

* ``_fused``: per-token quantize and int32 -> float32 rescale passes (``_fused.c``).
* ``_vnni``: the AVX512-VNNI W8A8 Linear (``_vnni*.c``); its kernels carry their own
  ``target`` attributes and are used only when the CPU reports AVX512-VNNI at run time.
* ``_wo``: the weight-only Linear (``_wo.c``): packed int4 / int8 / b-bit weights streamed row by row
  for few input rows, and an exact dequantization for many. Its dot products are not an exact
  contract (float32 sums in the kernel's order), so it is built with FMA contraction allowed.
"""

from setuptools import Extension, setup

# -std=c99 and -ffp-contract=off: one IEEE float32 rounding per operation, no FMA
# contraction, no fast-math -- the numerics contracts in _fused.c and _vnni.h depend on it
FLAGS = ["-std=c99", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fopenmp"]
KERNELS = "src/glassquant/kernels"
# the weight-only kernel: gnu99 keeps GCC's default contraction (FMA) for its dot products
WO_FLAGS = ["-std=gnu99", "-O3", "-fno-fast-math", "-fopenmp"]

setup(
    ext_modules=[
        Extension("glassquant.kernels._fused", sources=[f"{KERNELS}/_fused.c"], extra_compile_args=FLAGS,
                  extra_link_args=["-fopenmp"], optional=True),
        Extension("glassquant.kernels._vnni",
                  sources=[f"{KERNELS}/{name}.c" for name in ("_vnni", "_vnni_quant", "_vnni_gemm", "_vnni_epilogue")],
                  depends=[f"{KERNELS}/_vnni.h"], extra_compile_args=FLAGS, extra_link_args=["-fopenmp"],
                  libraries=["m"], optional=True),
        Extension("glassquant.kernels._wo", sources=[f"{KERNELS}/_wo.c"], extra_compile_args=WO_FLAGS,
                  extra_link_args=["-fopenmp"], optional=True),
    ]
)
