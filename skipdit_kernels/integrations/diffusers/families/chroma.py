"""Chroma (``ChromaTransformer2DModel``): 19 dual-stream then 38 single-stream blocks; the forward
concatenates the two streams between the lists, so the cache spans the single-stream list (a unit is
a single-stream block, its input the joint sequence) and the dual-stream blocks run every step. The
pipelines pass sigma (t / 1000); true CFG runs two branches."""

from __future__ import annotations

from diffusers import ChromaTransformer2DModel

from ....cache import SkipCache
from ..family import Family, Timestep

FAMILY = Family(
    transformer=ChromaTransformer2DModel,
    pipelines=("ChromaPipeline", "ChromaImg2ImgPipeline"),
    blocks=("single_transformer_blocks",),
    timestep=Timestep(scale=1.0),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=38,  # single-stream blocks of Chroma1
    unit="single-stream block",
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
