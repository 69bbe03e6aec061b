"""The models bundled in the package (``skipdit_kernels/assets``), trained on CPU on the 16x16
digits (see bench/training/train_bundled.sh and bench/results/training/):

- ``"skipdit"``: SkipDiT, input 16, patch 4, hidden 96, depth 8, heads 4, 10 classes, learned sigma,
  class dropout 0.1 (so classifier-free guidance works); EMA weights, stored fp16, loaded fp32;
- ``"dit"``: a DiT of the identical size, trained with the identical recipe and seed;
- ``"classifier"``: ``metrics.DigitClassifier``; its 64-d penultimate features give Frechet distances;
- ``"latte"``: a class-to-video LatteSkip, 8 frames of 16x16, patch 4, hidden 64, 4 (spatial,
  temporal) pairs, heads 4, 10 classes, learned sigma, class dropout 0.1, trained on 12x12 digits
  moving on a 16x16 canvas (``data.moving_digits``; bench/training/train_latte.py);
  EMA weights, stored fp16, loaded fp32.
"""

from __future__ import annotations

import json
import os

import torch

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
CONFIG_KEY = "skipdit_config"  # the key save_checkpoint / load_checkpoint use
FILES = {
    "skipdit": "skipdit.safetensors",
    "dit": "dit.safetensors",
    "classifier": "classifier.safetensors",
    "latte": "latte.safetensors",
}


def asset_path(name: str) -> str:
    if name not in FILES:
        raise ValueError(f"unknown bundled model {name!r}; choose from {sorted(FILES)}")
    path = os.path.join(ASSETS, FILES[name])
    if not os.path.exists(path):
        raise FileNotFoundError(f"bundled model file missing: {path} (the package was installed without its assets?)")
    return path


def load_bundled(name: str = "skipdit", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A bundled model in eval mode: "skipdit" / "dit" / "latte" (through ``load_checkpoint``) or "classifier"."""
    path = asset_path(name)
    if name == "classifier":
        from safetensors import safe_open
        from safetensors.torch import load_file

        from .metrics import DigitClassifier

        with safe_open(path, "pt") as f:
            config = json.loads((f.metadata() or {}).get(CONFIG_KEY, "{}"))
        model = DigitClassifier(**config)
        model.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    else:
        from ..models import load_checkpoint

        model = load_checkpoint(path)
    return model.to(dtype).eval()


def save_half(model: torch.nn.Module, path: str, metadata: dict | None = None) -> None:
    """Save a model with fp16 weights (fp32 position embeddings); the config goes into the metadata."""
    from ..io.files import save_safetensors

    positions = ("pos_embed", "temp_embed")
    state = {
        k: (v.detach().half() if v.is_floating_point() and k not in positions else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {CONFIG_KEY: json.dumps(getattr(model, "config", {}))}
    meta.update(metadata or {})
    save_safetensors(state, path, metadata=meta)
