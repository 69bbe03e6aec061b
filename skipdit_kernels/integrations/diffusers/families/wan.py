"""Wan 2.1 and 2.2 (``WanTransformer3DModel``): text-, image- and video-to-video. Blocks take the
video tokens and return them (the text and image embeddings are cross-attention inputs), so a cached
step keeps the middle blocks' residual. True CFG: the prompt's and the negative prompt's calls at one
timestep are two branches. Wan 2.2 A14B's low-noise expert (``transformer_2``) gets its own request."""

from __future__ import annotations

from diffusers import WanTransformer3DModel

from ....cache import SkipCache
from ..family import Family

FAMILY = Family(
    transformer=WanTransformer3DModel,
    pipelines=("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline"),
    blocks=("blocks",),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=40,  # Wan 2.1/2.2 14B; 1.3B has 30
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
