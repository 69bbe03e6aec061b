"""JIT build of csrc/ with torch.utils.cpp_extension.load (ninja), cached per torch version and sources.

Covers an install that skipped the extension (SKIPDIT_BUILD_EXT=0). Needs the csrc/ sources, i.e. a
source checkout (editable install); CPU kernels only unless SKIPDIT_JIT_CUDA=1.
"""

from __future__ import annotations

import glob
import hashlib
import os

import torch


def source_root() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, "..", "..", "..", "csrc"))
    if not os.path.isfile(os.path.join(root, "register.cpp")):
        raise RuntimeError(f"csrc/ sources not found at {root} (JIT builds need a source checkout)")
    return root


def build_jit(verbose: bool = False) -> None:
    from torch.utils import cpp_extension

    root = source_root()
    sources = sorted(glob.glob(os.path.join(root, "*.cpp")) + glob.glob(os.path.join(root, "cpu", "*.cpp")))
    cflags = ["-O3", "-Wno-psabi"]
    kwargs = {}
    if os.environ.get("SKIPDIT_JIT_CUDA", "0") == "1":
        from ._toolkit import find_cuda_home

        home = find_cuda_home()
        if home is None:
            raise RuntimeError("SKIPDIT_JIT_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)")
        os.environ["CUDA_HOME"] = home
        cpp_extension.CUDA_HOME = home
        sources += sorted(glob.glob(os.path.join(root, "cuda", "*.cu")))
        cflags.append("-DSKIPDIT_WITH_CUDA")
        kwargs["extra_cuda_cflags"] = ["-O3", "--expt-relaxed-constexpr", "-DSKIPDIT_WITH_CUDA"]
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sources + sorted(glob.glob(os.path.join(root, "**", "*.h"), recursive=True)):
        with open(path, "rb") as f:
            digest.update(path.encode() + f.read())
    cache = os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
        "skipdit_kernels",
        "native-" + digest.hexdigest()[:16],
    )
    os.makedirs(cache, exist_ok=True)
    cpp_extension.load(
        name="skipdit_native_jit",
        sources=sources,
        extra_include_paths=[os.path.join(root, "include"), root],
        extra_cflags=cflags,
        build_directory=cache,
        is_python_module=False,
        verbose=verbose,
        **kwargs,
    )
