"""Builds the Cython kernels in para/cython_ext (each _NAME.pyx beside its NAME_py.py twin)."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

KERNELS = sorted(p.stem for p in Path("para/cython_ext").glob("_*.pyx"))

setup(
    ext_modules=cythonize(
        [Extension(f"para.cython_ext.{name}", [f"para/cython_ext/{name}.pyx"]) for name in KERNELS],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )
)
