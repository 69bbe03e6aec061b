"""HiDream-I1 (``HiDreamImageTransformer2DModel``): 16 dual-stream then 32 single-stream blocks. The
forward joins the streams between the lists and feeds each block another Llama layer's text tokens
(a block's input: the image tokens with that block's text tokens), so a cached step keeps a residual
per list the middle spans: both streams' where the dual-stream list ends, the joint sequence's at
the boundary. The forward's time is ``timesteps``. Batch CFG."""

from __future__ import annotations

from diffusers import HiDreamImageTransformer2DModel

from ....cache import SkipCache
from ..family import IMAGE_AND_TEXT, Family, Timestep

FAMILY = Family(
    transformer=HiDreamImageTransformer2DModel,
    pipelines=("HiDreamImagePipeline",),
    blocks=("double_stream_blocks", "single_stream_blocks"),
    io={"double_stream_blocks": IMAGE_AND_TEXT},
    timestep=Timestep(argument="timesteps"),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=48,  # HiDream-I1: 16 + 32
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
