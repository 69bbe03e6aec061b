#!/usr/bin/env bash
# The native CPU driver (csrc/) under AddressSanitizer and UndefinedBehaviorSanitizer:
#     bash .ci/sanitize.sh            (after the package is installed; CI: from .ci/run)
# 1. builds the CPU kernels with -fsanitize=address,undefined into a scratch folder (never over the
#    installed extension);
# 2. runs the op contract tests (odd and empty shapes, non-contiguous and misaligned inputs), the native
#    op tests and the op fuzz tests (then the native contract tests again on the AVX2 kernels) with that
#    library (SKIPDIT_NATIVE_LIBRARY) in a Python host that preloads libasan.
# Any sanitizer report aborts the run (UBSan is built non-recovering). Leak checking is off: the
# Python interpreter and torch keep allocations alive at exit by design.
# Budget: about 8 minutes on 2 cores (build ~3-4 min, tests ~2-3 min); SKIPDIT_SANITIZE_TIMEOUT (s) bounds it.
set -euo pipefail
cd "$(dirname "$0")/.."
export MAX_JOBS="${MAX_JOBS:-2}"
SCRATCH="${SKIPDIT_CI_SCRATCH:-$(mktemp -d -t skipdit-sanitize-XXXXXX)}"
LIMIT="${SKIPDIT_SANITIZE_TIMEOUT:-600}"
step() { echo "== sanitize: $* ($(date +%T))"; }

# The Python host preloads the sanitizer runtimes (the build step too: it loads what it built).
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

step "CPU kernels with ASan + UBSan into $SCRATCH"
timeout "$LIMIT" python - "$SCRATCH" <<'PY'
import glob, os, sys
from torch.utils import cpp_extension

root = os.path.abspath("csrc")
sources = sorted(glob.glob(f"{root}/*.cpp") + glob.glob(f"{root}/cpu/*.cpp"))
sanitize = ["-fsanitize=address,undefined", "-fno-sanitize=vptr", "-fno-sanitize-recover=undefined"]
cpp_extension.load(
    name="skipdit_sanitized",
    sources=sources,
    extra_include_paths=[f"{root}/include", root],
    extra_cflags=["-O1", "-g", "-fno-omit-frame-pointer", "-Wno-psabi", *sanitize],
    extra_ldflags=sanitize,
    build_directory=sys.argv[1],
    is_python_module=False,
    verbose=False,
)
PY

export SKIPDIT_NATIVE_LIBRARY="$SCRATCH/skipdit_sanitized.so"
step "the sanitized library is the one the tests use"
timeout 120 python -c "
from skipdit_kernels import ops
ok, why = ops.backend_status()['native']
print('native:', ok, why)
assert ok and 'skipdit_sanitized' in why, why"

step "native op tests and op fuzzing under the sanitizers (the CPU's best kernels)"
timeout "$LIMIT" python -m pytest -q -p no:cacheprovider python_tests/ops/test_contract.py python_tests/ops/test_native.py \
  python_tests/ops/test_fuzz_ops.py -k "not triton"
step "the native contract tests on the AVX2 kernels (test_native's subprocess check covers the portable ones)"
SKIPDIT_CPU_CAPABILITY=avx2 timeout "$LIMIT" python -m pytest -q -p no:cacheprovider python_tests/ops/test_contract.py -k native
step "done"
