"""Benchmark results: device naming, timing, and JSON + markdown tables under bench/results/.

Shared by the benchmarks in bench/ (ops, native, end to end):

    from report import device_info, device_tag, time_fns, write_results
    rows = [...]                                   # list of flat dicts
    write_results("ops", rows, columns=[("op", "op"), ("eager_ms", "eager ms"), ...], meta={...})
    # -> bench/results/ops-<device tag>.json and .md

The device tag names what the numbers belong to: the GPU's name for CUDA
("nvidia-h100-80gb-hbm3"), else the CPU model and the vector capability torch dispatches to
("amd-epyc-7b13-avx2"). Never file a number under a device it was not measured on.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from typing import Callable, Iterable, Sequence

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    s = re.sub(r"-(\d+-core-)?processor\b.*", "", s)
    return s[:limit].strip("-")


def device_info(device: str | torch.device = "cpu") -> dict:
    """What ran the numbers: name, kind, capability, threads, library versions, date."""
    device = torch.device(device)
    info = {
        "kind": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if hasattr(os, "getloadavg"):  # a shared machine's numbers mean little without this
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
        info["cpu_count"] = os.cpu_count()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, compute_capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info["name"] = f"{info['cpu']} ({info['cpu_capability']})"
    return info


def device_tag(device: str | torch.device = "cpu") -> str:
    info = device_info(device)
    if info["kind"] == "cuda":
        return _slug(info["name"])
    return f"{_slug(info['cpu'], 40)}-{info['cpu_capability'].lower()}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fns(fns: dict[str, Callable], device: str | torch.device = "cpu", budget_s: float = 2.0,
             min_rounds: int = 5, max_rounds: int = 200, warmup: int = 3) -> dict[str, dict]:
    """Median seconds per call of each fn, timed round-robin (load drifts hit all alike).

    On CUDA each call is bracketed by synchronisation; a call that raises is reported with its error
    instead of a time."""
    device = torch.device(device)
    live, errors = {}, {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            _sync(device)
            live[name] = fn
        except Exception as exc:  # a backend that cannot run this cell
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    start = time.perf_counter()
    for fn in live.values():
        fn()
    _sync(device)
    per_round = time.perf_counter() - start
    rounds = int(max(min_rounds, min(max_rounds, budget_s / max(per_round, 1e-9))))
    samples: dict[str, list[float]] = {k: [] for k in live}
    for _ in range(rounds):
        for name, fn in live.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
    out = {k: {"median_s": statistics.median(v), "min_s": min(v), "rounds": len(v)} for k, v in samples.items()}
    out.update({k: {"error": e} for k, e in errors.items()})
    return out


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], floatfmt: str = "{:.3g}") -> str:
    """``columns``: (key, header) pairs; missing values print as a dash."""
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, rows: Sequence[dict], columns: Sequence[tuple[str, str]], meta: dict | None = None,
                  device: str | torch.device = "cpu", notes: Iterable[str] = (), out_dir: str = RESULTS_DIR,
                  title: str | None = None) -> str:
    """Write ``<out_dir>/<name>-<device tag>.json`` and ``.md``; returns the path stem."""
    os.makedirs(out_dir, exist_ok=True)
    info = device_info(device)
    stem = os.path.join(out_dir, f"{name}-{device_tag(device)}")
    with open(stem + ".json", "w") as f:
        json.dump({"device": info, "meta": meta or {}, "notes": list(notes), "rows": list(rows)}, f, indent=2)
    load = f", load average {info['loadavg_1m']} on {info['cpu_count']} CPUs when written" if "loadavg_1m" in info else ""
    md = [f"# {title or name} on {info['name']}", "",
          f"torch {info['torch']}, {info['threads']} threads, {info['date']}{load}.", ""]
    md += [f"- {n}" for n in notes]
    md += ["", markdown_table(rows, columns)]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md))
    return stem
