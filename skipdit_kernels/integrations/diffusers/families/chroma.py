"""Chroma (``ChromaTransformer2DModel``): 19 dual-stream then 38 single-stream blocks; the forward
joins the two streams (image, text) into one sequence between the lists, so a cached step keeps a
residual per list the middle spans: both streams' where the dual-stream list ends, the joint
sequence's at the boundary. The pipelines pass sigma (t / 1000); true CFG runs two branches."""

from __future__ import annotations

from diffusers import ChromaTransformer2DModel

from ....cache import SkipCache
from ..family import TEXT_AND_IMAGE, Family, Timestep

FAMILY = Family(
    transformer=ChromaTransformer2DModel,
    pipelines=("ChromaPipeline", "ChromaImg2ImgPipeline"),
    blocks=("transformer_blocks", "single_transformer_blocks"),
    io={"transformer_blocks": TEXT_AND_IMAGE},
    timestep=Timestep(scale=1.0),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=57,  # Chroma1: 19 + 38
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
