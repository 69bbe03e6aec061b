"""Allegro (``AllegroTransformer3DModel``): blocks take and return the video tokens (text is a
cross-attention input), so a cached step keeps the middle blocks' residual. Batch CFG; its default
scheduler (Euler ancestral) is stochastic, so ``forecast="auto"`` reuses."""

from __future__ import annotations

from diffusers import AllegroTransformer3DModel

from ....cache import SkipCache
from ..family import Family

FAMILY = Family(
    transformer=AllegroTransformer3DModel,
    pipelines=("AllegroPipeline",),
    blocks=("transformer_blocks",),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=32,  # Allegro
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
