"""``skipdit bench``: the end-to-end sampling benchmark, bench/e2e/bench_sampling.py of a source checkout:
latency per sampled batch for the official-style baseline, ours, Skip-Cache, CUDA graphs and fused
kernels, with speedups, FLOP bounds and peak memory; results under bench/results/.

Every argument goes to the benchmark as it is (``skipdit bench -- --help`` lists its options), which
runs in a child Python process: the benchmark compares against an official-style model kept beside
it in bench/, so it belongs to the source checkout, not to the installed package, and this command
says so in an installed wheel. The package itself never imports from bench/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

BENCH_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench", "e2e", "bench_sampling.py"
)


def configure(parser) -> None:
    parser.description = (parser.description or "") + (
        ". Every argument is passed on to bench/e2e/bench_sampling.py of the source checkout "
        "(its options: skipdit bench -- --help)"
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's options")
    plain = parser.parse_known_args

    def forward_all(args=None, namespace=None):
        """Every argument, options included, belongs to the benchmark (``-h`` alone: this help)."""
        args = list(sys.argv[2:] if args is None else args)
        if args in (["-h"], ["--help"]):
            return plain(args, namespace)
        parsed, _ = plain([], namespace)
        parsed.args = args[1:] if args[:1] == ["--"] else args
        return parsed, []

    parser.parse_known_args = forward_all


def command(args: list[str]) -> list[str]:
    """The child process's command line. Raises FileNotFoundError outside a source checkout."""
    if not os.path.isfile(BENCH_FILE):
        raise FileNotFoundError(
            f"{BENCH_FILE} not found: skipdit bench runs the benchmark of a source checkout "
            "(git clone the repository and pip install -e . there)"
        )
    return [sys.executable, BENCH_FILE, *args]


def run(args) -> int:
    return subprocess.run(command(args.args)).returncode
