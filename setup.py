"""Build script: compiles one cffi extension per ISA variant (see kernels/build_variants.py).

The variant list is decided here, once: the machine architecture, which micro-kernel files
exist (kernels/src/ukernel_<variant>.c), what the compiler accepts, and $TILELLM_VARIANTS.
"""
import importlib.util
import os

from setuptools import setup

_here = os.path.dirname(os.path.abspath(__file__))
os.chdir(_here)  # cffi_modules and the source paths are relative to the project root
_spec = importlib.util.spec_from_file_location("_tl_build_variants",
                                               os.path.join(_here, "kernels", "build_variants.py"))
_bv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bv)

setup(cffi_modules=_bv.cffi_modules())
