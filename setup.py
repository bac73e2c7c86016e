"""Optional compiled part of glassquant: fused CPU passes (src/glassquant/kernels/_fused.c).

Built by the ordinary ``pip install``; nothing is downloaded. If no C compiler is present
the build is skipped (``optional=True``) and glassquant uses its pure-torch paths, which
give the same numbers more slowly.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "glassquant.kernels._fused",
            sources=["src/glassquant/kernels/_fused.c"],
            # -std=c99 and -ffp-contract=off: one IEEE float32 rounding per operation, no FMA
            # contraction, no fast-math -- the numerics contract in _fused.c depends on it
            extra_compile_args=["-std=c99", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fopenmp"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
