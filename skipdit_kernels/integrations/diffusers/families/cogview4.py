"""CogView4 (``CogView4Transformer2DModel``): blocks take and return both token streams (image,
text), so a cached step keeps both streams' residual of the middle blocks. True CFG runs two
branches."""

from __future__ import annotations

from diffusers import CogView4Transformer2DModel

from ....cache import SkipCache
from ..family import IMAGE_AND_TEXT, Family

FAMILY = Family(
    transformer=CogView4Transformer2DModel,
    pipelines=("CogView4Pipeline", "CogView4ControlPipeline"),
    blocks=("transformer_blocks",),
    io=IMAGE_AND_TEXT,
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=28,  # CogView4-6B
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
