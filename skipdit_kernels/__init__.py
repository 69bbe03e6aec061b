"""skipdit-kernels: drop-in DiT / Skip-DiT modules, Skip-Cache, fused kernels and samplers.

The names below load on first use (PEP 562), so ``import skipdit_kernels.cli`` and
``skipdit --help`` do not import torch."""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "SkipCache": ".cache",
    "sample": ".sampling",
    "CheckpointError": ".models",
    "DiT": ".models",
    "SkipDiT": ".models",
    "load_checkpoint": ".models",
    "save_checkpoint": ".models",
}

__all__ = ["CheckpointError", "DiT", "SkipCache", "SkipDiT", "__version__", "load_checkpoint", "sample", "save_checkpoint"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
