"""FLUX.2 (``Flux2Transformer2DModel``: dev, klein): dual-stream then single-stream blocks; the forward
concatenates the two streams between the lists, so the cache spans the single-stream list (a unit is
a single-stream block, its input the joint sequence) and the dual-stream blocks run every step. The
pipelines pass sigma (t / 1000); FLUX.2 dev is guidance-distilled, klein runs true CFG."""

from __future__ import annotations

from diffusers import Flux2Transformer2DModel

from ....cache import SkipCache
from ..family import Family, Timestep

FAMILY = Family(
    transformer=Flux2Transformer2DModel,
    pipelines=("Flux2Pipeline", "Flux2KleinPipeline"),
    blocks=("single_transformer_blocks",),
    timestep=Timestep(scale=1.0),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=48,  # single-stream blocks of FLUX.2 dev
    unit="single-stream block",
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
