"""Forecast Skip-Cache: extrapolate the deep state from the last full steps instead of reusing it.

A cached step evaluates the Lagrange polynomial through the (step counter, deep state) points of the
last ``order + 1`` full steps at its own counter:

    deep(s) ~= sum_j w_j(s) * deep(s_j),   w_j(s) = prod_{m != j} (s - s_m) / (s_j - s_m)

The weights depend on step counters only, so they are computed on the host (float64, no device
sync, no data-dependent branch; ``schedule.ScheduleCursor`` does it) and the device work is one
weighted sum of K = order + 1 tensors (``ops.forecast_blend``). With fewer points than ``order + 1``
the order drops (one point: reuse). The weights always sum to 1, so a constant state is reproduced
exactly.
"""
from __future__ import annotations

import functools
import numbers
from typing import Sequence

MAX_FORECAST_ORDER = 3

# The order ``forecast="auto"`` resolves to for deterministic samplers (DDIM with eta 0), chosen from
# bench/results/forecast-fidelity-cpu-bundled-*.md: on the bundled SkipDiT order 1 beats reuse at every
# interval and order 2 never beats order 1 by more than 0.01 dB (it loses up to 0.6 dB at intervals 3-8).
# Stochastic samplers (DDPM, DDIM eta > 0) resolve to 0 (reuse): extrapolation amplifies the fresh
# noise each step injects into the deep state (see the report for this model).
AUTO_DETERMINISTIC_ORDER = 1


def check_forecast(value) -> None:
    """ValueError naming the value unless it is an integer 0..MAX_FORECAST_ORDER or ``"auto"``."""
    if isinstance(value, str):
        if value == "auto":
            return
        raise ValueError(f"SkipCache.forecast must be an integer 0..{MAX_FORECAST_ORDER} or 'auto', got {value!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"SkipCache.forecast must be an integer 0..{MAX_FORECAST_ORDER} or 'auto', got {value!r} "
            f"({type(value).__name__})"
        )
    if not 0 <= value <= MAX_FORECAST_ORDER:
        raise ValueError(f"SkipCache.forecast must be in 0..{MAX_FORECAST_ORDER}, got {value!r}")


def resolve_forecast(value, stochastic: bool) -> int:
    """``"auto"`` -> the measured best order for a deterministic sampler, 0 for a stochastic one."""
    check_forecast(value)
    if value == "auto":
        return 0 if stochastic else AUTO_DETERMINISTIC_ORDER
    return int(value)


@functools.lru_cache(maxsize=256)
def _weights_relative(offsets: tuple[int, ...]) -> tuple[float, ...]:
    # offsets: node - target for each node (the polynomial is evaluated at offset 0).
    weights = []
    for j, xj in enumerate(offsets):
        w = 1.0
        for m, xm in enumerate(offsets):
            if m != j:
                w *= (0.0 - xm) / (xj - xm)
        weights.append(w)
    return tuple(weights)


def lagrange_weights(nodes: Sequence[float], at: float) -> tuple[float, ...]:
    """Weights w_j with p(at) = sum_j w_j * f(nodes[j]) for the interpolating polynomial of degree
    len(nodes) - 1. Host arithmetic in float64; nodes must be distinct."""
    if len(nodes) == 0:
        raise ValueError("lagrange_weights needs at least one node")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"lagrange_weights needs distinct nodes, got {list(nodes)}")
    if all(isinstance(n, numbers.Integral) for n in nodes) and isinstance(at, numbers.Integral):
        return _weights_relative(tuple(int(n) - int(at) for n in nodes))
    return _weights_relative.__wrapped__(tuple(float(n) - float(at) for n in nodes))
