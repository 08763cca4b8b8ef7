"""Build and install tf4ctr_fast.

    pip install --no-build-isolation .       # or -e . for development

--no-build-isolation: the C++ kernels compile against the torch already installed (a torch custom-op
library must match the torch that loads it). build_ext runs CMake on CMakeLists.txt and places the
library at tf4ctr_fast/_C.so; without a compiler or CMake the install fails here, loudly. A checkout
whose library was never built still imports: the ops fall back to the reference path with a warning.
Set TF4CTR_BUILD_JOBS to bound build parallelism.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources CMakeLists.txt lists; setuptools only needs its name."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # The library has no Python ABI (torch.ops.load_library loads it), so a plain name.
        return os.path.join(*fullname.split(".")) + ".so"

    def build_extension(self, ext: Extension) -> None:
        import torch
        import torch.utils
        import torch.utils.cpp_extension as cpp

        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            "-DCMAKE_BUILD_TYPE=Release",
            # used only if find_package(Torch) fails (CUDA wheels on machines without a CUDA toolkit)
            f"-DTF4CTR_TORCH_INCLUDE_DIRS={';'.join(cpp.include_paths())}",
            f"-DTF4CTR_TORCH_LIBRARY_DIR={cpp.library_paths()[0]}",
            f"-DTF4CTR_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        ]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        jobs = os.environ.get("TF4CTR_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)

        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(build_dir / "_C.so", target)
        print(f"tf4ctr_fast: built {target}", file=sys.stderr)


setup(
    name="tf4ctr_fast",
    version="0.1.0",
    description="Fast training engine for TF4CTR CTR models (arXiv 2405.03167)",
    python_requires=">=3.10",
    packages=find_packages(include=["tf4ctr_fast", "tf4ctr_fast.*"]) + ["tf4ctr_fast.kernels"],
    # The kernel sources live at the top level (kernels/) and ship as tf4ctr_fast.kernels: a
    # top-level module named `kernels` would collide with anything else of that name.
    package_dir={"tf4ctr_fast": "tf4ctr_fast", "tf4ctr_fast.kernels": "kernels"},
    package_data={"tf4ctr_fast.kernels": ["*.cpp", "*.h"]},
    ext_modules=[CMakeExtension("tf4ctr_fast._C")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["numpy", "pyyaml", "tqdm", "matplotlib", "torch"],
    entry_points={"console_scripts": ["tf4ctr-fast = tf4ctr_fast.cli:main"]},
    zip_safe=False,
)
