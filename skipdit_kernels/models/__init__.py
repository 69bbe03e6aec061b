from .dit import DiT, SkipDiT
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .presets import PRESETS

__all__ = ["CheckpointError", "DiT", "PRESETS", "SkipDiT", "load_checkpoint", "save_checkpoint"]
