"""PixArt-alpha and PixArt-sigma (``PixArtTransformer2DModel``): no long skips, so a cached step
keeps the middle blocks' residual. The default is the Skip-DiT release's text-to-image/video
schedule (no published PixArt one), scaled from PixArt's 28 blocks."""

from __future__ import annotations

from diffusers import PixArtTransformer2DModel

from ....cache import SkipCache
from ..family import Family

FAMILY = Family(
    transformer=PixArtTransformer2DModel,
    pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
    blocks=("transformer_blocks",),
    default_cache=SkipCache.preset("video"),  # interval 2, 1 shallow block, full while t >= 700, reset at t <= 50
    reference_depth=28,
    source="the Skip-DiT release's Hunyuan-DiT/video schedule",
)
