"""FLUX.1 (``FluxTransformer2DModel``: dev, schnell, Kontext, Fill, Krea): 19 dual-stream blocks then
38 single-stream ones, each taking and returning both token streams (image, text), so a unit is a
block of either list and a cached step keeps both streams' residual of the middle blocks. The
pipelines pass sigma (t / 1000) as the timestep. Guidance-distilled (the guidance embedding) and
true CFG (``true_cfg_scale``: two calls per step, each its own branch) both work."""

from __future__ import annotations

from diffusers import FluxTransformer2DModel

from ....cache import SkipCache
from ..family import TEXT_AND_IMAGE, Family, Timestep

FAMILY = Family(
    transformer=FluxTransformer2DModel,
    pipelines=(
        "FluxPipeline",
        "FluxImg2ImgPipeline",
        "FluxInpaintPipeline",
        "FluxKontextPipeline",
        "FluxFillPipeline",
        "FluxControlPipeline",
        "FluxControlNetPipeline",
    ),
    blocks=("transformer_blocks", "single_transformer_blocks"),
    io=TEXT_AND_IMAGE,
    timestep=Timestep(scale=1.0),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=57,  # FLUX.1-dev/schnell: 19 + 38
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
