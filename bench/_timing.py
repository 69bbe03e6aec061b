"""Shared timing helpers for the native benchmarks: interleaved rounds, medians, device naming."""
from __future__ import annotations

import json
import os
import re
import statistics
import time

import torch

from report import cpu_model  # one CPU naming for every benchmark


def device_tag() -> str:
    """e.g. 'amd-epyc-avx2': CPU model and the vector capability the native driver runs."""
    from skipdit_kernels.ops import native

    cap = native.cpu_capability() if native.load() else torch.backends.cpu.get_cpu_capability().lower()
    model = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")
    model = re.sub(r"-(processor|cpu)\b.*", "", model)[:40]
    return f"{model}-{cap.replace('+', '-')}"


def interleaved(
    fns: dict, budget_s: float = 4.0, min_rounds: int = 5, max_rounds: int = 50, warmup: int = 2, pause_s: float = 0.02
) -> dict:
    """Median seconds per call of each fn, timed round-robin so that load drifts hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    start = time.perf_counter()
    for fn in fns.values():
        fn()
    per_round = time.perf_counter() - start
    rounds = int(max(min_rounds, min(max_rounds, budget_s / max(per_round, 1e-9))))
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            # Let the previous call's OpenMP workers stop spinning: torch and inductor-compiled code use
            # separate OpenMP runtimes, and on 2 cores one pool's spin-waiting starves the other.
            time.sleep(pause_s)
            t0 = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "rounds": len(v)} for k, v in samples.items()}


def write_results(path_stem: str, payload: dict, markdown: str) -> None:
    os.makedirs(os.path.dirname(path_stem), exist_ok=True)
    with open(path_stem + ".json", "w") as f:
        json.dump(payload, f, indent=2)
    with open(path_stem + ".md", "w") as f:
        f.write(markdown)


def environment() -> dict:
    from skipdit_kernels.ops import native

    return {
        "cpu": cpu_model(),
        "native_cpu_capability": native.cpu_capability(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],  # 1, 5, 15 min, at the start of the run
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
