"""skipdit-kernels: drop-in DiT / Skip-DiT modules, Skip-Cache, fused kernels and samplers.

The names below load on first use (PEP 562), so ``import skipdit_kernels.cli`` and
``skipdit --help`` do not import torch."""

import importlib
import importlib.util

__version__ = "0.1.0"

_LAZY = {
    "SkipCache": ".cache",
    "enable_skip_cache": ".cache",
    "disable_skip_cache": ".cache",
    "sample": ".sampling",
    "CheckpointError": ".models",
    "DiT": ".models",
    "SkipDiT": ".models",
    "LatteSkip": ".models",
    "load_checkpoint": ".models",
    "save_checkpoint": ".models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # sk.ops, sk.sampling, ... as before
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
