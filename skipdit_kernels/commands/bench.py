"""``skipdit bench``: the end-to-end sampling benchmark (bench/bench_sampling.py of a source checkout):
latency per sampled batch for the official-style baseline, ours, Skip-Cache, CUDA graphs and fused
kernels, with speedups, FLOP bounds and peak memory; results under bench/results/."""
from __future__ import annotations

import argparse
import importlib.util
import os

import skipdit_kernels

BENCH_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(skipdit_kernels.__file__))),
                          "bench", "bench_sampling.py")


def _bench_module():
    if not os.path.isfile(BENCH_FILE):
        raise FileNotFoundError(
            f"{BENCH_FILE} not found: skipdit bench runs the benchmark of a source checkout "
            "(pip install -e . from the repository)"
        )
    spec = importlib.util.spec_from_file_location("skipdit_bench_sampling", BENCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def configure(parser) -> None:
    if not os.path.isfile(BENCH_FILE):  # an installed wheel: say so when run, keep the CLI working
        parser.add_argument("args", nargs=argparse.REMAINDER)
        return
    # The options live with the benchmark; add them without importing it (it imports torch and models).
    parser.add_argument("--models", nargs="+", default=None, help="presets (default: DiT-S/2 DiT-B/2 on CPU, DiT-XL/2 on GPU)")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="sampled images per batch (CPU 2; GPU 1 8)")
    parser.add_argument("--samplers", nargs="+", default=None, help="ddimN / ddpmN (default ddim50 ddpm250)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per step kind (medians)")
    parser.add_argument("--e2e", default=None, help="whole-trajectory runs: none | default | all")
    parser.add_argument("--e2e-rounds", type=int, default=None, help="interleaved rounds of the whole trajectories")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default=None, help="results directory (default bench/results)")


def run(args) -> int:
    bench = _bench_module()
    argv = []
    for name in ("models", "batches", "samplers", "dtype", "device", "threads", "rounds", "e2e", "e2e_rounds", "out"):
        value = getattr(args, name, None)
        if value is None:
            continue
        argv += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    if getattr(args, "no_memory", False):
        argv.append("--no-memory")
    return bench.main(argv)
