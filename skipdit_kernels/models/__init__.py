"""Model families (text-to-video Latte-skip builds on diffusers: ``skipdit_kernels.integrations.latte_t2v``)."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .dit import DiT, SkipDiT
from .latte import LATTE_PRESETS, LatteSkip
from .presets import PRESETS

__all__ = [
    "CheckpointError",
    "DiT",
    "LATTE_PRESETS",
    "LatteSkip",
    "PRESETS",
    "SkipDiT",
    "load_checkpoint",
    "save_checkpoint",
]
