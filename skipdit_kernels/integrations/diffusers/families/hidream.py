"""HiDream-I1 (``HiDreamImageTransformer2DModel``): 16 dual-stream then 32 single-stream blocks. The
forward concatenates the streams between the lists and feeds each block another Llama layer's text
tokens, so the cache spans the single-stream list (a unit is a single-stream block, its input the
image tokens with that block's text tokens) and the dual-stream blocks run every step. The forward's
time is ``timesteps``. Batch CFG."""

from __future__ import annotations

from diffusers import HiDreamImageTransformer2DModel

from ....cache import SkipCache
from ..family import Family, Timestep

FAMILY = Family(
    transformer=HiDreamImageTransformer2DModel,
    pipelines=("HiDreamImagePipeline",),
    blocks=("single_stream_blocks",),
    timestep=Timestep(argument="timesteps"),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=32,  # single-stream blocks of HiDream-I1
    unit="single-stream block",
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
