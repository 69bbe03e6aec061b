"""Train the bundled class-to-video LatteSkip ("latte" in skipdit_kernels/evaluation/bundled.py) on moving digits.

``skipdit_kernels.training.loop.train`` takes images (N, C, H, W) and ``GaussianDiffusion`` splits the model
output on dim 1, while LatteSkip works on (N, F, C, H, W) videos (channels on dim 2); this loop is
DiT's recipe (eps-MSE + variational bound, AdamW, EMA with warm-up, class dropout) on channels-first
views (N, C, F, H, W) of the videos, reusing the library's pieces. Each batch draws fresh motions
(``skipdit_kernels.training.data.moving_digits``). Run from the repository root (see bench/training/train_bundled.sh);
writes log.jsonl and model.safetensors (EMA, fp32) in bench/results/training/latte/ and the fp16 asset with --export.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from skipdit_kernels import LatteSkip
from skipdit_kernels.evaluation.bundled import save_half
from skipdit_kernels.models import save_checkpoint
from skipdit_kernels.sampling import GaussianDiffusion
from skipdit_kernels.training.data import load_digits_tensors, moving_digits
from skipdit_kernels.training.loop import ema_decay_at, update_ema

# the run's log and weights are results: bench/results/training/latte/
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "training", "latte")


class ChannelsFirst(torch.nn.Module):
    """(N, C, F, H, W) in and out around a LatteSkip, so the diffusion's dim-1 channel split holds."""

    def __init__(self, model: LatteSkip):
        super().__init__()
        self.model = model

    def forward(self, x, t, y):
        return self.model(x.transpose(1, 2), t, y).transpose(1, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--depth", type=int, default=8, help="blocks (two per spatial/temporal pair)")
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument(
        "--lr-final",
        type=float,
        default=None,
        help="decay the learning rate linearly from --lr to this over the run (default: constant)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this much wall time (the weights so far are saved and exported as at the end)",
    )
    p.add_argument("--save-every", type=int, default=0, help="also save model.safetensors (EMA) every N steps")
    p.add_argument("--export", help="write the fp16 asset here")
    p.add_argument(
        "--init",
        help="continue from these weights (a model.safetensors of an earlier run: its EMA); "
        "the log is appended to and its steps continue from the checkpoint's step",
    )
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = LatteSkip(
        input_size=16,
        patch_size=4,
        in_channels=1,
        hidden_size=args.hidden_size,
        depth=args.depth,
        num_heads=args.num_heads,
        num_frames=args.frames,
        class_dropout_prob=0.1,
        num_classes=10,
        learn_sigma=True,
        extras=2,
    )
    first = 0
    if args.init:
        from safetensors import safe_open

        from skipdit_kernels.models import load_checkpoint

        model.load_state_dict(load_checkpoint(args.init).state_dict())
        with safe_open(args.init, "pt") as f:
            first = int(f.metadata()["step"])
    ema = copy.deepcopy(model).requires_grad_(False)
    net = ChannelsFirst(model)
    diffusion = GaussianDiffusion.create("", learn_sigma=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    images, labels = load_digits_tensors(12)  # 12x12 digits moving on a 16x16 canvas
    print(
        f"LatteSkip {json.dumps(model.config)}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{len(images)} digits, {args.frames} frames",
        flush=True,
    )
    log = open(os.path.join(OUT, "log.jsonl"), "a" if args.init else "w")
    started, window = time.perf_counter(), []
    model.train()
    lr_final = args.lr if args.lr_final is None else args.lr_final
    last = first
    for step in range(first + 1, first + args.steps + 1):
        lr = args.lr + (lr_final - args.lr) * (step - first - 1) / max(args.steps - 1, 1)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(images), (args.batch_size,), generator=gen)
        videos = moving_digits(images[idx], args.frames, generator=gen)  # (B, F, 1, 16, 16)
        t = torch.randint(0, diffusion.num_steps, (args.batch_size,), generator=gen)
        noise = torch.randn(videos.transpose(1, 2).shape, generator=gen)
        terms = diffusion.training_losses(net, videos.transpose(1, 2), t, model_kwargs=dict(y=labels[idx]), noise=noise)
        loss = terms["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, ema_decay_at(step - 1, args.ema_decay, True))
        window.append([loss.item(), terms["mse"].mean().item()])
        last = step
        out_of_time = args.max_minutes is not None and time.perf_counter() - started > 60 * args.max_minutes
        if step % args.log_every == 0 or step == first + args.steps or out_of_time:
            mean = torch.tensor(window).mean(0).tolist()
            window = []
            row = dict(
                step=step, loss=mean[0], mse=mean[1], seconds=round(time.perf_counter() - started, 2), lr=round(lr, 7)
            )
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(row, flush=True)
        if args.save_every and step % args.save_every == 0:
            save_checkpoint(ema, os.path.join(OUT, "model.safetensors"), metadata={"step": str(step)})
        if out_of_time:
            print(f"stopping at step {step}: --max-minutes {args.max_minutes:g} reached", flush=True)
            break
    ema.eval()
    last = str(last)
    save_checkpoint(ema, os.path.join(OUT, "model.safetensors"), metadata={"step": last})
    if args.export:
        save_half(ema, args.export, metadata={"step": last, "ema_decay": str(args.ema_decay)})
    print(f"done: step {last}, {time.perf_counter() - started:.0f} s this run", flush=True)


if __name__ == "__main__":
    main()
