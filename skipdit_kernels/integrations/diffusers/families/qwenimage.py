"""Qwen-Image (``QwenImageTransformer2DModel``): dual-stream (MMDiT) blocks taking and returning both
token streams (image, text), so a cached step keeps both streams' residual of the middle blocks. The
pipelines pass sigma (t / 1000) as the timestep; true CFG (``true_cfg_scale``) runs two branches."""

from __future__ import annotations

from diffusers import QwenImageTransformer2DModel

from ....cache import SkipCache
from ..family import TEXT_AND_IMAGE, Family, Timestep

FAMILY = Family(
    transformer=QwenImageTransformer2DModel,
    pipelines=(
        "QwenImagePipeline",
        "QwenImageImg2ImgPipeline",
        "QwenImageInpaintPipeline",
        "QwenImageEditPipeline",
        "QwenImageEditPlusPipeline",
    ),
    blocks=("transformer_blocks",),
    io=TEXT_AND_IMAGE,
    timestep=Timestep(scale=1.0),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=60,  # Qwen-Image 20B
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
