"""Sana (``SanaTransformer2DModel``): linear-attention blocks taking and returning the image tokens
(text is a cross-attention input), so a cached step keeps the middle blocks' residual. Batch CFG."""

from __future__ import annotations

from diffusers import SanaTransformer2DModel

from ....cache import SkipCache
from ..family import Family

FAMILY = Family(
    transformer=SanaTransformer2DModel,
    pipelines=("SanaPipeline", "SanaSprintPipeline", "SanaControlNetPipeline"),
    blocks=("transformer_blocks",),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=20,  # Sana 1600M; 600M has 28
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
