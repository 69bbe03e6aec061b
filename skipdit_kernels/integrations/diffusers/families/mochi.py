"""Mochi 1 (``MochiTransformer3DModel``): blocks take and return both token streams (video, text),
so a cached step keeps both streams' residual of the middle blocks; the last block updates only the
video stream and is an outer block, run every step. Batch CFG."""

from __future__ import annotations

from diffusers import MochiTransformer3DModel

from ....cache import SkipCache
from ..family import IMAGE_AND_TEXT, Family

FAMILY = Family(
    transformer=MochiTransformer3DModel,
    pipelines=("MochiPipeline",),
    blocks=("transformer_blocks",),
    io=IMAGE_AND_TEXT,
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=48,  # Mochi 1 preview
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
