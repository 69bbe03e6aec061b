"""Frame accuracy of a class-to-video LatteSkip: sample videos for every digit (full compute, the
demo's sampler: DDIM-50, CFG 3) and classify every frame with the bundled digit classifier.

The classifier knows still, frame-filling 16x16 digits while a video frame holds a 12x12 digit
somewhere on a 16x16 canvas, so each frame is first cropped to the 12x12 window holding the most ink
and resized to 16x16 (bilinear; ``metrics.frame_accuracy``). The same protocol on the training data itself (real moving digits)
gives the ceiling, printed first. Usage (repository root):

    PYTHONPATH=. python bench/training/frame_accuracy.py [--model PATH] [--per-class 10]
"""

from __future__ import annotations

import argparse
import json

import torch

from skipdit_kernels import sample
from skipdit_kernels.evaluation.bundled import load_bundled
from skipdit_kernels.evaluation.metrics import frame_accuracy
from skipdit_kernels.training.data import load_digits_tensors, moving_digits

DIGIT = 12  # the moving digits are 12x12 on the 16x16 canvas


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
    ceiling, _ = frame_accuracy(classifier, moving_digits(images[idx], 8, generator=gen), digit_labels[idx], DIGIT)
    if args.model:
        from skipdit_kernels.models import load_checkpoint

        model = load_checkpoint(args.model).eval()
    else:
        model = load_bundled("latte")
    videos = sample(model, labels, steps=args.steps, method="ddim", cfg_scale=args.cfg, seed=args.seed, progress=False)
    acc, per_class = frame_accuracy(classifier, videos, labels, DIGIT)
    print(
        json.dumps(
            dict(
                model=args.model or "bundled latte",
                ceiling_on_training_frames=round(ceiling, 4),
                frame_accuracy=round(acc, 4),
                per_class=[round(a, 3) for a in per_class],
                videos=len(labels),
                steps=args.steps,
                cfg=args.cfg,
                seed=args.seed,
            )
        )
    )


if __name__ == "__main__":
    main()
