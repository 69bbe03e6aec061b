"""Cosmos Predict2 (``CosmosTransformer3DModel``): blocks take and return the video tokens (text is a
cross-attention input), so a cached step keeps the middle blocks' residual. The Predict2 pipelines
pass sigma / (sigma + 1) as the timestep (Cosmos 1.0's EDM pipelines pass c_noise, which is no noise
level on 0..1: ``start_t``/``stop_t`` do not apply there, the interval does). True CFG runs two
branches."""

from __future__ import annotations

from diffusers import CosmosTransformer3DModel

from ....cache import SkipCache
from ..family import Family, Timestep

FAMILY = Family(
    transformer=CosmosTransformer3DModel,
    pipelines=("Cosmos2TextToImagePipeline", "Cosmos2VideoToWorldPipeline"),
    blocks=("transformer_blocks",),
    timestep=Timestep(scale=1.0),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=28,  # Cosmos-Predict2 2B
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
