"""Stable Diffusion 3 and 3.5 (``SD3Transformer2DModel``): joint (MMDiT) blocks, each taking and
returning both token streams (image, text), so a cached step keeps both streams' residual of the
middle blocks. The last block updates only the image stream (``context_pre_only``); it is an outer
block, run on every step. Batch CFG (one call per step); skip-layer guidance skips blocks inside the
transformer's own forward and composes."""

from __future__ import annotations

from diffusers import SD3Transformer2DModel

from ....cache import SkipCache
from ..family import TEXT_AND_IMAGE, Family

FAMILY = Family(
    transformer=SD3Transformer2DModel,
    pipelines=(
        "StableDiffusion3Pipeline",
        "StableDiffusion3Img2ImgPipeline",
        "StableDiffusion3InpaintPipeline",
        "StableDiffusion3ControlNetPipeline",
    ),
    blocks=("transformer_blocks",),
    io=TEXT_AND_IMAGE,
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=38,  # SD3.5 Large; SD3/3.5 Medium have 24
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
