"""Lumina-Image 2.0 (``Lumina2Transformer2DModel``): the joint ``layers`` (after the noise and
context refiners, which run every step) take and return the unified token sequence, so a cached step
keeps the middle layers' residual. The pipeline passes 1 - sigma (0 at pure noise) as the timestep;
true CFG (two calls per step, the negative one dropped after ``cfg_trunc_ratio``) runs two branches."""

from __future__ import annotations

from diffusers import Lumina2Transformer2DModel

from ....cache import SkipCache
from ..family import Family, Timestep

FAMILY = Family(
    transformer=Lumina2Transformer2DModel,
    pipelines=("Lumina2Pipeline",),
    blocks=("layers",),
    timestep=Timestep(scale=1.0, rising=True),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=26,  # Lumina-Image 2.0
    unit="layer",
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
