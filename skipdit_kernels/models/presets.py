"""The twelve official DiT sizes: (depth, hidden_size, patch_size, num_heads)."""

from __future__ import annotations

_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}

PRESETS: dict[str, dict[str, int]] = {
    f"DiT-{size}/{patch}": {"depth": depth, "hidden_size": hidden, "patch_size": patch, "num_heads": heads}
    for size, (depth, hidden, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}


def preset_config(name: str) -> dict[str, int]:
    key = name.strip()
    if key.endswith("-skip"):
        key = key[: -len("-skip")]
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return dict(PRESETS[key])


def preset_for(depth: int, hidden_size: int, patch_size: int) -> str | None:
    for name, cfg in PRESETS.items():
        if (cfg["depth"], cfg["hidden_size"], cfg["patch_size"]) == (depth, hidden_size, patch_size):
            return name
    return None
