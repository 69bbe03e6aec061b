"""Training data: the bundled handwritten digits (offline), tensor datasets, image folders, video clips
(frame folders) and pre-encoded latent shards.

The digits are the UCI ML optical recognition of handwritten digits test set (Alpaydin and Kaynak,
1998; CC BY 4.0): 1797 images, 8x8, grey levels 0..16, 10 classes. It is the copy scikit-learn ships
as ``sklearn.datasets.load_digits``, stored here as uint8 in ``assets/digits.npz`` (45 kB) so that
neither training nor the tests need scikit-learn; written with
``np.savez_compressed(path, images=d.images.astype(np.uint8), labels=d.target.astype(np.uint8))``.
We upscale it bilinearly to 16x16: nearest-neighbour would
make every 2x2 patch of a patch-size-2 DiT one constant original pixel (the model would be an 8x8
model in disguise and sub-patch detail would not exist), while bilinear gives smooth strokes with
real structure inside each patch, closer to what a diffusion model of images has to learn.
Pixels are scaled to [-1, 1] (DiT's convention), one channel.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_SIZE = 16
DIGITS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "digits.npz")


def load_digits_tensors(size: int = DIGITS_SIZE, mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as ``(images (N,1,size,size) float32 in [-1,1], labels (N,) int64)``."""
    with np.load(DIGITS_FILE) as digits:
        images, labels = digits["images"], digits["labels"]
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)  # (N,1,8,8) in [0,1]
    if size != 8:
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=(size, size), mode=mode, **kwargs).clamp(0.0, 1.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x * 2.0 - 1.0, y


_DIRECTIONS = torch.tensor([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])


def moving_digits(
    images: torch.Tensor, frames: int, canvas: int = DIGITS_SIZE, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Short videos of digits moving in straight lines and bouncing off the borders (the bundled
    video demo's training data): ``images`` (N, C, S, S) in [-1, 1] with S <= ``canvas`` are pasted
    onto a blank (-1) canvas at a random start position, moving one pixel per frame in one of the
    eight compass directions (drawn uniformly). Returns (N, frames, C, canvas, canvas)."""
    n, c, size = images.shape[0], images.shape[1], images.shape[-1]
    if images.dim() != 4 or images.shape[-2] != size or size > canvas or frames < 1:
        raise ValueError(
            f"moving_digits needs square images (N, C, S, S) with S <= {canvas} and frames >= 1, "
            f"got {tuple(images.shape)} and frames {frames}"
        )
    room = canvas - size
    start = torch.randint(0, room + 1, (n, 2), generator=generator)
    velocity = _DIRECTIONS[torch.randint(0, len(_DIRECTIONS), (n,), generator=generator)]
    pos = (start[:, None] + velocity[:, None] * torch.arange(frames)[None, :, None]) % max(2 * room, 1)
    pos = torch.where(pos > room, 2 * room - pos, pos)  # bounce: a triangle wave over 0..room
    out = images.new_full((n, frames, c, canvas, canvas), -1.0)
    for i in range(n):
        for f in range(frames):
            y, x = pos[i, f].tolist()
            out[i, f, :, y : y + size, x : x + size] = images[i]
    return out


def digits_split(size: int = DIGITS_SIZE, test_fraction: float = 0.2, seed: int = 0):
    """A stratified train / held-out split: ``(x_train, y_train), (x_test, y_test)``."""
    x, y = load_digits_tensors(size)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(int(y.max()) + 1):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        k = int(round(idx.numel() * test_fraction))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    return (x[tr], y[tr]), (x[te], y[te])


_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_image_folder(
    root: str | os.PathLike, size: int, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """An ImageFolder-style tree (``root/<class>/<image>``): images resized (centre crop to square,
    bicubic) to ``size``, in [-1, 1]; labels by sorted class-folder name. Needs Pillow."""
    from PIL import Image

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        for file in sorted(os.listdir(folder)):
            if not file.lower().endswith(_IMAGE_EXTS):
                continue
            with Image.open(os.path.join(folder, file)) as im:
                images.append(_square(im, size, channels))
            labels.append(label)
    if not images:
        raise ValueError(f"no images under {root}")
    return torch.stack(images) * 2.0 - 1.0, torch.tensor(labels, dtype=torch.long), classes


TENSOR_FILE_EXTS = (".pt", ".pth", ".safetensors")


def load_tensor_file(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from a .pt / .pth (``torch.load(weights_only=True)``) or .safetensors
    file holding the tensors ``images`` (N, C, H, W) and ``labels`` (N,). Raises FileNotFoundError
    when it is missing, ValueError (one line) when it cannot be read or lacks those tensors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            blob = load_file(path)
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load and safetensors raise many kinds on a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path}: not a readable {os.path.splitext(path)[1] or 'tensor'} file ({first})") from exc
    if not isinstance(blob, dict) or not {"images", "labels"} <= set(blob):
        found = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path}: expected the tensors 'images' (N,C,H,W) and 'labels' (N,), found {found}")
    return blob["images"], blob["labels"]


def load_video_folder(
    root: str | os.PathLike,
    size: int,
    frames: int,
    channels: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Video clips stored as frame folders, ``root/<class>/<clip>/<frame image>`` (frames in sorted
    file-name order): ``frames`` frames per clip, evenly spaced over the clip, each centre-cropped
    and resized like ``load_image_folder``; returns (videos (N, frames, C, size, size) in [-1, 1],
    labels (N,) by sorted class name, class names). ValueError naming a clip with too few frames."""
    from PIL import Image

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"video folder not found: {root}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    videos, labels = [], []
    for label, name in enumerate(classes):
        for clip in sorted(os.listdir(os.path.join(root, name))):
            folder = os.path.join(root, name, clip)
            if not os.path.isdir(folder):
                continue
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(_IMAGE_EXTS))
            if len(files) < frames:
                raise ValueError(f"clip {folder} has {len(files)} frames, fewer than the {frames} asked for")
            picks = np.linspace(0, len(files) - 1, frames).round().astype(int)
            clip_frames = []
            for k in picks:
                with Image.open(os.path.join(folder, files[k])) as im:
                    clip_frames.append(_square(im, size, channels))
            videos.append(torch.stack(clip_frames))
            labels.append(label)
    if not videos:
        raise ValueError(f"no clips under {root} (expected root/<class>/<clip>/<frame image>)")
    return torch.stack(videos) * 2.0 - 1.0, torch.tensor(labels, dtype=torch.long), classes


def _square(im, size: int, channels: int) -> torch.Tensor:
    """A PIL image centre-cropped to a square, resized (bicubic) to ``size``, as (C, size, size) in [0, 1]."""
    from PIL import Image

    im = im.convert("L" if channels == 1 else "RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BICUBIC)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


LATENTS_INDEX = "latents.json"


@torch.no_grad()
def encode_latents(
    vae: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 4096,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Encode images (N, 3, H, W) in [-1, 1] (or videos (N, F, 3, H, W), frame by frame) once through
    a local diffusers ``AutoencoderKL`` and write the latents as safetensors shards (as fast-DiT's
    extract_features): ``out_dir/latents-00000.safetensors`` ... with "latents" (a sample of the
    posterior times the VAE's ``scaling_factor``, fp32) and "labels", plus ``latents.json`` (count,
    latent shape, scaling factor, shard files). Seeded: the same call writes the same bytes.
    Returns the index. Train on it with ``train(model, out_dir)`` (``load_latents``)."""
    import json

    from ..io.files import save_safetensors

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    video = images.dim() == 5
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    device = next(vae.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    files = []
    for start in range(0, len(images), shard_size):
        chunk = images[start : start + shard_size]
        flat = chunk.flatten(0, 1) if video else chunk
        parts = []
        for batch in flat.split(batch_size):
            dist = vae.encode(batch.to(device, next(vae.parameters()).dtype)).latent_dist
            parts.append(
                (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g, device=device)).float().cpu() * scale
            )
        latents = torch.cat(parts)
        if video:
            latents = latents.unflatten(0, chunk.shape[:2])
        tensors = {"latents": latents.contiguous()}
        if labels is not None:
            tensors["labels"] = labels[start : start + shard_size].long().contiguous()
        name = f"latents-{len(files):05d}.safetensors"
        save_safetensors(tensors, os.path.join(out_dir, name))
        files.append(name)
    index = dict(
        count=len(images),
        latent_shape=list(latents.shape[1:]),
        scaling_factor=scale,
        files=files,
        labels=labels is not None,
    )
    with open(os.path.join(out_dir, LATENTS_INDEX), "w") as f:
        json.dump(index, f, indent=1)
    return index


def load_latents(folder: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The latents and labels ``encode_latents`` wrote to ``folder`` (shards concatenated in order)."""
    import json

    from safetensors.torch import load_file

    folder = os.fspath(folder)
    with open(os.path.join(folder, LATENTS_INDEX)) as f:
        index = json.load(f)
    shards = [load_file(os.path.join(folder, name)) for name in index["files"]]
    latents = torch.cat([s["latents"] for s in shards])
    labels = torch.cat([s["labels"] for s in shards]) if index["labels"] else None
    if len(latents) != index["count"]:
        raise ValueError(f"{folder}: the shards hold {len(latents)} latents, the index says {index['count']}")
    return latents, labels


def as_tensors(data, size: int | None = None, channels: int = 1, frames: int | None = None):
    """Resolve a dataset spec: "digits", an image-folder path (a video folder of frame folders when
    ``frames`` is given), a folder of pre-encoded latents (``encode_latents``), an ``(images,
    labels)`` pair of tensors, or a ``torch.utils.data.TensorDataset``."""
    if isinstance(data, str) and data == "digits":
        return load_digits_tensors(size or DIGITS_SIZE)
    if isinstance(data, (str, os.PathLike)) and os.path.isfile(os.path.join(os.fspath(data), LATENTS_INDEX)):
        return load_latents(data)
    if isinstance(data, (str, os.PathLike)) and frames:
        if size is None:
            raise ValueError("a video folder needs a frame size")
        x, y, _ = load_video_folder(data, size, frames, channels)
        return x, y
    if isinstance(data, (str, os.PathLike)):
        if size is None:
            raise ValueError("an image folder needs an image size")
        x, y, _ = load_image_folder(data, size, channels)
        return x, y
    if isinstance(data, torch.utils.data.TensorDataset):
        data = data.tensors
    if isinstance(data, Sequence) and len(data) == 2:
        x, y = data
        x, y = torch.as_tensor(x).float(), torch.as_tensor(y).long()
        if x.ndim != 4 or y.shape != (x.shape[0],):
            raise ValueError(f"expected images (N,C,H,W) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
        return x, y
    raise ValueError(f"unsupported dataset {type(data).__name__}: use 'digits', a folder, or (images, labels)")
