"""skipdit-kernels: drop-in DiT / Skip-DiT modules, Skip-Cache, fused kernels and samplers."""
__version__ = "0.1.0"

from .cache import SkipCache
from .models import DiT, SkipDiT

__all__ = ["DiT", "SkipDiT", "SkipCache", "__version__"]
