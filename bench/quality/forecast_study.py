"""Screening of deep-state forecasters: any forecast whose weights are host floats from the step
counters and timesteps of the last full steps (capture-safe: the cached step stays one weighted sum
of history slots), run closed-loop on the bundled SkipDiT through ``sample()`` or on the trained DiT
/ HunyuanDiT pipelines of bench/e2e/bench_diffusers.py, scored against full compute from the same noise.

Candidates (``CANDIDATES``): reuse; Lagrange (Taylor) orders 1-2 in the step counter; damped or
amplified linear extrapolation (the line evaluated at last + g * (s - last)); Lagrange order 1-2 in
another coordinate of the timestep (alpha_t, sigma_t, log-SNR); least-squares lines / parabolas over
3-4 full steps (smoothing, for stochastic samplers); the line held after a horizon (``cappedH``); an exponential with a fixed decay rate per step
through the last two full steps; the sampler's own coordinates: a * alpha_t + b * sigma_t through 2
steps ("alpha-sigma", what a DDIM step moves along), with a constant (3 steps), or least squares over 3
or 4; and mixtures of these. The weights are computed by overriding ``ScheduleCursor.blend_weights``.

    python bench/quality/forecast_study.py --intervals 4,6,10 --names reuse,taylor1,alpha-sigma
    python bench/quality/forecast_study.py --model dit --sampler ddim-50 --intervals 10

The winner is kept as ``SkipCache(forecast_basis="alpha-sigma")``; the numbers are in
bench/results/forecast-study-*.md (``bench/quality/forecast_compare.py`` is the full comparison).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from forecast_compare import scores  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.cache import schedule  # noqa: E402
from skipdit_kernels.cache.forecast import lagrange_weights, linear_alphas_cumprod  # noqa: E402

AB = linear_alphas_cumprod()
ONE, ALPHA, SIGMA = (lambda t: 1.0), (lambda t: math.sqrt(AB[round(t)])), (lambda t: math.sqrt(1 - AB[round(t)]))
LOGSNR = lambda t: 0.5 * math.log(AB[round(t)] / (1 - AB[round(t)]))  # noqa: E731


def _pad(w, n):
    return (0.0,) * (n - len(w)) + tuple(w)


def taylor(order):
    def fn(counters, s, times, t):
        k = min(order + 1, len(counters))
        return _pad(lagrange_weights(counters[-k:], s), len(counters))

    return fn


def damped(g):
    def fn(counters, s, times, t):
        if len(counters) < 2:
            return (1.0,) * len(counters)
        return _pad(
            lagrange_weights([float(c) for c in counters[-2:]], counters[-1] + g * (s - counters[-1])), len(counters)
        )

    return fn


def coordinate(order, coord):
    def fn(counters, s, times, t):
        k = min(order + 1, len(counters))
        xs = [coord(x) for x in times[-k:]]
        return _pad(lagrange_weights(xs, coord(t)) if len(set(xs)) == len(xs) else (1.0,), len(counters))

    return fn


def basis(funcs, points):
    """Least squares (interpolation when points == len(funcs)) in the span of ``funcs`` of the timestep."""

    def fn(counters, s, times, t):
        n = min(points, len(counters))
        if n < 2:
            return _pad((1.0,), len(counters))
        v = torch.tensor([[g(x) for g in funcs[:n]] for x in times[-n:]], dtype=torch.float64)
        return _pad(
            (torch.tensor([g(t) for g in funcs[:n]], dtype=torch.float64) @ torch.linalg.pinv(v)).tolist(),
            len(counters),
        )

    return fn


def least_squares(degree, points):
    def fn(counters, s, times, t):
        n = min(points, len(counters))
        x = torch.tensor([float(c - counters[-1]) for c in counters[-n:]], dtype=torch.float64)
        d = min(degree, n - 1)
        v = torch.stack([x**p for p in range(d + 1)], 1)
        at = torch.tensor([float(s - counters[-1]) ** p for p in range(d + 1)], dtype=torch.float64)
        return _pad((at @ torch.linalg.pinv(v)).tolist(), len(counters))

    return fn


def capped(horizon):
    """The line through the last two full steps, extrapolated at most ``horizon`` steps (then held)."""

    def fn(counters, s, times, t):
        if len(counters) < 2:
            return (1.0,) * len(counters)
        return _pad(lagrange_weights(counters[-2:], counters[-1] + min(s - counters[-1], horizon)), len(counters))

    return fn


def exponential(rate):
    """f = a + b * rate**s through the last two full steps."""

    def fn(counters, s, times, t):
        if len(counters) < 2:
            return (1.0,) * len(counters)
        w0 = (rate ** (s - counters[-1]) - 1.0) / (rate ** (counters[-2] - counters[-1]) - 1.0)
        return _pad((w0, 1.0 - w0), len(counters))

    return fn


def mix(f1, f2, g):
    def fn(counters, s, times, t):
        a, b = _pad(f1(counters, s, times, t), len(counters)), _pad(f2(counters, s, times, t), len(counters))
        return tuple((1 - g) * x + g * y for x, y in zip(a, b))

    return fn


# name: (history slots - 1, weights(counters, counter, timesteps, timestep))
CANDIDATES = {
    "reuse": (0, taylor(0)), "taylor1": (1, taylor(1)), "taylor2": (2, taylor(2)),
    **{f"damped{g}": (1, damped(g)) for g in (0.5, 0.7, 1.3, 1.6)},
    **{f"lagr1-{n}": (1, coordinate(1, c)) for n, c in (("alpha", ALPHA), ("sigma", SIGMA), ("logsnr", LOGSNR))},
    "lagr2-logsnr": (2, coordinate(2, LOGSNR)),
    "lsq1-3": (2, least_squares(1, 3)), "lsq1-4": (3, least_squares(1, 4)), "lsq2-4": (3, least_squares(2, 4)),
    **{f"exp{r}": (1, exponential(r)) for r in (0.8, 0.9)},
    **{f"capped{h}": (1, capped(h)) for h in (2, 4)},
    "alpha-sigma": (1, basis([ALPHA, SIGMA], 2)), "1-alpha-sigma": (2, basis([ONE, ALPHA, SIGMA], 3)),
    "alpha-sigma-lsq3": (2, basis([ALPHA, SIGMA], 3)), "1-alpha-sigma-lsq4": (3, basis([ONE, ALPHA, SIGMA], 4)),
    **{f"taylor1+2 mix{g}": (2, mix(taylor(1), taylor(2), g)) for g in (0.3, 0.5)},
    "taylor1+alpha-sigma": (1, mix(taylor(1), basis([ALPHA, SIGMA], 2), 0.5)),
    "taylor2+alpha-sigma": (2, mix(taylor(2), basis([ALPHA, SIGMA], 2), 0.5)),
}  # fmt: skip


class StudyCursor(schedule.ScheduleCursor):
    weights_fn = None

    def blend_weights(self, t):
        if self.weights_fn is None:
            return super().blend_weights(t)
        return self.weights_fn([c for c, _ in self._entries], self.counter, list(self._timesteps), t)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("skipdit", "dit", "hunyuan"), default="skipdit")
    parser.add_argument("--sampler", choices=("ddim-50", "ddim-20", "ddpm-250"), default="ddim-50")
    parser.add_argument("--intervals", default="4,6,10")
    parser.add_argument("--names", default=",".join(CANDIDATES))
    parser.add_argument("--n", type=int, default=20, help="samples (SkipDiT)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from forecast_compare import pipeline_case, skipdit_case

    case = skipdit_case(args.sampler, args.n) if args.model == "skipdit" else pipeline_case(args.model, args.sampler)
    ref, _ = case["run"](None)
    original = schedule.SkipCache.cursor
    schedule.SkipCache.cursor = lambda self: StudyCursor(self)
    try:
        for interval in [int(i) for i in args.intervals.split(",")]:
            cache0 = sk.SkipCache(interval=interval, shallow_blocks=1, start_t=1000, stop_t=-1)
            bound = 1 / cache0.block_fraction(case["timesteps"], case["num_units"])
            for name in args.names.split(","):
                order, StudyCursor.weights_fn = CANDIDATES[name][0], staticmethod(CANDIDATES[name][1])
                out, _ = case["run"](dataclasses.replace(cache0, forecast=order))
                s = scores(out, ref)
                print(f"{args.model} {args.sampler} interval {interval} bound x{bound:.2f} {name:22s} mean {s['psnr_mean']:.2f} "
                      f"pooled {s['psnr_pooled']:.2f} worst5% {s['psnr_worst5']:.2f}", flush=True)  # fmt: skip
    finally:
        schedule.SkipCache.cursor = original


if __name__ == "__main__":
    main()
