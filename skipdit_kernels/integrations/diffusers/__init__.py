"""Skip-Cache inside diffusers pipelines, unchanged.

    from skipdit_kernels.integrations.diffusers import apply_skip_cache
    apply_skip_cache(pipe)                      # the family's default; or apply_skip_cache(pipe, SkipCache(...))
    image = pipe(prompt, num_inference_steps=100).images[0]

    with enable_skip_cache(pipe.transformer, SkipCache(...)) as request:   # a transformer, step by step
        for t in timesteps: eps = pipe.transformer(x, t, ...)

Each pipeline call is one Skip-Cache request on ``pipe.transformer`` (and on Wan 2.2's low-noise
expert ``pipe.transformer_2``), opened around the call and
closed at its end, also when it raises or is interrupted, so no call sees another's features; the
request is context-local, so concurrent calls (threads) each run their own. The transformer's own
forward runs (embedding, positions, text handling and final layer stay diffusers' code); the request
is a diffusers ``HookRegistry`` hook on the transformer, composing with other transformer hooks and
accelerate's CPU offload in either order, and the cache works at the transformer's block lists
(``request``). The timestep the pipeline passes to the transformer (its first sample's, read as the
family's ``Timestep`` declares: a noise level on 0..1000) drives the schedule; the calls at one
timestep (true classifier-free guidance: prompt, then negative prompt) are branches of the step,
each with its own schedule and cached state.

Supported transformers: one declaration per family in ``families/`` (``family.Family`` is the guide
to adding one); ``SUPPORTED_TRANSFORMERS`` and the table in docs/diffusers.md and the README
(``supported_table()``) come from them. ``forecast="auto"`` is resolved at each call from the
pipeline's scheduler (``scheduler_is_stochastic``): the ODE schedulers in
``DETERMINISTIC_SCHEDULERS`` get ``cache.forecast.AUTO_DETERMINISTIC_ORDER``, every other scheduler
reuses (order 0, the published behaviour). ``dit_to_diffusers``/``dit_from_diffusers`` convert DiT
weights.
"""

from __future__ import annotations

try:
    import diffusers  # noqa: F401
    from diffusers.hooks import HookRegistry  # noqa: F401  (diffusers >= 0.33)
except ImportError as exc:  # pragma: no cover - exercised only without diffusers
    raise ImportError(
        "skipdit_kernels.integrations.diffusers needs diffusers >= 0.33: pip install 'skipdit-kernels[diffusers]'"
    ) from exc

from .convert import dit_from_diffusers, dit_to_diffusers, use_official_timestep_frequencies
from .families import FAMILIES
from .family import TESTED_DIFFUSERS, BlockIO, Family, FastBlock, Timestep
from .pipeline import (
    SUPPORTED_TRANSFORMERS,
    apply_skip_cache,
    default_cache,
    disable_skip_cache,
    enable_skip_cache,
    family_of,
    remove_skip_cache,
    supported_table,
)
from .request import SkipCacheRequest
from .schedulers import DETERMINISTIC_SCHEDULERS, scheduler_is_stochastic

__all__ = [
    "BlockIO",
    "DETERMINISTIC_SCHEDULERS",
    "FAMILIES",
    "Family",
    "FastBlock",
    "SUPPORTED_TRANSFORMERS",
    "SkipCacheRequest",
    "TESTED_DIFFUSERS",
    "Timestep",
    "apply_skip_cache",
    "default_cache",
    "disable_skip_cache",
    "dit_from_diffusers",
    "dit_to_diffusers",
    "enable_skip_cache",
    "family_of",
    "remove_skip_cache",
    "scheduler_is_stochastic",
    "supported_table",
    "use_official_timestep_frequencies",
]
