"""Frame accuracy of a class-to-video LatteSkip: sample videos for every digit (full compute, the
demo's sampler: DDIM-50, CFG 3) and classify every frame with the bundled digit classifier.

The classifier knows still, frame-filling 16x16 digits while a video frame holds a 12x12 digit
somewhere on a 16x16 canvas, so each frame is first cropped to the 12x12 window holding the most ink
and resized to 16x16 (bilinear). The same protocol on the training data itself (real moving digits)
gives the ceiling, printed first. Usage (repository root):

    PYTHONPATH=. python bench/results/training/latte/frame_accuracy.py [--model PATH] [--per-class 10]
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from skipdit_kernels import sample
from skipdit_kernels.data import load_digits_tensors, moving_digits
from skipdit_kernels.embedded import load_bundled

DIGIT = 12


def crop_digits(frames: torch.Tensor) -> torch.Tensor:
    """frames (N, 1, 16, 16) in [-1, 1] -> (N, 1, 16, 16): the 12x12 window with the most ink, resized."""
    ink = F.avg_pool2d(frames + 1, DIGIT, stride=1)  # (N, 1, 5, 5): ink per window
    best = ink.flatten(1).argmax(1)
    side = ink.shape[-1]
    out = []
    for f, b in zip(frames, best.tolist()):
        y, x = divmod(b, side)
        out.append(f[:, y:y + DIGIT, x:x + DIGIT])
    return F.interpolate(torch.stack(out), size=frames.shape[-1], mode="bilinear", align_corners=False)


def frame_accuracy(classifier, videos: torch.Tensor, labels: torch.Tensor) -> tuple[float, list]:
    """videos (N, F, 1, 16, 16) -> (fraction of frames classified as their video's label, per-class)."""
    n, frames = videos.shape[:2]
    with torch.no_grad():
        pred = classifier(crop_digits(videos.flatten(0, 1).clamp(-1, 1))).argmax(1).view(n, frames)
    hit = (pred == labels[:, None]).float()
    per_class = [round(hit[labels == c].mean().item(), 3) for c in range(10)]
    return hit.mean().item(), per_class


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a LatteSkip checkpoint (default: the bundled 'latte')")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    classifier = load_bundled("classifier")
    labels = torch.arange(10).repeat_interleave(args.per_class)
    images, digit_labels = load_digits_tensors(DIGIT)
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(0, len(images), (len(labels) * 4,), generator=gen)
    ceiling, _ = frame_accuracy(classifier, moving_digits(images[idx], 8, generator=gen), digit_labels[idx])
    if args.model:
        from skipdit_kernels.models import load_checkpoint
        model = load_checkpoint(args.model).eval()
    else:
        model = load_bundled("latte")
    videos = sample(model, labels, steps=args.steps, method="ddim", cfg_scale=args.cfg, seed=args.seed, progress=False)
    acc, per_class = frame_accuracy(classifier, videos, labels)
    print(json.dumps(dict(model=args.model or "bundled latte", ceiling_on_training_frames=round(ceiling, 4),
                          frame_accuracy=round(acc, 4), per_class=per_class, videos=len(labels),
                          steps=args.steps, cfg=args.cfg, seed=args.seed)))


if __name__ == "__main__":
    main()
