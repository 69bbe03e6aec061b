"""Latte (``LatteTransformer3DModel``, ``LattePipeline``): a unit is the (spatial, temporal) block
pair i, no long skips, so a cached step keeps the middle pairs' residual (in the spatial layout the
pair's spatial block takes; the forward's reshapes around a skipped pair cancel)."""

from __future__ import annotations

from diffusers import LatteTransformer3DModel

from ....cache import SkipCache
from ..family import Family

FAMILY = Family(
    transformer=LatteTransformer3DModel,
    pipelines=("LattePipeline",),
    blocks=("transformer_blocks", "temporal_transformer_blocks"),
    paired=True,
    default_cache=SkipCache.preset("video"),  # interval 2, 1 shallow pair, full while t >= 700, reset at t <= 50
    reference_depth=28,  # Latte-1
    unit="(spatial, temporal) block pair",
    source="the Skip-DiT release",
)
