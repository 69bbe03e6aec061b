"""AuraFlow (``AuraFlowTransformer2DModel``): joint (MMDiT) blocks then single-stream blocks; the
forward concatenates the two streams between the lists, so the cache spans the single-stream list and
the joint blocks run every step. The pipeline passes sigma (t / 1000). Batch CFG."""

from __future__ import annotations

from diffusers import AuraFlowTransformer2DModel

from ....cache import SkipCache
from ..family import Family, Timestep

FAMILY = Family(
    transformer=AuraFlowTransformer2DModel,
    pipelines=("AuraFlowPipeline",),
    blocks=("single_transformer_blocks",),
    timestep=Timestep(scale=1.0),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=32,  # single-stream blocks of AuraFlow 0.3
    unit="single-stream block",
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
