"""Build script: compiles one cffi extension per ISA variant (see kernels/build_variants.py)."""
from setuptools import setup

setup()
