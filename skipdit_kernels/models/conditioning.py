"""Input checks shared by the model families: class labels, timesteps, the image size of a latent."""

from __future__ import annotations

import torch


def class_labels(value, num_classes: int) -> torch.Tensor:
    """User class labels (a sequence or tensor of integers in 0..num_classes-1) as a flat (N,) long
    tensor on the CPU. ValueError naming the labels otherwise."""
    if isinstance(value, torch.Tensor):
        labels = value.detach().cpu()
    else:
        try:
            labels = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"class labels must be integers, got {value!r}") from None
    labels = labels.reshape(-1)
    if labels.numel() == 0:
        raise ValueError("class labels are empty")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(
            f"class labels must be integers in 0..{num_classes - 1}, got {labels.tolist()[:8]} ({labels.dtype})"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(
            f"class labels must be in 0..{num_classes - 1}, got min {int(labels.min())} max {int(labels.max())}"
        )
    return labels.long()


def check_label_batch(y, n: int, top: int, device: torch.device, shape_of: str) -> torch.Tensor:
    """A model call's labels ``y`` as an (n,) integer tensor on ``device`` with values in 0..top
    (``top`` includes the null class when there is one). ValueError naming the shape or values;
    ``shape_of`` names the input n comes from, e.g. "x (2, 4, 4, 8, 8)"."""
    y = torch.as_tensor(y, device=device)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match {shape_of}, got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got {y.dtype}")
    # the value check reads the labels on the host: skipped while torch.compile traces (no graph break)
    if y.numel() and not torch.compiler.is_compiling() and (int(y.min()) < 0 or int(y.max()) > top):
        raise ValueError(f"class labels must be in 0..{top}, got min {int(y.min())} max {int(y.max())}")
    return y


def check_timesteps(t, n: int, device: torch.device, shape_of: str) -> torch.Tensor:
    """Timesteps (a scalar or (n,)) as an (n,) tensor on ``device``; ValueError naming the shape/dtype."""
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"t must have shape ({n},) to match {shape_of}, got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.dtype.is_complex:
        raise ValueError(f"t must hold timesteps (integers or floats), got {t.dtype}")
    return t


def check_image_size(image_size, in_channels: int, input_size: int) -> None:
    """ValueError unless ``image_size`` pixels give latents of side ``input_size``: 4-channel latents
    are the SD VAE's (8x downsampling), other channel counts are pixel models (1x)."""
    factor = 8 if in_channels == 4 else 1
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if image_size % factor or image_size // factor != input_size:
        raise ValueError(
            f"image_size {image_size} gives latents of side {image_size / factor:g}, but the model's "
            f"input_size is {input_size} (image_size {input_size * factor})"
        )
