"""FLUX.2 (``Flux2Transformer2DModel``: dev, klein): dual-stream then single-stream blocks; the forward
joins the two streams (image, text) into one sequence between the lists, so a cached step keeps a
residual per list the middle spans: both streams' where the dual-stream list ends, the joint
sequence's at the boundary. The pipelines pass sigma (t / 1000); FLUX.2 dev is guidance-distilled,
klein runs true CFG."""

from __future__ import annotations

from diffusers import Flux2Transformer2DModel

from ....cache import SkipCache
from ..family import TEXT_AND_IMAGE, Family, Timestep

FAMILY = Family(
    transformer=Flux2Transformer2DModel,
    pipelines=("Flux2Pipeline", "Flux2KleinPipeline"),
    blocks=("transformer_blocks", "single_transformer_blocks"),
    io={"transformer_blocks": TEXT_AND_IMAGE},
    timestep=Timestep(scale=1.0),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=56,  # FLUX.2 dev: 8 + 48
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
