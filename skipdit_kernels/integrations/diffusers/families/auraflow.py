"""AuraFlow (``AuraFlowTransformer2DModel``): joint (MMDiT) blocks then single-stream blocks; the
forward joins the two streams into one sequence between the lists, so a cached step keeps a residual
per list the middle spans: both streams' where the joint list ends, the joint sequence's at the
boundary. The pipeline passes sigma (t / 1000). Batch CFG."""

from __future__ import annotations

from diffusers import AuraFlowTransformer2DModel

from ....cache import SkipCache
from ..family import TEXT_AND_IMAGE, Family, Timestep

FAMILY = Family(
    transformer=AuraFlowTransformer2DModel,
    pipelines=("AuraFlowPipeline",),
    blocks=("joint_transformer_blocks", "single_transformer_blocks"),
    io={"joint_transformer_blocks": TEXT_AND_IMAGE},
    timestep=Timestep(scale=1.0),
    default_cache=SkipCache.preset("video", forecast="auto"),
    reference_depth=36,  # AuraFlow 0.3: 4 + 32
    source="the Skip-DiT release's text-to-video schedule, forecast by the scheduler",
)
