"""LTX-Video (``LTXVideoTransformer3DModel``): blocks take and return the video tokens (text is a
cross-attention input), so a cached step keeps the middle blocks' residual. Batch CFG."""

from __future__ import annotations

from diffusers import LTXVideoTransformer3DModel

from ....cache import SkipCache
from ..family import Family

FAMILY = Family(
    transformer=LTXVideoTransformer3DModel,
    pipelines=("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline"),
    blocks=("transformer_blocks",),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=28,  # LTX-Video 2B
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
