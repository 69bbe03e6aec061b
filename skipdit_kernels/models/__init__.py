from .dit import DiT, SkipDiT
from .latte import LATTE_PRESETS, LatteSkip
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .presets import PRESETS

__all__ = [
    "CheckpointError",
    "DiT",
    "LATTE_PRESETS",
    "LatteSkip",
    "LatteT2VSkip",
    "PRESETS",
    "SkipDiT",
    "load_checkpoint",
    "save_checkpoint",
]


def __getattr__(name: str):
    # Text-to-video Latte-skip builds on diffusers, which stays optional: imported on first use.
    if name == "LatteT2VSkip":
        from ..integrations.latte_t2v import LatteT2VSkip

        return LatteT2VSkip
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
