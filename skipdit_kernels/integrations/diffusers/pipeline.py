"""The front door: ``apply_skip_cache(pipe)`` (every call of the pipeline is one request) and
``enable_skip_cache(transformer)`` (one step-by-step request), the schedule defaults and checks.

``__call__`` is a special method: Python looks it up on the type, so an instance attribute would be
ignored by ``pipe(...)``. The wrapped pipeline therefore gets a class of its own, a subclass of its
class with the same name that only opens a request around ``__call__``; ``remove_skip_cache`` puts
the original class back. The pipeline's class itself (shared by every other instance) is never
modified, nor is any diffusers class. The options a pipeline was given (schedule, forecast,
``fast_blocks``) are its record's, read at each call: pipelines sharing a transformer keep theirs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
import warnings
import weakref
from typing import Any

import diffusers
import torch

from ...cache import SkipCache
from ...cache.forecast import AUTO_DETERMINISTIC_ORDER, check_forecast, resolve_forecast
from .families import FAMILIES
from .family import Family, check_diffusers_version, families_table
from .request import SkipCacheRequest, close_requests
from .schedulers import scheduler_is_stochastic

#: The transformer classes of the declared families (``families/``), in the docs' order.
SUPPORTED_TRANSFORMERS = tuple(f.name for f in FAMILIES)


#: The pipeline attributes holding denoisers: ``transformer``, and Wan 2.2's low-noise expert
#: ``transformer_2`` (the pipeline switches to it below its boundary timestep). Each gets its own
#: request in a call.
PIPELINE_TRANSFORMERS = ("transformer", "transformer_2")


def _transformers(pipe) -> list[torch.nn.Module]:
    found = []
    for name in PIPELINE_TRANSFORMERS:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module) and all(module is not m for m in found):
            found.append(module)
    return found


def family_of(transformer) -> Family:
    """The family of ``transformer``; TypeError naming the supported classes otherwise."""
    for family in FAMILIES:
        if family.belongs(transformer):
            return family
    raise TypeError(
        f"Skip-Cache for diffusers supports {', '.join(SUPPORTED_TRANSFORMERS)} (and pipelines whose "
        f"`transformer` is one of them); got {type(transformer).__name__}"
    )


def default_cache(transformer) -> SkipCache:
    """The family's default schedule for this transformer's depth (``Family.default_cache_for``:
    the published ``shallow_blocks`` at the family's reference depth, scaled with the depth).
    ValueError naming the depth for a transformer too shallow to cache."""
    family = family_of(transformer)
    return family.default_cache_for(len(family.units(transformer)))


def supported_table() -> str:
    """The Markdown table of the supported transformers (in docs/diffusers.md and the README)."""
    return families_table(FAMILIES)


def _schedule(transformer, cache: SkipCache | None, forecast, caller: str) -> tuple[Family, SkipCache]:
    """The family and the checked schedule; warnings for what would silently do nothing."""
    if cache is not None and not isinstance(cache, SkipCache):
        raise TypeError(f"{caller} expects a SkipCache, got {type(cache).__name__}")
    family = family_of(transformer)
    check_diffusers_version(diffusers.__version__)
    num_units = len(family.units(transformer))
    cache = cache if cache is not None else family.default_cache_for(num_units)
    if forecast is not None:
        check_forecast(forecast)
        cache = dataclasses.replace(cache, forecast=forecast)
    cache.check_units(num_units, family.partners(num_units))
    if cache.interval == 1 or 2 * cache.shallow_blocks >= num_units:
        if cache.interval == 1:
            why = "interval=1 makes every step full"
        else:
            why = f"{cache.shallow_blocks} shallow {family.unit}s on each side cover all {num_units}"
        try:
            working = f"a schedule that caches: {family.default_cache_for(num_units)}"
        except ValueError as exc:
            working = str(exc)
        warnings.warn(f"{caller}: {cache} skips nothing on this {family.name} ({why}); {working}", stacklevel=3)
    if transformer.training:
        warnings.warn(
            f"{caller}: the {family.name} is in train mode (dropout active, fast blocks off); "
            "call .eval() for inference",
            stacklevel=3,
        )
    return family, cache


def enable_skip_cache(
    transformer,
    cache: SkipCache | None = None,
    *,
    forecast: int | None = None,
    fast_blocks: bool = True,
    alphas_cumprod=None,
) -> SkipCacheRequest:
    """Start a step-by-step Skip-Cache request on a diffusers transformer in the calling context:
    every call of it is a step (cached or full as the schedule says) until the returned request is
    closed (``close()``, a ``with`` block, or ``disable_skip_cache``). A rising timestep or new input
    shapes start a fresh trajectory. ``cache``: default ``default_cache(transformer)``;
    ``forecast``: an explicit order 0..3 (``"auto"`` needs a pipeline's scheduler: ValueError);
    ``fast_blocks`` as in ``apply_skip_cache``; ``alphas_cumprod``: the sampler's noise schedule
    (``scheduler.alphas_cumprod``), needed by ``forecast_basis="alpha-sigma"``. TypeError naming the
    supported classes for anything else; ValueError for a schedule that does not fit the transformer."""
    if not isinstance(transformer, torch.nn.Module):
        raise TypeError(
            f"enable_skip_cache takes a diffusers transformer (for a pipeline: apply_skip_cache), got {type(transformer).__name__}"
        )
    family, cache = _schedule(transformer, cache, forecast, "enable_skip_cache")
    if cache.forecast == "auto":
        raise ValueError(
            "forecast='auto' is resolved from a pipeline's scheduler; for a bare transformer give an "
            f"explicit order (0 reuses; {AUTO_DETERMINISTIC_ORDER} is the choice for deterministic samplers)"
        )
    return SkipCacheRequest(transformer, family, cache, fast_blocks, alphas_cumprod)


def _noise_schedule(scheduler, cache: SkipCache, caller: str):
    """The scheduler's ``alphas_cumprod`` where the forecast basis reads it (else None); ValueError
    for a scheduler without one (flow matching: no DDPM noise schedule to fit in)."""
    if cache.forecast_basis != "alpha-sigma":
        return None
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        raise ValueError(
            f"{caller}: forecast_basis='alpha-sigma' fits the noise schedule's alphas_cumprod, which "
            f"{type(scheduler).__name__} does not have; use the default forecast_basis='polynomial'"
        )
    return alphas


def disable_skip_cache(transformer) -> None:
    """Close every request of ``transformer`` (in any context); its forward is its own again."""
    close_requests(transformer)


@dataclasses.dataclass(frozen=True)
class _Applied:
    """A pipeline's Skip-Cache options (its own; never stored on the shared transformer)."""

    cache: SkipCache
    fast_blocks: bool
    base: type  # the pipeline's own class


_PIPES: "weakref.WeakKeyDictionary[Any, _Applied]" = weakref.WeakKeyDictionary()
_CLASSES: dict[type, type] = {}
_LOCK = threading.Lock()


def _call_with_skip_cache(pipe, base: type, args: tuple, kwargs: dict):
    applied = _PIPES.get(pipe)
    if applied is None:  # removed after this class was looked up
        return base.__call__(pipe, *args, **kwargs)
    cache = applied.cache
    if cache.forecast == "auto":
        params = inspect.signature(base.__call__).bind_partial(pipe, *args, **kwargs)
        params.apply_defaults()
        stochastic = scheduler_is_stochastic(pipe.scheduler, params.arguments.get("eta", 0.0))
        cache = cache.with_forecast(resolve_forecast("auto", stochastic=stochastic))
    alphas = _noise_schedule(pipe.scheduler, cache, type(pipe).__name__)
    with contextlib.ExitStack() as requests:
        for transformer in _transformers(pipe):
            family = family_of(transformer)
            requests.enter_context(SkipCacheRequest(transformer, family, cache, applied.fast_blocks, alphas))
        return base.__call__(pipe, *args, **kwargs)


def _skip_cached_class(base: type) -> type:
    """The per-pipeline class: ``base`` with the request around ``__call__`` (made once per base)."""
    with _LOCK:
        cls = _CLASSES.get(base)
        if cls is None:

            def __call__(self, *args, **kwargs):
                return _call_with_skip_cache(self, base, args, kwargs)

            __call__.__doc__ = base.__call__.__doc__
            __call__.__signature__ = inspect.signature(base.__call__)
            namespace = {"__call__": __call__, "__module__": base.__module__, "__qualname__": base.__qualname__}
            cls = _CLASSES[base] = type(base.__name__, (base,), namespace)
        return cls


def apply_skip_cache(
    pipe, cache: SkipCache | None = None, *, forecast: int | str | None = None, fast_blocks: bool = True
):
    """Skip-Cache for a diffusers pipeline: every later call of ``pipe`` is one Skip-Cache request
    on ``pipe.transformer`` (one of ``SUPPORTED_TRANSFORMERS``), closed when the call returns,
    raises or is interrupted. Returns ``pipe``.

    ``cache``: the schedule (default ``default_cache(pipe.transformer)``); ``forecast`` overrides
    ``cache.forecast`` (0..3, or ``"auto"``: resolved at each call from the pipeline's scheduler,
    ``scheduler_is_stochastic``). ``fast_blocks``: run the blocks of families that declare a fast
    block (DiT, HunyuanDiT) through skipdit_kernels' fused ops on their own parameters (equal to
    diffusers' blocks within fp32 rounding; a block with hooks, another processor or train mode runs
    diffusers' forward, checked at every call); False runs diffusers' own blocks (bit-identical to
    the uncached pipeline on full steps). The options are this pipeline's, whatever other pipelines
    sharing its transformer ask. Applying again replaces the first application (with a warning).
    Warnings for a schedule that skips nothing and for a transformer in train mode. TypeError for a
    transformer (use ``enable_skip_cache``) or anything that is not a supported pipeline; ValueError
    for a schedule that does not fit the transformer (checked now)."""
    transformer = getattr(pipe, "transformer", None)
    if isinstance(pipe, torch.nn.Module) or transformer is None:
        raise TypeError(
            f"apply_skip_cache supports diffusers pipelines whose transformer is one of "
            f"{', '.join(SUPPORTED_TRANSFORMERS)}; "
            f"got {type(pipe).__name__} (for a transformer itself: enable_skip_cache(transformer, cache))"
        )
    _, cache = _schedule(transformer, cache, forecast, "apply_skip_cache")
    _noise_schedule(getattr(pipe, "scheduler", None), cache, "apply_skip_cache")
    for other in _transformers(pipe)[1:]:
        _schedule(other, cache, None, "apply_skip_cache")
    previous = _PIPES.get(pipe)
    if previous is not None:
        warnings.warn(
            f"apply_skip_cache: this {previous.base.__name__} already had Skip-Cache ({previous.cache}, "
            f"fast_blocks={previous.fast_blocks}); replaced by {cache}, fast_blocks={bool(fast_blocks)}",
            stacklevel=2,
        )
    base = previous.base if previous is not None else type(pipe)
    _PIPES[pipe] = _Applied(cache, bool(fast_blocks), base)
    pipe.__class__ = _skip_cached_class(base)
    return pipe


def remove_skip_cache(pipe) -> None:
    """Undo ``apply_skip_cache``: the pipeline gets its own class back (calls already running finish
    their request). A no-op for a pipeline without Skip-Cache; TypeError for a transformer (its
    requests end with ``disable_skip_cache``)."""
    if isinstance(pipe, torch.nn.Module):
        raise TypeError(
            "remove_skip_cache takes a pipeline; a transformer's requests end with disable_skip_cache(transformer)"
        )
    applied = _PIPES.pop(pipe, None)
    if applied is not None and type(pipe) is _CLASSES.get(applied.base):
        pipe.__class__ = applied.base
