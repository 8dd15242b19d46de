# The C module (native/) is built through cffi's setuptools integration; everything else is in
# pyproject.toml.
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
