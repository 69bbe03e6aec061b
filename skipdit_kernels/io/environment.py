"""Every ``SKIPDIT_*`` environment variable the package, its build and its CI read, in one place
(``skipdit info`` prints them with their current values). The readers stay where they are (the op
dispatcher, the native loader, the C++ driver, setup.py, .ci/); a test keeps this list and the
tree in step. Imports nothing heavy."""

from __future__ import annotations

import os
from typing import NamedTuple


class Variable(NamedTuple):
    name: str
    read_by: str  # where it takes effect: run time (library), build, ci, bench, cli
    values: str
    meaning: str


VARIABLES = (
    Variable(
        "SKIPDIT_BACKEND",
        "run time",
        "auto|torch|native|triton|...",
        "the kernel backend (ops.use_backend overrides per call; skipdit info lists them)",
    ),
    Variable(
        "SKIPDIT_NATIVE_JIT",
        "run time",
        "0|1|force",
        "1: JIT-build the native extension when it is not installed; force: use the JIT build always",
    ),
    Variable(
        "SKIPDIT_NATIVE_LIBRARY",
        "run time",
        "path",
        "load the native kernels from this shared library (a sanitizer build, .ci/sanitize.sh)",
    ),
    Variable("SKIPDIT_JIT_CUDA", "run time", "0|1", "the JIT build compiles the CUDA kernels too"),
    Variable(
        "SKIPDIT_CPU_CAPABILITY",
        "run time",
        "default|avx2|avx512",
        "caps the instruction set of the native CPU kernels (ATEN_CPU_CAPABILITY too)",
    ),
    Variable("SKIPDIT_CPU_FP32_GEMM", "run time", "onednn|torch", "the native CPU driver's fp32 GEMM library"),
    Variable(
        "SKIPDIT_CPU_GEMM_ROWS",
        "run time",
        "n",
        "the native CPU driver's GEMMs as blocks of n rows over the threads (testing)",
    ),
    Variable("SKIPDIT_DEBUG", "cli", "0|1", "skipdit commands raise with a traceback instead of one line"),
    Variable("SKIPDIT_BUILD_EXT", "build", "1|0", "0: pure-Python install (setup.py)"),
    Variable("SKIPDIT_BUILD_CUDA", "build", "auto|0|1", "compile the CUDA kernels (setup.py)"),
    Variable("SKIPDIT_BENCH_THREADS", "bench", "n", "CPU threads of the bench/ pytest benchmarks (default 2)"),
    Variable("SKIPDIT_CI_REQUIRE_CUDA", "ci", "0|1", "fail (not skip) .ci/native.sh without a CUDA toolkit"),
    Variable("SKIPDIT_CI_SCRATCH", "ci", "path", "scratch folder of .ci/native.sh and .ci/sanitize.sh"),
    Variable("SKIPDIT_SANITIZE_TIMEOUT", "ci", "seconds", "time limit of .ci/sanitize.sh (default 600)"),
)

# Names in the tree that are build-system symbols, not environment variables (CMake options and
# variables, C++ macros).
NOT_VARIABLES = (
    "SKIPDIT_WITH_CUDA",
    "SKIPDIT_SOURCES",
    "SKIPDIT_CUDA_SOURCES",
    "SKIPDIT_PYTHON_MODULE",
    "SKIPDIT_HAVE_AVX2",
    "SKIPDIT_HAVE_AVX512",
    "SKIPDIT_DECLARE_OPS",
    "SKIPDIT_DISPATCH_STORAGE",
    "SKIPDIT_HD",
    "SKIPDIT_CUDA_CHECK_LAUNCH",
)


def current() -> list[tuple[Variable, str | None]]:
    """Each registered variable with its value in this process's environment (None when unset)."""
    return [(v, os.environ.get(v.name)) for v in VARIABLES]
