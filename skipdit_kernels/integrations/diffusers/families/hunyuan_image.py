"""HunyuanImage 2.1 (``HunyuanImageTransformer2DModel``): 20 dual-stream then 40 single-stream blocks,
each taking and returning both token streams (image, text), so a unit is a block of either list and a
cached step keeps both streams' residual of the middle blocks. Guidance-distilled or with the
pipeline's guider (two calls per step: two branches)."""

from __future__ import annotations

from diffusers import HunyuanImageTransformer2DModel

from ....cache import SkipCache
from ..family import IMAGE_AND_TEXT, Family

FAMILY = Family(
    transformer=HunyuanImageTransformer2DModel,
    pipelines=("HunyuanImagePipeline", "HunyuanImageRefinerPipeline"),
    blocks=("transformer_blocks", "single_transformer_blocks"),
    io=IMAGE_AND_TEXT,
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=60,  # 20 + 40
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
