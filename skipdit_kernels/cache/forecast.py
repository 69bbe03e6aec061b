"""Forecast Skip-Cache: extrapolate the deep state from the last full steps instead of reusing it.

A cached step evaluates the Lagrange polynomial through the (step counter, deep state) points of the
last ``order + 1`` full steps at its own counter:

    deep(s) ~= sum_j w_j(s) * deep(s_j),   w_j(s) = prod_{m != j} (s - s_m) / (s_j - s_m)

The weights depend on step counters only, so they are computed on the host (float64, no device
sync, no data-dependent branch; ``schedule.ScheduleCursor`` does it) and the device work is one
weighted sum of K = order + 1 tensors (``ops.forecast_blend``). With fewer points than ``order + 1``
the order drops (one point: reuse). The weights always sum to 1, so a constant state is reproduced
exactly.

``forecast_basis="alpha-sigma"`` (order 1) forecasts in the sampler's own coordinates instead: a deterministic
DDIM step moves x_t = alpha_t * x0 + sigma_t * eps (alpha_t = sqrt(alphas_cumprod[t]), sigma_t =
sqrt(1 - alphas_cumprod[t])) along the (alpha, sigma) plane, so the deep state is fitted as
a * alpha_t + b * sigma_t through the last two full steps and evaluated at the current timestep:

    deep(t) ~= w_0 deep(t_0) + w_1 deep(t_1),  [w_0, w_1] = [alpha_t, sigma_t] @ inv([[alpha_0, sigma_0], [alpha_1, sigma_1]])

Host weights again (float64, from timesteps only). The weights need not sum to 1. The noise schedule
is DDPM's linear betas 1e-4..0.02 over 1000 training steps (DiT's, and diffusers' DDPM/DDIM
defaults) unless the caller gives its own ``alphas_cumprod``; timesteps between integers interpolate
it linearly. Chosen by bench/quality/forecast_study.py among host-weight candidates and measured by
bench/quality/forecast_compare.py (DDIM-50, 20 samples, pooled PSNR; bench/results/forecast-compare-*.md):
trained HunyuanDiT pipeline +1.8..+3.2 dB over order 1 at intervals 2-8 (+2.2 dB over cache-dit's best
calibrator at interval 8, FLOP bound 3.21x); trained DiT pipeline +0.6 dB over cache-dit's best at
interval 10 (3.08x); the bundled SkipDiT's deep state +1.9 / +1.1 dB over order 1 at intervals 4 / 6
but -1.5 dB at interval 10, and worse than order 1 under DDIM-20 from interval 4 (two full steps
far apart). Opt-in: ``"auto"`` keeps the polynomial.
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


FORECAST_BASES = ("polynomial", "alpha-sigma")


def check_basis(basis, order) -> None:
    """ValueError naming the value unless ``basis`` is one of FORECAST_BASES and, for
    ``"alpha-sigma"``, the order is 0, 1 or ``"auto"`` (its two-term basis fits two points)."""
    if basis not in FORECAST_BASES:
        raise ValueError(f"SkipCache.forecast_basis must be one of {FORECAST_BASES}, got {basis!r}")
    if basis == "alpha-sigma" and order not in (0, 1, "auto"):
        raise ValueError(
            f"SkipCache.forecast_basis='alpha-sigma' fits two full steps: forecast must be 0, 1 or 'auto', got {order!r}"
        )


@functools.lru_cache(maxsize=1)
def linear_alphas_cumprod() -> tuple[float, ...]:
    """alphas_cumprod of DDPM's linear beta schedule, 1e-4..0.02 over 1000 steps (float64, host)."""
    n, start, end = 1000, 1e-4, 0.02
    out, prod = [], 1.0
    for i in range(n):
        prod *= 1.0 - (start + (end - start) * i / (n - 1))
        out.append(prod)
    return tuple(out)


def _alpha_sigma(t: float, alphas_cumprod: Sequence[float]) -> tuple[float, float]:
    n = len(alphas_cumprod)
    if not 0 <= t <= n - 1:
        raise ValueError(f"alpha-sigma forecast: timestep {t!r} outside the noise schedule's 0..{n - 1}")
    lo = int(t)
    hi = min(lo + 1, n - 1)
    a = alphas_cumprod[lo] + (alphas_cumprod[hi] - alphas_cumprod[lo]) * (t - lo)
    return a**0.5, (1.0 - a) ** 0.5


def alpha_sigma_weights(
    t_nodes: Sequence[float], t: float, alphas_cumprod: Sequence[float] | None = None
) -> tuple[float, ...]:
    """Weights w_j with f(t) = sum_j w_j f(t_nodes[j]) for f = a * alpha + b * sigma through the
    last two nodes (one node: reuse). Host float64; ValueError for a timestep outside the schedule."""
    table = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    if len(t_nodes) == 0:
        raise ValueError("alpha_sigma_weights needs at least one node")
    if len(t_nodes) == 1:
        return (1.0,)
    if len(t_nodes) > 2:
        return (0.0,) * (len(t_nodes) - 2) + alpha_sigma_weights(t_nodes[-2:], t, table)
    (a0, s0), (a1, s1) = (_alpha_sigma(float(x), table) for x in t_nodes)
    at, st = _alpha_sigma(float(t), table)
    det = a0 * s1 - a1 * s0
    if abs(det) < 1e-12:  # equal noise levels: nothing to fit
        return (0.0, 1.0)
    return ((at * s1 - st * a1) / det, (st * a0 - at * s0) / det)


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
