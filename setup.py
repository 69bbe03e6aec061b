"""skipdit-kernels. Builds the native extension (csrc/) against the torch already installed:

    pip install torch && pip install --no-build-isolation -e .   # build isolation would fetch a second torch

Environment:
    SKIPDIT_BUILD_EXT=0            pure-Python install (the torch backend; a JIT build stays possible)
    SKIPDIT_BUILD_CUDA=auto|0|1    CUDA kernels: auto = when torch has CUDA, a toolkit is found and
                                   either a GPU is visible or TORCH_CUDA_ARCH_LIST names the targets
    TORCH_CUDA_ARCH_LIST           CUDA architectures (default "8.0;9.0": Ampere and Hopper)
    CUDA_HOME                      the toolkit root (otherwise found from nvcc, see _toolkit.py)
    MAX_JOBS                       parallel compile jobs (ninja)
The CPU kernels are compiled for a portable baseline plus AVX2 and AVX-512 variants chosen at run
time (never -march=native).
"""

import glob
import importlib.util
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


def _load_toolkit_module():
    path = os.path.join(HERE, "skipdit_kernels", "ops", "native", "_toolkit.py")
    spec = importlib.util.spec_from_file_location("_skipdit_toolkit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def native_sources(cuda: bool) -> list:
    rel = lambda p: os.path.relpath(p, HERE)  # noqa: E731
    sources = [rel(p) for p in sorted(glob.glob(os.path.join(HERE, "csrc", "*.cpp")))]
    sources += [rel(p) for p in sorted(glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))]
    if cuda:
        sources += [rel(p) for p in sorted(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))]
    return sources


def extension_modules():
    if _flag("SKIPDIT_BUILD_EXT", "1") in ("0", "false", "no", "off"):
        return [], {}
    compiler = os.environ.get("CXX", "c++").split()[0]
    if shutil.which(compiler) is None:
        print(
            f"skipdit-kernels: no C++ compiler ({compiler!r} not found): installing without the native "
            "extension; the PyTorch reference runs (skipdit info says which backends are live)",
            file=sys.stderr,
        )
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        raise SystemExit(
            "skipdit-kernels builds its C++ extension against the installed torch, and this build "
            "environment has none: install torch first, then pip install --no-build-isolation -e . "
            "(or set SKIPDIT_BUILD_EXT=0 for a pure-Python install)"
        ) from None

    want_cuda = _flag("SKIPDIT_BUILD_CUDA", "auto")
    if want_cuda not in ("auto", "0", "1"):
        raise SystemExit(f"SKIPDIT_BUILD_CUDA must be auto, 0 or 1, got {want_cuda!r}")
    cuda_home = None
    if want_cuda != "0":
        cuda_home = _load_toolkit_module().find_cuda_home()
        usable = torch.version.cuda is not None and cuda_home is not None
        if want_cuda == "1" and not usable:
            raise SystemExit(
                "SKIPDIT_BUILD_CUDA=1 but "
                + (
                    "this torch has no CUDA"
                    if torch.version.cuda is None
                    else "no CUDA toolkit was found (set CUDA_HOME)"
                )
            )
        # auto: compile for a GPU that is here, or for the targets named; minutes saved on CPU machines.
        wanted = want_cuda == "1" or torch.cuda.is_available() or bool(os.environ.get("TORCH_CUDA_ARCH_LIST"))
        if not (usable and wanted):
            cuda_home = None
    build_cuda = cuda_home is not None

    cxx = ["-O3", "-Wno-psabi", "-DSKIPDIT_PYTHON_MODULE"]
    include_dirs = [os.path.join(HERE, "csrc", "include"), os.path.join(HERE, "csrc")]
    if not build_cuda:
        ext = cpp_extension.CppExtension(
            "skipdit_kernels._C", native_sources(False), include_dirs=include_dirs, extra_compile_args={"cxx": cxx}
        )
        return [ext], {"build_ext": cpp_extension.BuildExtension}

    # torch guessed CUDA_HOME at import (from the nvcc on PATH, possibly a wrapper); use the real root.
    os.environ["CUDA_HOME"] = cuda_home
    cpp_extension.CUDA_HOME = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    library_dirs = [d for d in [_load_toolkit_module().cudart_dir(cuda_home)] if d]
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-DSKIPDIT_WITH_CUDA", "-lineinfo"]
    ext = cpp_extension.CUDAExtension(
        "skipdit_kernels._C",
        native_sources(True),
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        extra_compile_args={"cxx": cxx + ["-DSKIPDIT_WITH_CUDA"], "nvcc": nvcc},
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = extension_modules()

setup(
    name="skipdit-kernels",
    version="0.1.0",
    description="Fused kernels, Skip-Cache and samplers for Skip-DiT diffusion transformers",
    packages=find_packages(include=["skipdit_kernels", "skipdit_kernels.*"]),
    package_data={"skipdit_kernels": ["assets/*"], "skipdit_kernels.ops": ["*.json"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.14", "numpy", "tqdm", "safetensors", "pillow>=10.1"],
    extras_require={
        # the integration tests build tiny diffusers models and pipelines (with tiny transformers text encoders),
        # and run them under accelerate's CPU offload hooks; the request is a diffusers.hooks.HookRegistry hook
        "test": ["pytest", "pytest-benchmark", "hypothesis", "diffusers>=0.42", "transformers", "accelerate", "ruff"],
        "diffusers": ["diffusers>=0.42"],
    },
    entry_points={"console_scripts": ["skipdit=skipdit_kernels.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
