"""Timing a user can trust on a shared machine: the thread count pinned and printed, variants timed in
interleaved rounds, each speedup the median of the per-round ratios with their spread and the
schedule's FLOP bound beside it, and a note on screen when the machine was busy.

Why CPU time at one thread: on a 2-core machine at load 2-11 the wall time of a one-thread run is
mostly time spent waiting for a core (measured here: wall 4.5-9x the CPU time), so wall-time ratios
of interleaved runs swung from 0.66x to 2.7x and past the FLOP bound; the CPU time of the same runs
varied by about 15% (the other processes still share caches and the SMT core). With two threads on
two busy cores each OpenMP barrier waits for a descheduled thread, worse again (1.00x to 8.82x
reported). So with one thread the speedups are ratios of CPU time; with more, of wall time (what
an idle machine gives), and a busy machine is said on screen either way.

Nothing here imports torch at module level (``skipdit --help`` stays light)."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from skipdit_kernels.commands._common import positive_int

# A speedup's spread (max - min of the per-round ratios) above this fraction of its median marks the
# timing as unreliable, as does a 1-minute load average above the usable cores.
NOISY_SPREAD = 0.10


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def default_threads(processes: int = 1) -> tuple[int, str]:
    """(threads, why): the usable cores that the load average leaves idle, shared by ``processes``
    processes started together (e.g. torchrun's local ranks), at least 1."""
    cores, load = usable_cores(), load_average()
    idle = cores if load is None else max(1, min(cores, cores - round(load)))
    why = f"all {cores} usable cores" if idle == cores else f"the idle ones of {cores} usable cores"
    why += "" if load is None else f" at load average {load:.1f}"
    if processes > 1:
        why += f", shared by {processes} local processes"
    return max(1, idle // processes), why


def add_threads_option(parser) -> None:
    """``--threads N``: the CPU threads torch uses (default chosen by ``default_threads`` and printed)."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads torch uses (default: the usable cores the load average leaves idle, "
        "at least 1; the choice is printed). Pin it (e.g. 1) for timings on a shared machine",
    )


def pin_threads(requested: int | None, processes: int = 1) -> str:
    """Set torch's intra-op threads to ``requested`` (or the default for ``processes`` processes on
    this machine) and return the words to print, e.g. ``"2 threads (--threads)"``; the number set is
    ``torch.get_num_threads()`` afterwards."""
    import torch

    if requested is None:
        threads, why = default_threads(processes)
        why = f"default: {why}; --threads N to pin"
    else:
        threads, why = requested, "--threads"
    torch.set_num_threads(threads)
    return f"{threads} thread{'s' if threads != 1 else ''} ({why})"


@dataclass
class Timing:
    """Seconds per round of one variant: wall-clock and this process's CPU time."""

    wall: list[float]
    cpu: list[float]

    def of(self, basis: str) -> list[float]:
        return self.cpu if basis == "cpu" else self.wall


def timing_basis(threads: int) -> str:
    """What speedups are ratios of: "cpu" time with one thread, else "wall" time (module docstring)."""
    return "cpu" if threads == 1 else "wall"


def interleaved_rounds(runs: dict, rounds: int) -> dict[str, Timing]:
    """Call each of ``runs`` (name -> zero-argument callable) once per round, in the given order on
    even rounds and reversed on odd ones; returns name -> its Timing."""
    names = list(runs)
    timings = {name: Timing([], []) for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name]()
            timings[name].cpu.append(time.process_time() - cpu)
            timings[name].wall.append(time.perf_counter() - wall)
    return timings


@dataclass
class Speedup:
    """A variant's speedup over the baseline: the median of the per-round ratios, their range, and
    the schedule's FLOP bound (None for the baseline itself)."""

    median: float
    low: float
    high: float
    bound: float | None = None

    @property
    def spread(self) -> float:
        return self.high - self.low

    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD * self.median

    def above_bound(self) -> bool:
        """Faster than the schedule allows by more than the timing's own spread: a measurement error."""
        return self.bound is not None and self.median - self.bound > self.spread

    def text(self) -> str:
        """e.g. ``"2.05x (1.98-2.10) of <= 2.11x"``."""
        bound = "" if self.bound is None else f" of <= {self.bound:.2f}x"
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f}){bound}"


def speedup(seconds: list[float], baseline: list[float], bound: float | None = None) -> Speedup:
    """Per-round ratios baseline / variant (interleaved rounds pair up), summarised."""
    ratios = [b / max(s, 1e-9) for b, s in zip(baseline, seconds)]
    return Speedup(statistics.median(ratios), min(ratios), max(ratios), bound)


def flop_bound(full_steps: int, cached_steps: int, num_units: int, shallow_units: int) -> float:
    """The speedup a Skip-Cache schedule allows if only the skipped units cost time: all units on
    ``full_steps``, the outer ``2 * shallow_units`` on ``cached_steps`` (1 / the block fraction)."""
    total = (full_steps + cached_steps) * num_units
    return total / (full_steps * num_units + cached_steps * min(2 * shallow_units, num_units))


def busy_note(load_at_start: float | None, speedups: dict[str, Speedup]) -> str | None:
    """A line saying why these timings may not be trusted, or None when nothing suggests so."""
    cores, load_now = usable_cores(), load_average()
    why = []
    loads = [x for x in (load_at_start, load_now) if x is not None]
    if loads and max(loads) > cores:
        why.append(f"load average {max(loads):.1f} on {cores} usable cores")
    noisy = [f"{name} {s.spread / s.median:.0%}" for name, s in speedups.items() if s.noisy()]
    if noisy:
        why.append(f"round-to-round spread {', '.join(noisy)} (> {NOISY_SPREAD:.0%})")
    above = [name for name, s in speedups.items() if s.above_bound()]
    if above:
        why.append(f"{', '.join(above)} faster than the schedule's FLOP bound")
    if not why:
        return None
    return (
        "note: the machine was busy (" + "; ".join(why) + "): treat these speedups as rough; "
        "rerun on an idle machine, or with --threads 1 and more --rounds"
    )
