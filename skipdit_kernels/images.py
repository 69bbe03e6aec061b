"""Images out of latents: optional VAE decoding and a dependency-free PNG grid writer."""
from __future__ import annotations

import math
import os
import struct
import zlib

import numpy as np
import torch

SD_VAE_SCALE = 0.18215  # the latent scaling of DiT's sd-vae-ft-* autoencoders


def load_vae(vae_dir: str | os.PathLike, device: torch.device | str = "cpu") -> torch.nn.Module:
    """diffusers' AutoencoderKL from a local folder (nothing is downloaded), in eval mode on ``device``."""
    vae_dir = os.fspath(vae_dir)
    if not os.path.isdir(vae_dir):
        raise FileNotFoundError(
            f"VAE folder not found: {vae_dir!r}. Pass a local copy of an AutoencoderKL "
            f"(e.g. stabilityai/sd-vae-ft-ema saved with save_pretrained); nothing is downloaded."
        )
    try:
        from diffusers.models import AutoencoderKL
    except ImportError as exc:
        raise ImportError("decoding latents needs diffusers: pip install diffusers") from exc
    return AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).to(device).eval()


def decode_latents(latents: torch.Tensor, vae: "str | os.PathLike | torch.nn.Module", batch_size: int = 8) -> torch.Tensor:
    """Decode DiT latents (N, 4, h, w) to images (N, 3, 8h, 8w) in about [-1, 1] with an AutoencoderKL,
    given loaded or as a local folder (``load_vae``)."""
    if isinstance(vae, (str, os.PathLike)):
        vae = load_vae(vae, latents.device)
    with torch.no_grad():
        chunks = [vae.decode(chunk / SD_VAE_SCALE).sample for chunk in latents.split(batch_size)]
    return torch.cat(chunks)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] into one (H', W', C) uint8 array, ``nrow`` per row."""
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = pixels[k]
    return grid


def write_png(path: str | os.PathLike, pixels: np.ndarray, scale: int = 1) -> None:
    """Write an (H, W) / (H, W, 1|3|4) uint8 array as PNG, optionally upscaled by pixel repetition."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w, c = pixels.shape
    color_type = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 1) -> None:
    write_png(path, make_grid(images, nrow), scale=scale)
