"""Skip-Cache: which denoising steps run every unit, and what a cached step puts in the deep middle.

A step is *full* when the step counter is a multiple of ``interval``, when nothing is cached yet, or
when its timestep is at least ``start_t``. A full step stores the hidden state that enters unit
``num_units - shallow_blocks``; a *cached* step runs only the outer ``shallow_blocks`` units on each
side and takes the stored state instead of running the middle. After each step the counter
advances; after a step whose timestep is at or below ``stop_t`` the counter and the cache reset (the
official DiT_cache schedule).

``forecast`` (beyond the paper): instead of reusing the stored state on a cached step, extrapolate
it with the Lagrange polynomial of order ``forecast`` through the states stored at the last
``forecast + 1`` full steps, evaluated at the current step counter. The states live in
``forecast + 1`` history slots used as a ring; the schedule says, per step, which slot a full step
writes and with which weights a cached step blends the slots (host floats, from step counters
only). 0 reuses (the published behaviour); ``"auto"`` is resolved from the sampler by ``sample()``
and the CLI (deterministic: ``forecast.AUTO_DETERMINISTIC_ORDER``, stochastic: 0).
``forecast_basis="alpha-sigma"`` (order 1) fits the state as a * alpha_t + b * sigma_t of the
timesteps instead of a line in the step counter (``forecast.alpha_sigma_weights``).

``ScheduleCursor`` is the schedule, one step at a time; ``SkipCache.plan`` runs it over a whole
trajectory. Everything that caches (the executor, a step-by-step request) follows these records.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Iterable, NamedTuple

from .forecast import (
    MAX_FORECAST_ORDER,
    alpha_sigma_weights,
    check_basis,
    check_forecast,
    lagrange_weights,
    resolve_forecast,
)

_PRESETS = {
    # Official Skip-DiT class-to-image defaults (DiT-XL/2).
    "dit": dict(interval=2, shallow_blocks=4, start_t=1000, stop_t=20),
    # The video / Hunyuan-DiT schedule of the Skip-DiT release (text-to-video Latte: reset at t <= 50).
    "video": dict(interval=2, shallow_blocks=1, start_t=700, stop_t=50),
    # Class-to-video Latte-skip of the release: cache while t < 900, reset after a step with t < 50
    # (stop_t 49: the official rule is strict, ours is t <= stop_t; equal on integer timesteps).
    "latte-c2v": dict(interval=2, shallow_blocks=1, start_t=900, stop_t=49),
    # Quality-matched speed (beyond the paper): forecast order 1 at interval 4 after a warm start of
    # full steps while t >= 950. Chosen by bench/quality/quality_sweep.py on the bundled SkipDiT (DDIM-50,
    # CFG 3, 100 samples): 2.11x measured wall time (FLOP bound 2.11x) at PSNR 48.6 dB pooled /
    # 50.1 dB per-sample mean against full compute, above the paper's "almost free" reuse at interval
    # 2 (1.60x, 47.4 / 49.4 dB); bench/results/quality-sweep-*-cpu-bundled-2026-11-29.md.
    # forecast "auto": a stochastic sampler gets the paper's reuse schedule instead (see for_sampler).
    "fast": dict(interval=4, shallow_blocks=1, start_t=950, stop_t=20, forecast="auto"),
    # High speed (beyond the paper): FLOP bound 3.08x on the bundled SkipDiT (8 units, shallow 1) under
    # DDIM-50 and DDPM-250 (5 full steps of 50). Order 1 in the step counter: on the bundled SkipDiT at
    # interval 10 it beats the alpha-sigma basis (31.0 vs 29.5 dB pooled, 20 samples, DDIM-50); a
    # stochastic sampler reuses ("auto"), which beats order 1 there (27.2 vs 25.8 dB, DDPM-250).
    # stop_t 0: no reset before the last step (a reset at t <= 20 would add a sixth full step: 2.94x).
    # bench/results/forecast-study-*.md.
    "turbo": dict(interval=10, shallow_blocks=1, start_t=1000, stop_t=0, forecast="auto"),
}
# What "fast" becomes for a stochastic sampler (DDPM, DDIM eta > 0): extrapolation amplifies the noise
# each step injects (bench/results/forecast-fidelity-*), and reuse at interval 4 loses ~8 dB against
# interval 2 under DDPM-250, so the paper's "almost free" reuse schedule.
_FAST_STOCHASTIC = dict(interval=2, shallow_blocks=1, start_t=1000, stop_t=20, forecast=0)


class PlannedStep(NamedTuple):
    """One step of a schedule. ``slot``: the history slot a full step stores into; ``weights``: per
    slot, the blend a cached step uses (one entry per slot, 0 for slots not in the history)."""

    full: bool
    counter: int
    slot: int
    weights: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class SkipCache:
    """Skip-Cache schedule. The defaults are the official DiT-XL/2 ones (interval 2, 4 shallow
    blocks, caching from the first step, reset at t <= 20). ``forecast``: 0 (reuse), an order
    1..3 or ``"auto"``; ``forecast_basis``: ``"polynomial"`` (Lagrange in the step counter) or
    ``"alpha-sigma"`` (order 1 only; see ``forecast``'s module)."""

    interval: int = 2
    shallow_blocks: int = 4
    start_t: float = 1000
    stop_t: float = 20
    forecast: int | str = 0
    forecast_basis: str = "polynomial"

    def __post_init__(self):
        check_forecast(self.forecast)
        check_basis(self.forecast_basis, self.forecast)
        if isinstance(self.interval, bool) or not isinstance(self.interval, numbers.Integral) or self.interval < 1:
            raise ValueError(f"SkipCache.interval must be an integer >= 1, got {self.interval!r}")
        if (
            isinstance(self.shallow_blocks, bool)
            or not isinstance(self.shallow_blocks, numbers.Integral)
            or self.shallow_blocks < 1
        ):
            raise ValueError(f"SkipCache.shallow_blocks must be an integer >= 1, got {self.shallow_blocks!r}")
        for name in ("start_t", "stop_t"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), numbers.Real):
                raise ValueError(f"SkipCache.{name} must be a number, got {getattr(self, name)!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "SkipCache":
        """``"dit"`` (official class-to-image defaults), ``"video"`` (interval 2, shallow 1, 700..50),
        ``"latte-c2v"`` (class-to-video Latte-skip: interval 2, shallow 1, 900..49), ``"fast"`` (quality-matched speed: forecast 1 at interval 4 after full steps while
        t >= 950, measured 2.11x at the fidelity of the paper's reuse at interval 2) or ``"turbo"``
        (interval 10, shallow 1, forecast "auto": FLOP bound 3.08x on an 8-unit model; see _PRESETS)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown Skip-Cache preset {name!r}; expected one of {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    def with_forecast(self, order: int) -> "SkipCache":
        """The same schedule with an explicit forecast order."""
        return dataclasses.replace(self, forecast=order)

    def for_sampler(self, stochastic: bool) -> "SkipCache":
        """``forecast="auto"`` resolved for a sampler: the measured best order for deterministic ones,
        reuse for stochastic ones (for the ``"fast"`` preset: the paper's reuse at interval 2).
        Explicit orders are kept."""
        if self.forecast != "auto":
            return self
        if stochastic and self == SkipCache.preset("fast"):
            return SkipCache(**_FAST_STOCHASTIC)
        return self.with_forecast(resolve_forecast("auto", stochastic))

    @property
    def slots(self) -> int:
        """History slots a cache of this schedule keeps (1 when reusing)."""
        return self._order() + 1

    def _order(self) -> int:
        if self.forecast == "auto":
            raise ValueError(
                "SkipCache(forecast='auto') needs to know the sampler: sample(), pipelines and the CLI resolve "
                f"it; for step-by-step use give an explicit order 0..{MAX_FORECAST_ORDER}"
            )
        return int(self.forecast)

    def check_units(self, num_units: int, partners: dict[int, int] | None = None) -> None:
        """ValueError unless ``shallow_blocks`` fits a stack of ``num_units`` units whose last
        ``shallow_blocks`` units fuse only outputs of units that also run on a cached step."""
        if not 1 <= self.shallow_blocks <= num_units // 2:
            raise ValueError(
                f"SkipCache.shallow_blocks must be in 1..{num_units // 2} for a model of {num_units} blocks, "
                f"got {self.shallow_blocks}"
            )
        for i, j in (partners or {}).items():
            if i >= num_units - self.shallow_blocks and j >= self.shallow_blocks:
                raise ValueError(
                    f"unit {i} runs on cached steps but fuses the output of unit {j}, which does not "
                    f"(shallow_blocks={self.shallow_blocks})"
                )

    def cursor(self) -> "ScheduleCursor":
        return ScheduleCursor(self)

    def plan(self, timesteps: Iterable[float]) -> list[PlannedStep]:
        """The schedule of one trajectory, decided on the host before it runs."""
        cursor = self.cursor()
        return [cursor.advance(t) for t in timesteps]

    def full_steps(self, timesteps: Iterable[float]) -> list[bool]:
        """Full (True) or cached (False) for each timestep of one trajectory (the same whatever the
        forecast order, so ``"auto"`` needs no resolving here)."""
        schedule = self.with_forecast(0) if self.forecast == "auto" else self
        return [step.full for step in schedule.plan(timesteps)]

    def block_fraction(self, timesteps, num_units: int) -> float:
        """Unit calls of a cached trajectory relative to running every unit at every step."""
        full = self.full_steps(timesteps)
        cached = full.count(False)
        return (len(full) * num_units - cached * (num_units - 2 * self.shallow_blocks)) / (len(full) * num_units)


class ScheduleCursor:
    """The schedule of one trajectory, a step at a time: ``peek(t)`` decides the step at timestep
    ``t`` without moving; ``commit(step, t)`` moves past it once it completed; ``advance(t)`` does
    both. A step that raised is simply never committed: the next ``peek`` decides it again. A new
    trajectory needs a new cursor. ``alphas_cumprod``: the noise schedule the ``"alpha-sigma"``
    forecast basis reads (default: DDPM's linear betas)."""

    def __init__(self, cache: SkipCache, alphas_cumprod=None):
        self.cache = cache
        self.slots = cache.slots
        self.alphas_cumprod = alphas_cumprod  # for forecast_basis "alpha-sigma"; None: DDPM's linear betas
        self._reset()

    def _reset(self) -> None:
        self.counter = 0
        self._entries: list[tuple[int, int]] = []  # (counter, slot) of stored states, oldest first
        self._timesteps: list[float] = []  # their timesteps, oldest first
        self._next_slot = 0

    @property
    def have_cache(self) -> bool:
        return bool(self._entries)

    def blend_weights(self, t: float) -> tuple[float, ...]:
        """The forecast's weights for the stored states (oldest first) at a cached step at timestep
        ``t`` and the current counter; host floats."""
        if self.cache.forecast_basis == "alpha-sigma":
            return alpha_sigma_weights(self._timesteps, t, self.alphas_cumprod)
        return lagrange_weights([s for s, _ in self._entries], self.counter)

    def peek(self, t: float) -> PlannedStep:
        """The step at timestep ``t`` (full or cached, its slot and blend weights); moves nothing."""
        t = float(t)
        c = self.cache
        full = self.counter % c.interval == 0 or not self._entries or t >= c.start_t
        weights = [0.0] * self.slots
        slot = -1
        if full:
            slot = self._next_slot
        else:
            for (_, s), w in zip(self._entries, self.blend_weights(t)):
                weights[s] = w
        return PlannedStep(full, self.counter, slot, tuple(weights))

    def commit(self, step: PlannedStep, t: float) -> None:
        """Move past ``step`` (``peek(t)``'s, at this position) after it completed. ValueError for
        a step decided at another position."""
        if step.counter != self.counter:
            raise ValueError(
                f"step {step.counter} was decided at another position of the schedule (now at {self.counter})"
            )
        if step.full:
            if len(self._entries) == self.slots:
                self._entries.pop(0)  # the oldest entry holds this slot: the ring overwrites it
            self._entries.append((self.counter, step.slot))
            self._timesteps.append(float(t))
            del self._timesteps[: -self.slots]
            self._next_slot = (step.slot + 1) % self.slots
        self.counter += 1
        if float(t) <= self.cache.stop_t:
            self._reset()

    def advance(self, t: float) -> PlannedStep:
        """``peek(t)`` and ``commit`` it."""
        step = self.peek(t)
        self.commit(step, t)
        return step
