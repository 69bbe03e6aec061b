"""Loading official DiT / Skip-DiT checkpoints (and ours) without unpickling arbitrary objects.

``.pt`` / ``.pth`` go through ``torch.load(weights_only=True)``: tensors, containers and plain
values only (plus ``argparse.Namespace``, which DiT's train.py stores as ``"args"``). A raw
state_dict, or one under ``"ema"`` (preferred, as DiT's sample.py does) or ``"model"``, is accepted.
``.safetensors`` files are read with safetensors. Checkpoints written by ``save_checkpoint`` also
carry the constructor arguments (safetensors metadata, or a ``"config"`` entry), which settle what
shapes cannot (the number of heads of a non-preset size).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from typing import Mapping

import torch

from .dit import DiT, SkipDiT
from .latte import LATTE_PRESETS, LatteSkip, latte_preset_for
from .presets import PRESETS, preset_for


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""


_CONFIG_KEY = "skipdit_config"


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state_dict, saved constructor arguments or None)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        config = json.loads(metadata[_CONFIG_KEY]) if _CONFIG_KEY in metadata else None
        return load_file(path), config
    if not path.endswith((".pt", ".pth", ".bin", ".ckpt")):
        raise CheckpointError(f"unsupported checkpoint type {path!r}: expected .pt, .pth or .safetensors")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError and friends: refuse rather than execute code
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor checkpoint "
            f"(torch.load with weights_only=True failed: {exc})"
        ) from exc
    config = obj.get(_CONFIG_KEY) if isinstance(obj, Mapping) else None
    return _unwrap(obj, path), dict(config) if isinstance(config, Mapping) else None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[0]


def _unwrap(obj: object, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("ema", "model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return {k.removeprefix("module."): v for k, v in tensors.items()}
    raise CheckpointError(f"{path} holds no state_dict (expected tensors, or a dict with 'ema' or 'model')")


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> tuple[type[torch.nn.Module], dict]:
    """The model class and constructor arguments that a state_dict was saved from."""
    if "temp_embed" in state_dict:
        return _infer_latte_config(state_dict)
    try:
        hidden, in_channels, patch, _ = state_dict["x_embedder.proj.weight"].shape
        num_patches = state_dict["pos_embed"].shape[1]
        depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
        mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
        out_features = state_dict["final_layer.linear.weight"].shape[0]
        table_rows = state_dict["y_embedder.embedding_table.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"not a DiT state_dict: cannot infer its shape ({exc!r} missing)") from exc
    out_channels = out_features // (patch * patch)
    name = preset_for(depth, hidden, patch)
    config = dict(
        input_size=int(math.isqrt(num_patches)) * patch,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=PRESETS[name]["num_heads"] if name else max(1, hidden // 64),
        mlp_ratio=mlp_hidden / hidden,
        # An official checkpoint trained with label dropout has a null-class row.
        num_classes=table_rows - 1,
        class_dropout_prob=0.1,
        learn_sigma=out_channels == 2 * in_channels,
    )
    cls = SkipDiT if any(k.startswith("skip_linears.") for k in state_dict) else DiT
    return cls, config


def _infer_latte_config(state_dict: Mapping[str, torch.Tensor]) -> tuple[type[LatteSkip], dict]:
    """An official class-to-video Latte-skip state_dict (``Latte_skip``: ucf101 with class labels,
    sky / taichi / ffs unconditional)."""
    if "text_embedding_projection.1.weight" in state_dict:
        raise CheckpointError("a Latte checkpoint with text_embedding_projection (extras=78) is not supported")
    if not any(k.startswith("skip_linears.") for k in state_dict):
        raise CheckpointError("a Latte checkpoint without long skips (plain Latte) is not supported; LatteSkip needs skip_linears")
    try:
        hidden, in_channels, patch, _ = state_dict["x_embedder.proj.weight"].shape
        num_patches = state_dict["pos_embed"].shape[1]
        num_frames = state_dict["temp_embed"].shape[1]
        depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
        mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
        out_features = state_dict["final_layer.linear.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"not a Latte-skip state_dict: cannot infer its shape ({exc!r} missing)") from exc
    table = state_dict.get("y_embedder.embedding_table.weight")
    name = latte_preset_for(depth, hidden, patch)
    config = dict(
        input_size=int(math.isqrt(num_patches)) * patch,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=LATTE_PRESETS[name]["num_heads"] if name else max(1, hidden // 64),
        mlp_ratio=mlp_hidden / hidden,
        num_frames=num_frames,
        learn_sigma=out_features // (patch * patch) == 2 * in_channels,
        extras=1 if table is None else 2,
    )
    if table is not None:  # trained with label dropout: a null-class row (ucf101: 101 classes, 102 rows)
        config.update(num_classes=table.shape[0] - 1, class_dropout_prob=0.1)
    return LatteSkip, config


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or misshaped:
        lines = ["checkpoint does not fit the model:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = keys[:20] + ([f"... and {len(keys) - 20} more"] if len(keys) > 20 else [])
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(shown))
        raise CheckpointError("\n".join(lines))


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None, **overrides) -> torch.nn.Module:
    """Load a checkpoint into ``model``, or build the model it was saved from (preset and class
    inferred from the shapes: DiT, SkipDiT, or LatteSkip when it has a ``temp_embed``;
    ``overrides`` adjust constructor arguments). Returns the model."""
    state_dict, saved_config = read_checkpoint(path)
    if model is None:
        cls, config = infer_config(state_dict)
        model = cls(**{**config, **(saved_config or {}), **overrides})
    check_state_dict(model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    return model


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save a model's weights and constructor arguments as .safetensors (or .pt otherwise)."""
    path = os.fspath(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = getattr(model, "config", None)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        metadata = dict(metadata or {})
        if config is not None:
            metadata[_CONFIG_KEY] = json.dumps(config)
        save_file(state, path, metadata=metadata)
    else:
        torch.save({"model": state, _CONFIG_KEY: dict(config or {}), **({"metadata": metadata} if metadata else {})}, path)
