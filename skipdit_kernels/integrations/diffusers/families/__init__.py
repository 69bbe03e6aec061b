"""One module per diffusers transformer family, each declaring ``FAMILY`` (a ``..family.Family``).
Every module here is loaded, in name order; a family whose diffusers classes this diffusers lacks is
left out and listed in ``UNAVAILABLE`` with the reason."""

from __future__ import annotations

import importlib
import pkgutil

from ..family import Family

FAMILIES: list[Family] = []
UNAVAILABLE: dict[str, str] = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    try:
        _module = importlib.import_module(f"{__name__}.{_info.name}")
    except ImportError as exc:
        if not (exc.name or "").startswith("diffusers"):
            raise
        UNAVAILABLE[_info.name] = str(exc)
        continue
    FAMILIES.append(_module.FAMILY)
