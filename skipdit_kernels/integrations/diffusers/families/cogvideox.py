"""CogVideoX (``CogVideoXTransformer3DModel``, also CogVideoX 1.5): blocks take and return both token
streams (video, text), so a cached step keeps both streams' residual of the middle blocks. Batch CFG
(one call per step; with ``use_dynamic_cfg`` too)."""

from __future__ import annotations

from diffusers import CogVideoXTransformer3DModel

from ....cache import SkipCache
from ..family import IMAGE_AND_TEXT, Family

FAMILY = Family(
    transformer=CogVideoXTransformer3DModel,
    pipelines=(
        "CogVideoXPipeline",
        "CogVideoXImageToVideoPipeline",
        "CogVideoXVideoToVideoPipeline",
        "CogVideoXFunControlPipeline",
    ),
    blocks=("transformer_blocks",),
    io=IMAGE_AND_TEXT,
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=42,  # CogVideoX-5B; 2B has 30
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
