"""Training-step speed: the library's SkipDiT-S/2 against the official-style eager model
(bench/official_dit.py: timm-style blocks, SDPA, the official long skips) at the same size, with the
same loss (DiT's eps-MSE + variational bound, ``GaussianDiffusion.training_losses``) and the same
AdamW step, timed interleaved round by round (``report.time_fns``).

    python bench/e2e/bench_train.py                      # batch 8, 32x32x4 latents, fp32 and bf16, 1 thread
    python bench/e2e/bench_train.py --threads 2 --budget 120

While an input requires grad the op dispatcher runs the torch reference for any backend without a
backward (the native kernels are inference-only), so a training step never goes through a fused op
whose backward would be slower than the reference. bf16: both models cast to bf16 (weights, AdamW
state), as a pure-bf16 step; autocast is not used (the fused ops take one dtype per call).

Writes bench/results/train-step-<device tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402
from official_dit import OfficialSkipDiT  # noqa: E402

from skipdit_kernels.models import SkipDiT  # noqa: E402
from skipdit_kernels.sampling import GaussianDiffusion  # noqa: E402


def step_fn(model, batch: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 32, 32, generator=g).to(dtype)
    y = torch.randint(0, 1000, (batch,), generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    noise = torch.randn(x.shape, generator=g).to(dtype)
    diffusion = GaussianDiffusion.create("", learn_sigma=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        loss = diffusion.training_losses(model, x, t, model_kwargs=dict(y=y), noise=noise)["loss"].float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget", type=float, default=60.0)
    p.add_argument("--rounds", type=int, default=5, help="at least this many interleaved rounds")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = report.environment()
    rows = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        torch.manual_seed(0)
        ours = SkipDiT.from_preset("DiT-S/2", input_size=32, in_channels=4)
        with torch.no_grad():  # non-zero adaLN and output layers: every block does work
            for prm in ours.parameters():
                if prm.requires_grad and prm.dim() > 1 and prm.abs().max() == 0:
                    prm.normal_(0, 0.02)
        official = OfficialSkipDiT.from_skipdit(ours)
        ours = ours.to(dtype)
        official = official.to(dtype)
        timing = report.time_fns(
            {"ours": step_fn(ours, args.batch, dtype), "official": step_fn(official, args.batch, dtype)},
            budget_s=args.budget,
            min_rounds=args.rounds,
        )
        row = dict(dtype=name, **{f"{k}_error": v["error"] for k, v in timing.items() if "error" in v})
        if not any("error" in v for v in timing.values()):
            ratio = report.round_ratio(timing, "ours", "official")
            row.update(
                ours_s=timing["ours"]["median_s"],
                official_s=timing["official"]["median_s"],
                speedup=ratio["ratio"],
                speedup_min=ratio["min"],
                speedup_max=ratio["max"],
                rounds=ratio["rounds"],
            )
        rows.append(row)
        print(rows[-1], flush=True)
    meta = dict(
        environment=env,
        batch=args.batch,
        threads=args.threads,
        model="SkipDiT-S/2, 32x32x4 latents, 1000 classes",
        note="speedup = median over rounds of official step time / ours (>1: ours faster)",
    )
    report.write_results(
        "train-step",
        rows,
        [
            ("dtype", "dtype"),
            ("ours_s", "ours s/step"),
            ("official_s", "official s/step"),
            ("speedup", "official / ours (median)"),
            ("speedup_min", "min"),
            ("speedup_max", "max"),
            ("rounds", "rounds"),
        ],
        meta=meta,
        env=env,
        title="Training step, SkipDiT-S/2, batch %d" % args.batch,
        notes=[meta["note"]]
        + (["bf16: both models cast to bf16 (pure-bf16 step)"] if "bfloat16" in args.dtypes else []),
    )


if __name__ == "__main__":
    main()
