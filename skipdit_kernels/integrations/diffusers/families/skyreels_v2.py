"""SkyReels-V2 (``SkyReelsV2Transformer3DModel``, Wan-based): blocks take and return the video tokens,
so a cached step keeps the middle blocks' residual. True CFG runs two branches. (The
diffusion-forcing pipelines denoise frame groups at different noise levels in one call; a group
whose timesteps rise starts a new trajectory.)"""

from __future__ import annotations

from diffusers import SkyReelsV2Transformer3DModel

from ....cache import SkipCache
from ..family import Family

FAMILY = Family(
    transformer=SkyReelsV2Transformer3DModel,
    pipelines=("SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline", "SkyReelsV2DiffusionForcingPipeline"),
    blocks=("blocks",),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=40,  # SkyReels-V2 14B; 1.3B has 30
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
