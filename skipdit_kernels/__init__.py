"""skipdit-kernels: drop-in DiT / Skip-DiT modules, Skip-Cache, fused kernels and samplers."""
__version__ = "0.1.0"

from .cache import SkipCache, disable_skip_cache, enable_skip_cache
from .sampling import sample
from .models import CheckpointError, DiT, SkipDiT, load_checkpoint, save_checkpoint

__all__ = [
    "CheckpointError",
    "DiT",
    "SkipCache",
    "SkipDiT",
    "__version__",
    "disable_skip_cache",
    "enable_skip_cache",
    "load_checkpoint",
    "sample",
    "save_checkpoint",
]
