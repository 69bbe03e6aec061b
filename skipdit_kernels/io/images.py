"""Images out of latents: optional VAE decoding, PNG grids and a labelled side-by-side (Pillow)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

SD_VAE_SCALE = 0.18215  # the latent scaling of DiT's sd-vae-ft-* autoencoders


def check_vae(vae_dir: str | os.PathLike) -> None:
    """Raise before any work if ``vae_dir`` cannot be decoded with: FileNotFoundError when it is not
    a folder holding an AutoencoderKL's config.json, ImportError when diffusers is not installed."""
    import importlib.util

    vae_dir = os.fspath(vae_dir)
    if not os.path.isdir(vae_dir):
        raise FileNotFoundError(
            f"VAE folder not found: {vae_dir}. Pass a local copy of an AutoencoderKL "
            f"(e.g. stabilityai/sd-vae-ft-ema saved with save_pretrained); nothing is downloaded."
        )
    if not os.path.isfile(os.path.join(vae_dir, "config.json")):
        raise FileNotFoundError(f"{vae_dir} has no config.json: not an AutoencoderKL folder written by save_pretrained")
    if importlib.util.find_spec("diffusers") is None:
        raise ImportError("decoding latents with --vae needs diffusers, which is not installed: pip install diffusers")


def load_vae(vae_dir: str | os.PathLike, device: torch.device | str = "cpu") -> torch.nn.Module:
    """diffusers' AutoencoderKL from a local folder (nothing is downloaded), in eval mode on ``device``.
    Errors as ``check_vae``."""
    check_vae(vae_dir)
    from diffusers.models import AutoencoderKL

    return AutoencoderKL.from_pretrained(os.fspath(vae_dir), local_files_only=True).to(device).eval()


def decode_latents(
    latents: torch.Tensor, vae: "str | os.PathLike | torch.nn.Module", batch_size: int = 8
) -> torch.Tensor:
    """Decode DiT latents (N, 4, h, w) to images (N, 3, 8h, 8w) in about [-1, 1] with an AutoencoderKL,
    given loaded or as a local folder (``load_vae``); video latents (N, F, 4, h, w) frame by frame to
    (N, F, 3, 8h, 8w)."""
    if latents.dim() == 5:
        n, frames = latents.shape[:2]
        images = decode_latents(latents.flatten(0, 1), vae, batch_size)
        return images.unflatten(0, (n, frames))
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


def _image(pixels: np.ndarray, scale: int = 1):
    from PIL import Image

    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 1) -> None:
    """Write (N, C, H, W) images in [-1, 1] as one PNG grid, upscaled ``scale`` times (nearest neighbour)."""
    _image(make_grid(images, nrow), scale).save(os.fspath(path))


VIDEO_FORMATS = (".gif", ".mp4")


def check_video_path(path: str | os.PathLike) -> None:
    """ValueError unless ``path`` ends in .gif or .mp4; ImportError for .mp4 without imageio's ffmpeg."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in VIDEO_FORMATS:
        raise ValueError(f"a video is written as {' or '.join(VIDEO_FORMATS)}, got {os.fspath(path)!r}")
    if suffix == ".mp4":
        import importlib.util

        if importlib.util.find_spec("imageio") is None or importlib.util.find_spec("imageio_ffmpeg") is None:
            raise ImportError("writing .mp4 needs imageio with ffmpeg: pip install 'imageio[ffmpeg]' (or write .gif)")


def save_video_grid(
    videos: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 1, fps: float = 8.0
) -> None:
    """Write (N, F, C, H, W) videos in [-1, 1] as one animated grid of F frames: a looping GIF (PIL) or
    an MP4 (imageio with ffmpeg), by the suffix of ``path``; ``fps`` frames per second."""
    check_video_path(path)
    if videos.dim() != 5:
        raise ValueError(f"videos must be (N, F, C, H, W), got {tuple(videos.shape)}")
    frames = [_image(make_grid(videos[:, f], nrow), scale).convert("RGB") for f in range(videos.shape[1])]
    if os.fspath(path).lower().endswith(".gif"):
        frames[0].save(os.fspath(path), save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    else:
        import imageio

        even = [np.asarray(f)[: f.height // 2 * 2, : f.width // 2 * 2] for f in frames]  # yuv420 needs even sides
        imageio.mimwrite(os.fspath(path), even, fps=fps)


def save_comparison(
    panels: list[tuple[str, torch.Tensor]], path: str | os.PathLike, nrow: int | None = None, scale: int = 1,
    magnify: float = 10.0, row_labels: list[str] | None = None,
) -> None:  # fmt: skip
    """One PNG of labelled panels side by side: each (label, images) of ``panels``, then
    ``|last - first|`` magnified ``magnify`` times (white = a difference of 2/magnify or more, i.e.
    the full [-1, 1] range at magnify 1). Images are (N, C, H, W) in [-1, 1], all of one shape;
    ``row_labels`` (one per grid row) are written left of the first panel."""
    comparison_image(panels, nrow, scale, magnify, row_labels).save(os.fspath(path))


def save_comparison_gif(
    panels: list[tuple[str, torch.Tensor]], path: str | os.PathLike, nrow: int | None = None, scale: int = 1,
    magnify: float = 10.0, frame_ms: int = 150, row_labels: list[str] | None = None,
) -> None:  # fmt: skip
    """``save_comparison`` for videos: (N, F, C, H, W) in [-1, 1] per panel, written as an animated
    GIF of F frames (``frame_ms`` milliseconds each, looping), frame f comparing frame f of every video."""
    shapes = {tuple(videos.shape) for _, videos in panels}
    if len(shapes) != 1 or len(next(iter(shapes))) != 5:
        raise ValueError(f"save_comparison_gif needs panels of one (N, F, C, H, W) shape, got shapes {sorted(shapes)}")
    frames = [
        comparison_image([(label, videos[:, f]) for label, videos in panels], nrow, scale, magnify, row_labels)
        for f in range(next(iter(shapes))[1])
    ]
    frames[0].save(os.fspath(path), save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)


def comparison_image(
    panels: list[tuple[str, torch.Tensor]],
    nrow: int | None = None,
    scale: int = 1,
    magnify: float = 10.0,
    row_labels: list[str] | None = None,
):
    """The picture ``save_comparison`` writes, as an RGB PIL image (``row_labels``: one per grid row,
    in a margin left of the first panel, centred on its row)."""
    from PIL import Image, ImageDraw, ImageFont

    shapes = {tuple(images.shape) for _, images in panels}
    if len(panels) < 2 or len(shapes) != 1:
        raise ValueError(f"save_comparison needs two or more panels of one shape, got shapes {sorted(shapes)}")
    first, last = panels[0][1], panels[-1][1]
    difference = ((last.float() - first.float()).abs() * magnify - 1.0).clamp(-1.0, 1.0)
    texts = [label for label, _ in panels] + [
        f"|{panels[-1][0].split(',')[0]} - {panels[0][0].split(',')[0]}| x{magnify:g}"
    ]
    images = [_image(make_grid(x, nrow), scale).convert("RGB") for x in [*(p for _, p in panels), difference]]
    font = ImageFont.load_default(size=max(12, min(24, images[0].width // 16)))
    band = int(font.size * 1.6)
    gap = max(4, band // 3)
    n, side = first.shape[0], first.shape[-2]
    rows = math.ceil(n / (nrow or math.ceil(math.sqrt(n))))
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels needs one label per grid row ({rows}), got {len(row_labels)}")
    margin = 0 if row_labels is None else max(font.getbbox(t)[2] for t in row_labels) + 2 * gap
    width = margin + sum(p.width for p in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, band + images[0].height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(row_labels or []):  # make_grid: padding 2, then rows of side + 2 pixels
        centre = band + (2 + r * (side + 2) + side / 2) * scale
        draw.text((margin // 2, centre), text, fill="black", font=font, anchor="mm")
    left = margin
    for text, panel in zip(texts, images):
        canvas.paste(panel, (left, band))
        draw.text((left + panel.width // 2, band // 2), text, fill="black", font=font, anchor="mm")
        left += panel.width + gap
    return canvas
