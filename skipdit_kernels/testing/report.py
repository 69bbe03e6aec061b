"""Benchmark timing and results: one interleaved timer, one environment record, one device tag and
one JSON + markdown writer for every benchmark in bench/ (which imports this module as ``report``,
bench/report.py) and for ``skipdit_kernels.testing.gpu_check``.

    from skipdit_kernels.testing.report import environment, time_fns, round_ratio, write_results
    env = environment()                            # at the start: CPU, capabilities, threads, load
    t = time_fns({"eager": f, "native": g})        # medians, min, max of interleaved rounds
    speedup = round_ratio(t, "eager", "native")    # median of the per-round ratios
    write_results("ops", rows, columns=[("op", "op"), ("eager_ms", "eager ms")], env=env)
    # -> bench/results/ops-<device tag>.json and .md, the header stating the load at start and end

The device tag names what the numbers belong to: the GPU's name for CUDA
("nvidia-h100-80gb-hbm3"), else the CPU model and the vector capability the native CPU driver runs
(torch's when the native extension is not built): "amd-epyc-avx512-bf16". Never file a number
under a device it was not measured on.
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

# bench/results of the source checkout this package sits in (absent in an installed wheel: pass out_dir).
RESULTS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench", "results"
)
QUIET_LOAD_PER_CORE = 0.5  # 1-min load average per core above which a run is marked "taken under load"


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
    s = re.sub(r"-(\d+-core-)?(processor|cpu)\b.*", "", s)
    return s[:limit].strip("-")


def _native_capability() -> str | None:
    """The native CPU driver's instruction set ("avx2", "avx512+bf16", ...), None when not built."""
    from skipdit_kernels.ops import native

    return native.cpu_capability() if native.load() else None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def environment(device: str | torch.device = "cpu") -> dict:
    """What runs the numbers, taken at the start of a run: device, CPU model, torch's and the native
    driver's CPU capability, threads, cores, load average (1/5/15 min), torch version, date.
    ``write_results`` adds the load average at the end of the run."""
    device = torch.device(device)
    env = {
        "kind": device.type,
        "cpu": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_cpu_capability": _native_capability() or "unavailable",
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "load_average": load_average(),  # at the start of the run
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        cap = (
            env["native_cpu_capability"]
            if env["native_cpu_capability"] != "unavailable"
            else env["torch_cpu_capability"]
        )
        env["name"] = f"{env['cpu']} ({cap.lower()})"
    return env


def device_tag(device: str | torch.device = "cpu") -> str:
    """File-name tag of the device: e.g. 'nvidia-h100-80gb-hbm3' or 'amd-epyc-avx512-bf16'."""
    device = torch.device(device)
    if device.type == "cuda":
        return _slug(torch.cuda.get_device_properties(device).name)
    cap = _native_capability() or torch.backends.cpu.get_cpu_capability()
    return f"{_slug(cpu_model(), 40)}-{re.sub(r'[^a-z0-9]+', '-', cap.lower())}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def time_fns(
    fns: dict[str, Callable],
    device: str | torch.device = "cpu",
    budget_s: float = 2.0,
    min_rounds: int = 5,
    max_rounds: int = 200,
    warmup: int = 2,
    pause_s: float | None = None,
) -> dict[str, dict]:
    """Seconds per call of each fn, timed round-robin: every round calls each fn once, so load drifts
    on a shared machine hit all variants alike.

    Each fn is called ``warmup`` times first; the number of rounds fills about ``budget_s`` seconds
    of calls (the first round's time, pauses not counted), within [min_rounds, max_rounds]. On a CPU
    with more than one torch thread each call follows a ``pause_s`` sleep (default 20 ms). Returns, per name, wall-clock ``median_s``,
    ``min_s``, ``max_s``, ``rounds``, ``samples_s`` (one time per round, for ``round_ratio``) and
    ``cpu_median_s``, the median CPU time of this process per call (on a shared machine steadier than
    wall time: time spent descheduled is not counted). A fn that raises, in warm-up or later, is
    reported as ``{"error": "<Type>: <message>"}`` and dropped from the remaining rounds. On CUDA
    each call is bracketed by synchronisation."""
    device = torch.device(device)
    if pause_s is None:  # one thread: no worker pool to spin
        pause_s = 0.02 if device.type == "cpu" and torch.get_num_threads() > 1 else 0.0
    live, out = {}, {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            _sync(device)
            live[name] = fn
        except Exception as exc:  # a variant that cannot run this cell
            out[name] = {"error": _error(exc)}
    samples: dict[str, list[float]] = {k: [] for k in live}
    cpu: dict[str, list[float]] = {k: [] for k in live}
    rounds, done = max(1, min_rounds), 0
    while done < rounds and live:
        for name, fn in list(live.items()):
            # Let the previous call's OpenMP workers stop spinning: torch and inductor-compiled code use
            # separate OpenMP runtimes, and on 2 cores one pool's spin-waiting starves the other.
            if pause_s:
                time.sleep(pause_s)
            try:
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                _sync(device)
                samples[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
            except Exception as exc:
                out[name] = {"error": _error(exc)}
                del live[name], samples[name], cpu[name]
        done += 1
        if done == 1:  # size the run from the first round
            per_round = sum(v[0] for v in samples.values())
            rounds = int(max(min_rounds, min(max_rounds, budget_s / max(per_round, 1e-9))))
    timed = {k: {**stats(v), "cpu_median_s": statistics.median(cpu[k])} for k, v in samples.items()}
    return {k: timed.get(k) or out[k] for k in fns}


def stats(seconds: Sequence[float]) -> dict:
    """``median_s``, ``min_s``, ``max_s``, ``rounds`` and ``samples_s`` of one variant's per-round
    times (``time_fns`` entries; also for times measured elsewhere, e.g. in worker processes)."""
    seconds = list(seconds)
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "rounds": len(seconds),
        "samples_s": seconds,
    }


def round_ratio(timing: dict[str, dict], name: str, baseline: str) -> dict:
    """``baseline`` time / ``name`` time (> 1: ``name`` faster) per round of one ``time_fns`` run:
    median, min and max over the rounds (a ratio per round cancels drift shared by the round)."""
    ratios = [b / a for a, b in zip(timing[name]["samples_s"], timing[baseline]["samples_s"])]
    return {"ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


def summary(timing: dict[str, dict], scale: float = 1e3) -> dict[str, dict]:
    """``time_fns`` output without the per-round samples, times in ms (``scale``): for results files."""
    return {
        k: {"error": v["error"]}
        if "error" in v
        else {
            "median": v["median_s"] * scale,
            "min": v["min_s"] * scale,
            "max": v["max_s"] * scale,
            "rounds": v["rounds"],
        }
        for k, v in timing.items()
    }


def quiet(env: dict) -> bool | None:
    """Whether the 1-min load average per core stayed at or below QUIET_LOAD_PER_CORE at the start
    and, when recorded, the end of the run (None: no load average on this OS)."""
    loads = [env.get(k) for k in ("load_average", "load_average_end") if env.get(k)]
    if not loads:
        return None
    return all(load[0] / (env.get("cores") or 1) <= QUIET_LOAD_PER_CORE for load in loads)


def load_line(env: dict) -> str:
    """One markdown sentence: the load at start and end, and plainly whether the machine was quiet."""
    if not env.get("load_average"):
        return "Load average: not available on this OS."
    fmt = lambda load: "/".join(f"{v:.2f}" for v in load)  # noqa: E731
    line = f"Load average (1/5/15 min) {fmt(env['load_average'])} at start"
    if env.get("load_average_end"):
        line += f", {fmt(env['load_average_end'])} at end"
    line += f", on {env.get('cores')} cores: "
    if quiet(env):
        return line + f"quiet (1-min load <= {QUIET_LOAD_PER_CORE} per core)."
    return line + (
        f"**numbers taken under load** (1-min load above {QUIET_LOAD_PER_CORE} per core); "
        "compare ratios from the same run, not absolute times."
    )


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


def write_results(
    name: str,
    rows: Sequence[dict] = (),
    columns: Sequence[tuple[str, str]] = (),
    meta: dict | None = None,
    device: str | torch.device = "cpu",
    notes: Iterable[str] = (),
    out_dir: str | None = None,
    title: str | None = None,
    env: dict | None = None,
    body: str | None = None,
) -> str:
    """Write ``<out_dir>/<name>-<device tag>.json`` and ``.md``; returns the path stem. ``out_dir``
    defaults to ``RESULTS_DIR`` (bench/results) in a source checkout; elsewhere it is required.

    JSON: ``{"environment", "meta", "notes", "rows"}``. Markdown: a heading (``title``, or the first
    line of ``body`` when that is a '# ' heading), the environment and ``load_line``, ``notes`` as a
    list, then ``body`` or else the ``rows`` table of ``columns``. ``env``: the record taken at the
    start of the run (default: taken now); the load average at the end is added here."""
    if out_dir is None:
        if not os.path.isdir(os.path.dirname(RESULTS_DIR)):
            raise ValueError(
                f"write_results: no source checkout here ({os.path.dirname(RESULTS_DIR)} is missing): pass out_dir"
            )
        out_dir = RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    env = dict(env or environment(device))
    env["load_average_end"] = load_average()
    stem = os.path.join(out_dir, f"{name}-{device_tag(device)}")
    notes = list(notes)
    with open(stem + ".json", "w") as f:
        json.dump({"environment": env, "meta": meta or {}, "notes": notes, "rows": list(rows)}, f, indent=2)
    heading = f"# {title or name} on {env['name']}"
    if body is not None and title is None and body.startswith("# "):  # the body names its own device
        heading, _, body = body.partition("\n")
    md = [heading, "", f"torch {env['torch']}, {env['threads']} threads, {env['date']}. {load_line(env)}", ""]
    md += [f"- {n}" for n in notes] + [""] if notes else []
    md += [body.strip("\n") + "\n" if body is not None else markdown_table(rows, columns)]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md))
    return stem
