"""Training: the data (``data``: bundled digits, image and video folders, latent shards), Skip-DiT's
conversion of a pretrained DiT or Latte (``convert``) and the training loop (``loop``: DiT's recipe,
EMA, exact resume, DDP/FSDP). Imports torch; the CLI loads it only inside ``skipdit train`` and
``skipdit convert``."""

from .convert import (
    Conversion,
    convert_checkpoint,
    convert_diffusers_dit,
    convert_diffusers_latte,
    convert_dit,
    convert_latte,
)
from .data import encode_latents, load_image_folder, load_latents, load_video_folder
from .loop import TrainResult, build_model, train

__all__ = [
    "Conversion",
    "TrainResult",
    "build_model",
    "convert_checkpoint",
    "convert_diffusers_dit",
    "convert_diffusers_latte",
    "convert_dit",
    "convert_latte",
    "encode_latents",
    "load_image_folder",
    "load_latents",
    "load_video_folder",
    "train",
]
