"""Fidelity and quality metrics for images in [-1, 1]: PSNR, SSIM, Frechet distance, classifier
accuracy; and the small digit classifier whose penultimate features the Frechet distance uses.

- ``psnr(a, b)``: 10 log10(range^2 / MSE) over each pair, averaged; ``inf`` for identical images
  (the mean is ``inf`` if any pair is identical, so ``psnr(..., reduction="none")`` gives per-image);
  ``reduction="pooled"``: one MSE over all pairs, so a few badly-off images dominate it.
- ``ssim(a, b)``: Wang et al. 2004 with a 7x7 Gaussian window (sigma 1.5; small because the images
  are 16x16), valid convolution, K1 = 0.01, K2 = 0.03, per channel, averaged.
- ``frechet_distance(f1, f2)``: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of two feature sets
  (as FID, here in the digit classifier's 64-d feature space, so the numbers are not FIDs).
- ``fidelity(images, reference)``: PSNR and SSIM scored per sample (mean, worst 5%) and pooled,
  side by side, as the fidelity reports print them.
- ``frame_accuracy(classifier, videos, labels)``: the fraction of video frames the digit classifier
  assigns to their video's label, each frame first cropped to the window of the digit's size that
  holds the most ink and resized to the frame (the classifier knows frame-filling digits).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, reduction: str = "mean"):
    """PSNR in dB of image pairs (N, ...): the mean of the per-pair values (``reduction="mean"``),
    the per-pair values as an (N,) float64 tensor (``"none"``), or one value from the MSE over all
    pairs together (``"pooled"``). ValueError for different shapes or an unknown reduction."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if reduction not in ("mean", "none", "pooled"):
        raise ValueError(f"reduction must be 'mean', 'none' or 'pooled', got {reduction!r}")
    a = a.detach().double().reshape(a.shape[0], -1)
    b = b.detach().double().reshape(b.shape[0], -1)
    mse = ((a - b) ** 2).mean(1)
    if reduction == "pooled":
        mse = mse.mean(0, keepdim=True)
    with np.errstate(divide="ignore"):
        values = torch.where(mse == 0, torch.full_like(mse, math.inf), 10.0 * torch.log10(data_range**2 / mse))
    if reduction == "none":
        return values
    return float(values.mean())  # "pooled": the mean of one value


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 2.0,
    window: int = 7,
    sigma: float = 1.5,
    reduction: str = "mean",
):
    """Mean SSIM of image pairs (N, C, H, W), or per pair as an (N,) float64 tensor with
    ``reduction="none"``; 1 for identical images. Every image has the same number of windows, so
    the mean over pairs is also the SSIM pooled over all windows of all pairs."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    n, c, h, w = a.shape
    window = min(window, h, w)
    k = _gaussian_window(window, sigma).to(a.device)[None, None].repeat(c, 1, 1, 1)
    a, b = a.detach().double(), b.detach().double()
    conv = lambda x: F.conv2d(x, k, groups=c)  # noqa: E731
    mu_a, mu_b = conv(a), conv(b)
    var_a = conv(a * a) - mu_a**2
    var_b = conv(b * b) - mu_b**2
    cov = conv(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    values = smap.reshape(n, -1).mean(1)
    return values if reduction == "none" else float(values.mean())


def _worst_count(n: int, fraction: float) -> int:
    return max(1, math.ceil(fraction * n - 1e-9))  # the epsilon keeps 0.05 * 100 at 5, not 6


def worst_mean(values: torch.Tensor, fraction: float = 0.05, higher_is_better: bool = True) -> float:
    """Mean of the worst ``ceil(fraction * N)`` (at least 1) of N per-sample scores."""
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"expected a non-empty 1-d tensor of per-sample scores, got shape {tuple(values.shape)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    worst = torch.topk(values.double(), _worst_count(len(values), fraction), largest=not higher_is_better).values
    return float(worst.mean())


def fidelity(
    images: torch.Tensor, reference: torch.Tensor, data_range: float = 2.0, worst_fraction: float = 0.05
) -> dict:
    """How close ``images`` are to ``reference`` (both (N, C, H, W), same noise), scored three ways:

    - ``psnr_mean`` / ``ssim_mean``: per sample, then averaged (what a typical sample looks like;
      ``inf`` PSNR if any pair is identical);
    - ``psnr_pooled``: one MSE over all samples (a few badly-off samples dominate it); SSIM pooled
      over all windows equals ``ssim_mean``;
    - ``psnr_worst`` / ``ssim_worst``: the mean over the worst ``worst_fraction`` of samples
      (``ceil(worst_fraction * N)`` of them, given as ``worst_count``).

    PSNR in dB with peak-to-peak ``data_range`` (2 for images in [-1, 1]).
    """
    per_psnr = psnr(images, reference, data_range, reduction="none")
    per_ssim = ssim(images, reference, data_range, reduction="none")
    return dict(
        psnr_mean=float(per_psnr.mean()),
        psnr_pooled=psnr(images, reference, data_range, reduction="pooled"),
        psnr_worst=worst_mean(per_psnr, worst_fraction),
        ssim_mean=float(per_ssim.mean()),
        ssim_worst=worst_mean(per_ssim, worst_fraction),
        worst_count=_worst_count(len(per_psnr), worst_fraction),
    )


def _sqrtm_psd_product_trace(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2: the eigenvalues of S1^(1/2) S2 S1^(1/2)."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root @ s2 @ root
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance(f1, f2) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N1, D), (N2, D)."""
    f1 = np.asarray(f1.detach().cpu() if torch.is_tensor(f1) else f1, dtype=np.float64)
    f2 = np.asarray(f2.detach().cpu() if torch.is_tensor(f2) else f2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"need two (N>=2, D) feature sets of one D, got {f1.shape} and {f2.shape}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * _sqrtm_psd_product_trace(s1, s2))
    return max(value, 0.0)


class DigitClassifier(nn.Module):
    """A small CNN for 16x16 one-channel digits in [-1, 1]; ``features`` are its 64-d penultimate layer."""

    def __init__(self, num_classes: int = 10, width: int = 32, feature_dim: int = 64, image_size: int = 16):
        super().__init__()
        self.config = dict(num_classes=num_classes, width=width, feature_dim=feature_dim, image_size=image_size)
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, images: torch.Tensor, labels) -> float:
    """Fraction of ``images`` the classifier assigns to ``labels``."""
    labels = torch.as_tensor(labels, device=images.device)
    return float((classifier(images.float()).argmax(1) == labels).float().mean())


@torch.no_grad()
def classifier_features(classifier: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat(
        [classifier.features(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
    )


def crop_to_ink(frames: torch.Tensor, window: int) -> torch.Tensor:
    """frames (N, C, S, S) in [-1, 1] -> (N, C, S, S): each frame's ``window`` x ``window`` square with
    the most ink (sum of pixel + 1 over the channels), resized back to S x S (bilinear)."""
    side = frames.shape[-1]
    ink = F.avg_pool2d((frames + 1).sum(1, keepdim=True), window, stride=1)  # (N, 1, S-w+1, S-w+1)
    best = ink.flatten(1).argmax(1).tolist()
    crops = [
        f[:, b // ink.shape[-1] : b // ink.shape[-1] + window, b % ink.shape[-1] : b % ink.shape[-1] + window]
        for f, b in zip(frames, best)
    ]
    return F.interpolate(torch.stack(crops), size=(side, side), mode="bilinear", align_corners=False)


@torch.no_grad()
def frame_accuracy(classifier: nn.Module, videos: torch.Tensor, labels, window: int = 12) -> tuple[float, list[float]]:
    """Videos (N, F, C, S, S) in [-1, 1] of digits ``window`` pixels tall moving on an S x S canvas
    (``data.moving_digits``): (fraction of all frames classified as their video's label, that
    fraction per label 0..max). Each frame is cropped with ``crop_to_ink`` first."""
    labels = torch.as_tensor(labels, device=videos.device)
    n, frames = videos.shape[:2]
    pred = classifier(crop_to_ink(videos.flatten(0, 1).float().clamp(-1, 1), window)).argmax(1).view(n, frames)
    hit = (pred == labels[:, None]).float()
    per_label = [
        float(hit[labels == c].mean()) if (labels == c).any() else float("nan") for c in range(int(labels.max()) + 1)
    ]
    return float(hit.mean()), per_label
