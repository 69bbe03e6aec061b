"""Loading official DiT / Skip-DiT checkpoints (and ours) without unpickling arbitrary objects.

The format is read from the file's content, not its name: a torch checkpoint (zip, or the legacy
pickle) goes through ``torch.load(weights_only=True)`` (tensors, containers and plain values only,
plus ``argparse.Namespace``, which DiT's train.py stores as ``"args"``); a safetensors file through
safetensors. A raw state_dict, or one under ``"ema"`` (preferred, as DiT's sample.py does) or
``"model"``, is accepted.

Building the model a checkpoint was saved from: the shapes give the class, sizes, MLP ratio and
learned sigma. What they cannot give (the number of attention heads; whether the label table's last
row is a null class) comes, in order, from the explicit arguments of ``load_checkpoint``, from the
config the checkpoint carries (``save_checkpoint``'s ``"skipdit_config"``, ``skipdit train``'s
``"config"``, DiT's ``args.model``), or, for the twelve official sizes only, from the official
models (the preset's heads, a null-class row). Otherwise ``CheckpointError`` names what is needed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import pickle
import re
import struct
import zipfile
from typing import Mapping

import torch

from .dit import DiT, SkipDiT
from .latte import LATTE_PRESETS, LatteSkip, latte_preset_for
from .presets import PRESETS, preset_for


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""


_CONFIG_KEY = "skipdit_config"
_CONSTRUCTOR_ARGS = frozenset().union(*(inspect.signature(cls.__init__).parameters for cls in (DiT, LatteSkip))) - {
    "self"
}
_NOT_A_CHECKPOINT = "is not a torch checkpoint or safetensors file"
_MAX_KEYS_SHOWN = 10


def _file_format(path: str) -> str | None:
    """ "safetensors", "torch" or None, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = os.path.getsize(path)
    if len(head) == 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"  # 8-byte little-endian header length, then a JSON header
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(name.endswith("data.pkl") for name in z.namelist()):
                return "torch"
        return None
    if head[:1] == b"\x80":  # a pickle (torch's legacy format)
        return "torch"
    return None


def _read_torch(path: str) -> object:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the legacy format cannot be listed: torch.load below still refuses code
        unsafe = []
    unsafe = [g for g in unsafe if g != "argparse.Namespace"]
    if unsafe:
        shown = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
        raise CheckpointError(
            f"refusing to load {path}: besides tensors it holds Python objects ({shown}) that loading "
            "would construct, which can run code; save its state_dict (or a .safetensors file) instead"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
            raise CheckpointError(
                f"refusing to load {path}: besides tensors it holds Python objects that loading would "
                "construct, which can run code; save its state_dict (or a .safetensors file) instead"
            ) from None
        raise CheckpointError(f"{path} {_NOT_A_CHECKPOINT} (a damaged or truncated torch file?)") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state_dict, the constructor arguments the checkpoint carries, or None)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    kind = _file_format(path)
    if kind is None:
        raise CheckpointError(f"{path} {_NOT_A_CHECKPOINT}")
    if kind == "safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
            state_dict = load_file(path)
        except Exception:
            raise CheckpointError(f"{path} {_NOT_A_CHECKPOINT} (a damaged or truncated safetensors file?)") from None
        try:
            config = json.loads(metadata[_CONFIG_KEY]) if _CONFIG_KEY in metadata else None
        except ValueError:
            raise CheckpointError(f"{path}: its {_CONFIG_KEY!r} metadata is not JSON") from None
        return state_dict, _valid_config(config, path)
    obj = _read_torch(path)
    return _unwrap(obj, path), _carried_config(obj, path)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[0]


def _valid_config(config: object, path: str) -> dict | None:
    if config is None:
        return None
    if not isinstance(config, Mapping) or not set(config) <= _CONSTRUCTOR_ARGS:
        extra = sorted(set(config) - _CONSTRUCTOR_ARGS) if isinstance(config, Mapping) else type(config).__name__
        raise CheckpointError(f"{path}: its model config has entries the models do not take: {extra}")
    return dict(config) or None


def _carried_config(obj: object, path: str) -> dict | None:
    if not isinstance(obj, Mapping):
        return None
    if _CONFIG_KEY in obj:
        return _valid_config(obj[_CONFIG_KEY], path)
    config = obj.get("config")  # skipdit train's train_state.pt
    if isinstance(config, Mapping) and config and set(config) <= _CONSTRUCTOR_ARGS:
        return dict(config)
    args = obj.get("args")  # DiT's train.py: args.model names the preset
    model_name = getattr(args, "model", None)
    if isinstance(model_name, str) and model_name.removesuffix("-skip") in PRESETS:
        return {"num_heads": PRESETS[model_name.removesuffix("-skip")]["num_heads"]}
    return None


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


def _shapes(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """What the shapes say: sizes, class, label-table rows, learned sigma."""
    try:
        hidden, in_channels, patch, _ = state_dict["x_embedder.proj.weight"].shape
        num_patches = state_dict["pos_embed"].shape[1]
        depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
        mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
        out_features = state_dict["final_layer.linear.weight"].shape[0]
        table_rows = state_dict["y_embedder.embedding_table.weight"].shape[0] if "temp_embed" not in state_dict else 0
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"not a DiT state_dict: cannot infer its shape ({exc!r} missing)") from exc
    grid = math.isqrt(num_patches)
    out_channels, rest = divmod(out_features, patch * patch)
    if grid * grid != num_patches or rest or out_channels not in (in_channels, 2 * in_channels):
        raise CheckpointError(
            f"not a DiT state_dict: {num_patches} positions, {out_features} output features for patch {patch} "
            f"and {in_channels} input channels"
        )
    return dict(
        cls=LatteSkip if "temp_embed" in state_dict else SkipDiT if any(k.startswith("skip_linears.") for k in state_dict) else DiT,
        input_size=grid * patch, patch_size=patch, in_channels=in_channels, hidden_size=hidden, depth=depth,
        mlp_ratio=mlp_hidden / hidden, learn_sigma=out_channels == 2 * in_channels, table_rows=table_rows,
    )  # fmt: skip


def infer_config(
    state_dict: Mapping[str, torch.Tensor], known: Mapping | None = None
) -> tuple[type[torch.nn.Module], dict]:
    """The model class and constructor arguments of a state_dict. ``known``: constructor arguments
    given (explicitly, or carried by the checkpoint); they settle what the shapes cannot. Raises
    CheckpointError naming what is still unknown."""
    known = dict(known or {})
    if "temp_embed" in state_dict:
        return _infer_latte_config(state_dict, known)
    s = _shapes(state_dict)
    official = preset_for(s["depth"], s["hidden_size"], s["patch_size"])
    config = {
        k: s[k] for k in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "mlp_ratio", "learn_sigma")
    }
    needs = []
    if "num_heads" in known:
        config["num_heads"] = known["num_heads"]
    elif official:
        config["num_heads"] = PRESETS[official]["num_heads"]
    else:
        needs.append("num_heads")
    rows = s["table_rows"]
    if "num_classes" in known:
        null_rows = rows - known["num_classes"]
        if null_rows not in (0, 1):
            raise CheckpointError(
                f"the checkpoint's label table has {rows} rows: it cannot hold num_classes={known['num_classes']}"
            )
        config["num_classes"] = known["num_classes"]
        config["class_dropout_prob"] = known.get("class_dropout_prob", 0.1 if null_rows else 0.0)
        if bool(null_rows) != (config["class_dropout_prob"] > 0):
            raise CheckpointError(
                f"the checkpoint's label table has {rows} rows: num_classes={known['num_classes']} with "
                f"class_dropout_prob={config['class_dropout_prob']} needs {known['num_classes'] + (config['class_dropout_prob'] > 0)}"
            )
    elif "class_dropout_prob" in known:
        config["class_dropout_prob"] = known["class_dropout_prob"]
        config["num_classes"] = rows - int(known["class_dropout_prob"] > 0)
    elif official:  # the official models: trained with label dropout, the last row is the null class
        config["num_classes"], config["class_dropout_prob"] = rows - 1, 0.1
    else:
        needs.append("num_classes (or class_dropout_prob)")
    if needs:
        raise CheckpointError(
            f"cannot tell {' and '.join(needs)} from the weights of a {s['cls'].__name__} with hidden "
            f"{s['hidden_size']}, depth {s['depth']} (not an official size), and the checkpoint carries no "
            f"config: pass them, e.g. load_checkpoint(path, {', '.join(n.split(' ')[0] + '=...' for n in needs)})"
        )
    return s["cls"], {**config, **known}


def _infer_latte_config(state_dict: Mapping[str, torch.Tensor], known: dict) -> tuple[type[LatteSkip], dict]:
    """An official class-to-video Latte-skip state_dict (``Latte_skip``: ucf101 with class labels,
    sky / taichi / ffs unconditional); ``known`` as in ``infer_config``."""
    if "text_embedding_projection.1.weight" in state_dict:
        raise CheckpointError("a Latte checkpoint with text_embedding_projection (extras=78) is not supported")
    if not any(k.startswith("skip_linears.") for k in state_dict):
        raise CheckpointError(
            "a Latte checkpoint without long skips (plain Latte) is not supported; LatteSkip needs skip_linears"
        )
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
        mlp_ratio=mlp_hidden / hidden,
        num_frames=num_frames,
        learn_sigma=out_features // (patch * patch) == 2 * in_channels,
        extras=1 if table is None else 2,
    )
    if table is not None:  # trained with label dropout: a null-class row (ucf101: 101 classes, 102 rows)
        config.update(num_classes=table.shape[0] - 1, class_dropout_prob=0.1)
    if "num_heads" not in known:
        if name is None:
            raise CheckpointError(
                f"cannot tell num_heads from the weights of a LatteSkip with hidden {hidden}, depth {depth} (not an "
                "official size), and the checkpoint carries no config: pass it, e.g. load_checkpoint(path, num_heads=...)"
            )
        config["num_heads"] = LATTE_PRESETS[name]["num_heads"]
    return LatteSkip, {**config, **known}


def _summary(cls_name: str, hidden, depth, heads=None) -> str:
    return f"hidden {hidden}, depth {depth}" + (f", {heads} heads" if heads is not None else "") + f", {cls_name}"


def _checkpoint_summary(state_dict, config: Mapping | None, with_heads: bool) -> str:
    try:
        s = _shapes(state_dict)
    except CheckpointError:
        return "not a DiT state_dict"
    heads = (config or {}).get("num_heads") if with_heads else None
    return _summary(s["cls"].__name__, s["hidden_size"], s["depth"], heads)


def _model_summary(model: torch.nn.Module, with_heads: bool) -> str:
    cfg = getattr(model, "config", None) or {}
    heads = cfg.get("num_heads") if with_heads else None
    return _summary(type(model).__name__, cfg.get("hidden_size", "?"), cfg.get("depth", "?"), heads)


def _key_lines(title: str, keys: list[str]) -> list[str]:
    shown = keys[:_MAX_KEYS_SHOWN]
    lines = [f"{title} ({len(keys)}):"] + [f"    {k}" for k in shown]
    if len(keys) > len(shown):
        lines.append(f"    ... and {len(keys) - len(shown)} more")
    return lines


def check_state_dict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], config: Mapping | None = None
) -> None:
    """Raise CheckpointError when ``state_dict`` (with the ``config`` it carries) does not fit
    ``model``: a summary line (checkpoint vs model), then the missing, unexpected and mis-shaped
    keys, one per line, at most ten of each."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    model_config = getattr(model, "config", None) or {}
    heads_differ = bool(config) and "num_heads" in config and config["num_heads"] != model_config.get("num_heads")
    if missing or unexpected or misshaped or heads_differ:
        lines = [
            f"checkpoint does not fit the model: checkpoint: {_checkpoint_summary(state_dict, config, heads_differ)}; "
            f"model: {_model_summary(model, heads_differ)}"
        ]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                lines += _key_lines(title, keys)
        raise CheckpointError("\n".join(lines))


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None, **config) -> torch.nn.Module:
    """Load a checkpoint into ``model``, or build the model it was saved from (DiT, SkipDiT, or
    LatteSkip when it has a ``temp_embed``). Returns the model.

    ``config``: constructor arguments (e.g. ``num_heads=4``) that override the checkpoint's own;
    needed only for what neither its shapes nor its config settle (see the module docstring).
    Raises CheckpointError for a file that is not a checkpoint, one that holds code, a state_dict
    that does not fit, or a config that cannot be settled."""
    state_dict, carried = read_checkpoint(path)
    if model is not None and config:
        raise ValueError("load_checkpoint: pass either a model or constructor arguments, not both")
    known = {**(carried or {}), **config}
    if model is None:
        cls, inferred = infer_config(state_dict, known)
        model = cls(**inferred)
    check_state_dict(model, state_dict, known)
    model.load_state_dict(state_dict, strict=True)
    return model


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save a model's weights and constructor arguments as .safetensors (or .pt otherwise)."""
    path = os.fspath(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = getattr(model, "config", None)
    if path.endswith(".safetensors"):
        from ..io.files import save_safetensors

        metadata = dict(metadata or {})
        if config is not None:
            metadata[_CONFIG_KEY] = json.dumps(config)
        save_safetensors(state, path, metadata=metadata)
    else:
        torch.save(
            {"model": state, _CONFIG_KEY: dict(config or {}), **({"metadata": metadata} if metadata else {})}, path
        )
