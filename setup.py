"""Declares the compiled extension only; every other piece of metadata is in pyproject.toml.

No -march flag: the SIMD kernels carry function-level target attributes and are chosen at
import from what the CPU supports, so one binary runs on any x86-64 (and elsewhere on the
portable kernel).
"""

from setuptools import Extension, setup  # type: ignore[import-untyped]

setup(
    ext_modules=[
        Extension(
            "diode.protocol._rs",
            ["diode/protocol/_rs.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
        )
    ]
)
