#!/usr/bin/env bash
# CI on the oldest supported torch (the floor that setup.py declares, "torch>=X.Y"): a copy of the
# tracked tree in a scratch folder, a second virtual environment there with torch X.Y.* (the
# CPU-only wheel where pip finds one: PIP_FIND_LINKS / --extra-index-url), the package built in place
# against it, then a fast subset: every backend probe and the op layer, torch.compile, checkpoints,
# the CLI and the demo (small), the metrics. Run from .ci/run (or alone: bash .ci/floor.sh).
# Measured on 2 shared cores at load average 15-20 (torch 2.13.0 CPU wheel from local wheels, before
# the floor became 2.14): venv + torch 5.3 min, the package build 20 min (2 min of CPU time), the
# subset 5 min (36 s of CPU time); on an idle machine a fraction of that (~5 min in all).
set -euo pipefail
cd "$(dirname "$0")/.."
export MAX_JOBS="${MAX_JOBS:-2}"
SCRATCH="${SKIPDIT_CI_SCRATCH:-$(mktemp -d -t skipdit-floor-XXXXXX)}/floor"
step() { echo "== floor: $* ($(date +%T))"; }

FLOOR="$(sed -n 's/.*"torch>=\([0-9][0-9.]*\)".*/\1/p' setup.py)"
[ -n "$FLOOR" ] || { echo "setup.py declares no torch>=X.Y floor" >&2; exit 1; }
MAIN_TORCH="$(.venv/bin/python -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [[ "$MAIN_TORCH" == "$FLOOR".* ]]; then
  step "the main environment's torch $MAIN_TORCH is the floor series: the main job already ran the suite on it"
  exit 0
fi
step "tree copy and venv with torch==$FLOOR.* in $SCRATCH"
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$SCRATCH"
cd "$SCRATCH"
python3 -m venv .venv-floor
.venv-floor/bin/pip install -q "torch==$FLOOR.*" triton setuptools wheel ninja  # triton: the CPU wheel lacks it
.venv-floor/bin/pip install -q --no-build-isolation -e ".[test]"
.venv-floor/bin/python -c "import torch; v = torch.__version__; print('torch', v); assert v.startswith('$FLOOR.'), v"

step "backend probes (each live, or missing with its reason)"
.venv-floor/bin/skipdit info

step "fast subset"
.venv-floor/bin/python -m pytest -q -x -m "not slow and not gpu" \
  python_tests/ops/test_backend.py python_tests/ops/test_compile.py python_tests/ops/test_ops.py \
  python_tests/ops/test_triton.py python_tests/models/test_checkpoint.py python_tests/test_cli.py \
  python_tests/test_demo.py python_tests/test_video_cli.py python_tests/test_metrics.py
step "done"
