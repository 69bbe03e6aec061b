"""pytest configuration for the benchmarks (python -m pytest bench/<kind>/<file>.py --benchmark-only).

Benchmarks (in kernels/, e2e/, quality/, ab/) import their helpers (report.py) from this directory, run on at most
SKIPDIT_BENCH_THREADS CPU threads (default 2), and never put Triton into its interpreter: on a CPU
machine the Triton columns are skipped, with the reason, rather than simulated.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(min(torch.get_num_threads(), int(os.environ.get("SKIPDIT_BENCH_THREADS", "2"))))


def pytest_report_header(config):
    import report

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"skipdit bench device: {report.environment(device)['name']} (results tag {report.device_tag(device)})"
