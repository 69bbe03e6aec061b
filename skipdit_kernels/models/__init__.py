from .dit import DiT, SkipDiT
from .presets import PRESETS

__all__ = ["DiT", "SkipDiT", "PRESETS"]
