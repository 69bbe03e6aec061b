#!/usr/bin/env bash
# CI steps for the native extension (csrc/). Call from .ci/run after the package is installed:
#     bash .ci/native.sh
# 1. the CPU extension in place (skipped when already importable), then the native CPU tests;
# 2. the CUDA driver for one architecture (TORCH_CUDA_ARCH_LIST, default 9.0) into a scratch folder,
#    import-checked without a GPU (the library loads and registers its CUDA kernels);
# 3. the CMake build against libtorch (with the CUDA driver, same one architecture, when a toolkit
#    is found: compile only) and its dispatcher example under ctest (on CPU).
# Measured on 2 cores: CPU extension ~70 s, CUDA (one arch) ~2 min, CMake + ctest ~55 s (with the
# CUDA driver for sm_90: 45 s at load average 1, 2.5 min at load 7.5 on a shared machine), tests ~20 s.
# Set SKIPDIT_CI_REQUIRE_CUDA=1 to fail (not skip) when no CUDA toolkit is found.
set -euo pipefail
cd "$(dirname "$0")/.."
export MAX_JOBS="${MAX_JOBS:-2}"
SCRATCH="${SKIPDIT_CI_SCRATCH:-$(mktemp -d -t skipdit-native-XXXXXX)}"
step() { echo "== native: $* ($(date +%T))"; }

step "CPU extension"
if ! python -c "import torch, skipdit_kernels._C" 2>/dev/null; then  # the library links against torch's
  SKIPDIT_BUILD_CUDA=0 python setup.py -q build_ext --inplace
fi
python -c "from skipdit_kernels import ops; ok, why = ops.backend_status()['native']; print('native:', ok, why); assert ok"

step "native CPU tests"
python -m pytest -q python_tests/ops/test_contract.py python_tests/ops/test_native.py

export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
step "CUDA driver build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
cuda_home="$(python skipdit_kernels/ops/native/_toolkit.py 2>/dev/null || true)"
with_cuda=OFF
if python -c "import torch, sys; sys.exit(torch.version.cuda is None)" && [ -n "$cuda_home" ]; then
  with_cuda=ON
  SKIPDIT_BUILD_CUDA=1 CUDA_HOME="$cuda_home" \
    python setup.py -q build_ext --build-lib "$SCRATCH/cuda/lib" --build-temp "$SCRATCH/cuda/tmp"
  step "CUDA build import check (no GPU needed)"
  python - "$SCRATCH/cuda/lib" <<'PY'
import glob, sys, torch
lib = glob.glob(f"{sys.argv[1]}/skipdit_kernels/_C*.so")[0]
torch.ops.load_library(lib)
# every op the library registers for CPU, but the CPU-only weight folding, has a CUDA kernel too
ops = sorted(o for o in torch._C._dispatch_get_registrations_for_dispatch_key("CPU")
             if o.startswith("skipdit::") and o != "skipdit::fold_skip_weights")
assert ops, "no skipdit ops registered"
missing = [o for o in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(o, "CUDA")]
assert not missing, f"CUDA kernels missing: {missing}"
print("CUDA build loads; CUDA kernels registered for", len(ops), "ops; CPU driver", torch.ops.skipdit.cpu_capability())
PY
elif [ "${SKIPDIT_CI_REQUIRE_CUDA:-0}" = "1" ]; then
  echo "no CUDA toolkit (or a CPU-only torch) and SKIPDIT_CI_REQUIRE_CUDA=1" >&2; exit 1
else
  echo "skipped: no CUDA toolkit or CPU-only torch"
fi

step "CMake build (SKIPDIT_WITH_CUDA=$with_cuda) + ctest"
CUDA_HOME="${cuda_home:-${CUDA_HOME:-}}" cmake -S . -B "$SCRATCH/cmake" -G Ninja -DSKIPDIT_WITH_CUDA="$with_cuda" \
  -DTORCH_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST" \
  -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
cmake --build "$SCRATCH/cmake" -j "$MAX_JOBS"
ctest --test-dir "$SCRATCH/cmake" --output-on-failure
step "done"
