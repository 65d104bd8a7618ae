"""Builds libdarknet.so with `make` and ships it (and darknet.h, which cffi reads) inside the package.

`make` reads its settings from the environment, so a CUDA build is
``GPU=1 [CUDNN=1] [CUDA_ARCH="sm_80 sm_90"] pip install --no-build-isolation ".[cuda]"`` after
``pip install nvidia-cuda-runtime nvidia-cublas nvidia-cudnn-cu13`` (the `cuda` extra): without build isolation
the build sees those wheels' headers and libraries (or a toolkit's, from CUDA_HOME).
"""
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

HERE = os.path.dirname(os.path.abspath(__file__))


def build_library():
    subprocess.check_call(["make", "-C", HERE, "lib", f"PYTHON={sys.executable}"])


class BuildPy(build_py):
    def run(self):
        build_library()
        super().run()
        # The header is the cffi declaration source; ship a copy next to the library.
        target = os.path.join(self.build_lib, "pydarknet")
        os.makedirs(target, exist_ok=True)
        shutil.copy(os.path.join(HERE, "csrc", "darknet.h"), os.path.join(target, "darknet.h"))
        shutil.copy(os.path.join(HERE, "pydarknet", "libdarknet.so"), os.path.join(target, "libdarknet.so"))


class Develop(develop):
    def run(self):
        build_library()
        super().run()


try:
    from setuptools.command.editable_wheel import editable_wheel

    class EditableWheel(editable_wheel):
        def run(self):
            build_library()
            super().run()

    extra = {"editable_wheel": EditableWheel}
except ImportError:  # old setuptools
    extra = {}

setup(cmdclass={"build_py": BuildPy, "develop": Develop, **extra})
