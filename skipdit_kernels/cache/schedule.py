"""Skip-Cache: which denoising steps run every block, and which reuse the deep features.

A step is *full* when the step counter is a multiple of ``interval``, when nothing is cached yet, or
when its timestep is at least ``start_t``. A full step stores the hidden state that enters block
``depth - shallow_blocks``; a *cached* step runs only the outer ``shallow_blocks`` blocks on each
side and takes that stored state instead of running the middle. After each step the counter
advances; at a timestep at or below ``stop_t`` the counter and the cache reset (the official
DiT_cache schedule).

``forecast`` (issue 12): instead of reusing the stored state on a cached step, extrapolate it with
the Lagrange polynomial of order ``forecast`` through the states stored at the last
``forecast + 1`` full steps, evaluated at the current step index (weights computed on the host from
step indices only). 0 reuses (the published behaviour, the default); ``"auto"`` is resolved by
``sample()`` / the CLI from the sampler (deterministic: ``forecast.AUTO_DETERMINISTIC_ORDER``,
stochastic: 0).
"""
from __future__ import annotations

import dataclasses
import numbers

import torch

from .forecast import MAX_FORECAST_ORDER, ForecastHistory, check_forecast

_PRESETS = {
    # Official Skip-DiT class-to-image defaults (DiT-XL/2).
    "dit": dict(interval=2, shallow_blocks=4, start_t=1000, stop_t=20),
    # The video / Hunyuan-DiT schedule of the Skip-DiT release.
    "video": dict(interval=2, shallow_blocks=1, start_t=700, stop_t=50),
}


@dataclasses.dataclass(frozen=True)
class SkipCache:
    """Skip-Cache schedule. The defaults are the official DiT-XL/2 ones."""

    interval: int = 2
    shallow_blocks: int = 4
    start_t: float = 1000
    stop_t: float = 20
    forecast: int | str = 0

    def __post_init__(self):
        check_forecast(self.forecast)
        if isinstance(self.interval, bool) or not isinstance(self.interval, numbers.Integral) or self.interval < 1:
            raise ValueError(f"SkipCache.interval must be an integer >= 1, got {self.interval!r}")
        if (
            isinstance(self.shallow_blocks, bool)
            or not isinstance(self.shallow_blocks, numbers.Integral)
            or self.shallow_blocks < 1
        ):
            raise ValueError(f"SkipCache.shallow_blocks must be an integer >= 1, got {self.shallow_blocks!r}")
        for name in ("start_t", "stop_t"):
            if not isinstance(getattr(self, name), numbers.Real):
                raise ValueError(f"SkipCache.{name} must be a number, got {getattr(self, name)!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "SkipCache":
        """``"dit"`` (official class-to-image defaults) or ``"video"`` (interval 2, shallow 1, 700..50)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown Skip-Cache preset {name!r}; expected one of {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    def with_forecast(self, order: int) -> "SkipCache":
        """The same schedule with an explicit forecast order (how ``"auto"`` gets resolved)."""
        return dataclasses.replace(self, forecast=order)

    def check_depth(self, depth: int) -> None:
        if not 1 <= self.shallow_blocks <= depth // 2:
            raise ValueError(
                f"SkipCache.shallow_blocks must be in 1..{depth // 2} for a model of depth {depth}, "
                f"got {self.shallow_blocks}"
            )

    def is_full_step(self, counter: int, t: float, have_cache: bool) -> bool:
        return counter % self.interval == 0 or not have_cache or t >= self.start_t

    def plan(self, timesteps) -> list[bool]:
        """Full (True) or cached (False) for each timestep of one trajectory, decided on the host."""
        plan, counter, have_cache = [], 0, False
        for t in timesteps:
            full = self.is_full_step(counter, float(t), have_cache)
            plan.append(full)
            have_cache = have_cache or full
            counter += 1
            if float(t) <= self.stop_t:
                counter, have_cache = 0, False
        return plan

    def block_fraction(self, timesteps, depth: int) -> float:
        """Block calls of a cached trajectory relative to running every block at every step."""
        plan = self.plan(timesteps)
        cached = plan.count(False)
        return (len(plan) * depth - cached * (depth - 2 * self.shallow_blocks)) / (len(plan) * depth)


InputSignature = tuple  # (shape, dtype, device) of the model input


def input_signature(x: torch.Tensor) -> InputSignature:
    return (tuple(x.shape), x.dtype, x.device)


class SkipCacheState:
    """The per-trajectory state of a Skip-Cache: step counter, stored deep feature, input signature.

    ``residual=True`` stores the change the middle blocks make to the hidden state instead of the
    state itself; stacks without long skips use it, since there the shallow blocks' output would
    otherwise be discarded on cached steps.
    """

    def __init__(self, config: SkipCache, depth: int, residual: bool = False):
        config.check_depth(depth)
        if config.forecast == "auto":
            raise ValueError(
                "SkipCache(forecast='auto') needs to know the sampler: pass it to sample() or the CLI, which "
                f"resolve it; a module-level Skip-Cache needs an explicit order 0..{MAX_FORECAST_ORDER}"
            )
        self.config = config
        self.depth = depth
        self.residual = residual
        self.full_steps = 0
        self.cached_steps = 0
        self.reset()

    def reset(self) -> None:
        self.counter = 0
        self.deep: torch.Tensor | None = None
        self.signature: InputSignature | None = None
        self.last_t: float | None = None
        self.last_step_full: bool | None = None
        # (step index, deep state) of the last forecast + 1 full steps; empty when forecast == 0.
        self.history = ForecastHistory(self.config.forecast)

    def begin_step(self, t: float, signature: InputSignature) -> bool:
        """Decide whether this step is full; reset first if the input is not the trajectory's."""
        new_trajectory = self.last_t is not None and t > self.last_t
        if signature != self.signature or new_trajectory:
            self.reset()
            self.signature = signature
        full = self.config.is_full_step(self.counter, t, self.deep is not None)
        self.last_step_full = full
        if full:
            self.full_steps += 1
        else:
            self.cached_steps += 1
        return full

    def end_step(self, t: float) -> None:
        self.counter += 1
        self.last_t = t
        if t <= self.config.stop_t:
            signature = self.signature
            self.reset()
            self.signature = signature

    def store(self, deep_input: torch.Tensor, shallow_output: torch.Tensor) -> None:
        """On a full step: remember what enters block depth - shallow_blocks."""
        self.deep = deep_input - shallow_output if self.residual else deep_input
        if self.config.forecast:
            self.history.append(self.counter, self.deep)

    def restore(self, shallow_output: torch.Tensor) -> torch.Tensor:
        """On a cached step: what enters block depth - shallow_blocks instead of the middle's output."""
        assert self.deep is not None
        deep = self.history.predict(self.counter) if self.config.forecast else self.deep
        return shallow_output + deep if self.residual else deep
