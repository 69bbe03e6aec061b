"""Z-Image (``ZImageTransformer2DModel``): the single-stream ``layers`` (after the noise and context
refiners, which run every step) take and return the unified token sequence ``x``, so a cached step
keeps the middle layers' residual. The forward's time is ``t``, 1 - sigma (0 at pure noise). Batch
CFG (the pipeline's lists of latents)."""

from __future__ import annotations

from diffusers import ZImageTransformer2DModel

from ....cache import SkipCache
from ..family import BlockIO, Family, Timestep

FAMILY = Family(
    transformer=ZImageTransformer2DModel,
    pipelines=("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"),
    blocks=("layers",),
    io=BlockIO(inputs=("x",)),
    timestep=Timestep(argument="t", scale=1.0, rising=True),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=30,  # Z-Image Turbo
    unit="layer",
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
