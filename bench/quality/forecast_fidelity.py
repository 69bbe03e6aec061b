"""Forecast Skip-Cache fidelity report: PSNR and SSIM of cached samples against the same
model uncached (same seed, hence the same initial and per-step noise), scored per sample (mean and
worst 5%) and pooled (one MSE over all samples), for reuse (order 0) and Lagrange
forecast orders 1, 2 at several intervals, under DDIM (eta 0) and DDPM; beside the schedule's
FLOP bound (block fraction) and the CPU speedup composed from interleaved full and cached step times.

    python bench/quality/forecast_fidelity.py                       # defaults below
    python bench/quality/forecast_fidelity.py --samples 100 --ddpm-samples 100   # the issue's full size

Model: the bundled SkipDiT (``skipdit_kernels.evaluation.bundled.load_bundled("skipdit")``) when the package
has it; otherwise a SkipDiT trained here on sklearn's digits upscaled to 16x16 (the report says
which). Samples live in [-1, 1]; PSNR uses peak-to-peak 2: 10 log10(4 / MSE) (``metrics.fidelity``).
Writes bench/results/forecast-fidelity-<device>-<date>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.cache.forecast import resolve_forecast  # noqa: E402
from skipdit_kernels.evaluation.metrics import fidelity  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def load_model(args):
    try:
        from skipdit_kernels.evaluation import bundled  # type: ignore

        return bundled.load_bundled("skipdit"), "bundled SkipDiT (skipdit_kernels.evaluation.bundled)"
    except Exception as exc:  # noqa: BLE001  (absent: train our own)
        why = f"{type(exc).__name__}: {exc}"
    path = args.model_cache
    cfg = dict(input_size=16, patch_size=args.patch, in_channels=1, hidden_size=128, depth=8, num_heads=4,
               num_classes=10, learn_sigma=False)  # fmt: skip
    model = sk.SkipDiT(**cfg)
    desc = (
        f"SkipDiT depth 8, hidden 128, patch {args.patch}, 16x16 digits, trained here for {args.train_iters} "
        f"AdamW steps of batch {args.train_batch} (bundled model unavailable: {why})"
    )
    if path and os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), desc
    from sklearn.datasets import load_digits

    from skipdit_kernels.sampling import GaussianDiffusion

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False) * 2 - 1
    y = torch.tensor(digits.target)
    diffusion = GaussianDiffusion.create("", learn_sigma=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    started = time.perf_counter()
    for it in range(args.train_iters):
        idx = torch.randint(0, len(x), (args.train_batch,))
        loss = diffusion.training_losses(model, x[idx], torch.randint(0, 1000, (len(idx),)), dict(y=y[idx]))["loss"]
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        if it % 50 == 0:
            print(f"train {it}: loss {loss.mean().item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    if path:
        torch.save(model.state_dict(), path)
    return model.eval(), desc


def run_sampler(model, method, steps, n, intervals, orders, args, rows):
    labels = [i % model.num_classes for i in range(n)]
    kw = dict(class_labels=labels, steps=steps, method=method, cfg_scale=args.cfg, seed=args.seed, progress=False)
    ref = sk.sample(model, **kw)
    # Per-step times, interleaved (robust to load on a shared machine): full and cached forward at this
    # batch; the modelled trajectory speedup is steps * T_full / (full * T_full + cached * T_cached).
    from forecast_cost import measure

    times = measure(model, [0], 2 * n if args.cfg > 1 else n, 2, args.shallow, rounds=2)[0]
    step = {k: v["median_s"] for k, v in times.items()}
    print(f"  step times at batch {2 * n if args.cfg > 1 else n}: " + ", ".join(
        f"{k} {v['median_s'] * 1e3:.2f} ms ({v['min_s'] * 1e3:.2f}-{v['max_s'] * 1e3:.2f})" for k, v in times.items()),
        flush=True)  # fmt: skip
    timesteps = sk.sampling.GaussianDiffusion.create(steps, method=method, learn_sigma=model.learn_sigma).timesteps
    stochastic = method == "ddpm"
    for interval in intervals:
        for order in orders:
            cache = sk.SkipCache(interval=interval, shallow_blocks=args.shallow, forecast=order)
            out, info = sk.sample(model, cache=cache, return_info=True, **kw)
            row = dict(
                sampler=f"{method.upper()}-{steps}",
                interval=interval,
                order=order,
                **fidelity(out, ref),
                block_fraction=cache.block_fraction(timesteps, model.depth),
                speedup=steps * step["full"] / (info.full_steps * step["full"] + info.cached_steps * step["cached"]),
                step_ms={k: {n: v[n] * 1e3 for n in ("median_s", "min_s", "max_s")} for k, v in times.items()},
                full=info.full_steps,
                cached=info.cached_steps,
                auto=order == resolve_forecast("auto", stochastic),
            )
            row["flop_bound"] = 1 / row["block_fraction"]
            rows.append(row)
            print(f"  interval {interval} order {order}: {row['psnr_mean']:.2f} dB mean, {row['psnr_pooled']:.2f} "
                  f"pooled, {row['psnr_worst']:.2f} worst 5%, x{row['speedup']:.2f} "
                  f"(bound x{row['flop_bound']:.2f})", flush=True)  # fmt: skip


def write(rows, meta, stem):
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    env = dict(meta["environment"], load_average_end=report.load_average())
    lines = [f"# Forecast Skip-Cache fidelity ({meta['date']}, {meta['device']})", "", report.load_line(env), "",
             f"Model: {meta['model']}.",
             f"Settings: {meta['settings']}.", "",
             "PSNR (dB) of cached samples against the same model uncached, same noise, as `mean / pooled / "
             "worst 5%`: per sample then averaged; one MSE pooled over all samples (a few badly-off samples "
             "dominate it); the mean of the worst 5% of samples. The JSON also has SSIM (mean, worst 5%). "
             "Speedup: measured on CPU "
             "from interleaved per-step times (full and cached forward at the sampling batch, median) and the "
             "run's full/cached step counts (the JSON has the step times' median, min and max). Bound: 1 / block fraction (the FLOP bound of the schedule).",
             ""]  # fmt: skip
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        sel = [r for r in rows if r["sampler"] == sampler]
        orders = sorted({r["order"] for r in sel})
        lines += [f"## {sampler}", "", "| interval | bound | speedup | " + " | ".join(
            f"order {o}{' (reuse)' if o == 0 else ''}" for o in orders) + " | order 1 - reuse (mean / pooled) |",
            "| --- | --- | --- | " + " | ".join("---" for _ in orders) + " | --- |"]  # fmt: skip
        for interval in dict.fromkeys(r["interval"] for r in sel):
            by = {r["order"]: r for r in sel if r["interval"] == interval}
            speed = np.median([r["speedup"] for r in by.values()])
            cells = [f"{by[o]['psnr_mean']:.1f} / {by[o]['psnr_pooled']:.1f} / {by[o]['psnr_worst']:.1f}"
                     f"{'*' if by[o]['auto'] else ''}" if o in by else "" for o in orders]  # fmt: skip
            delta = (f"{by[1]['psnr_mean'] - by[0]['psnr_mean']:+.1f} / {by[1]['psnr_pooled'] - by[0]['psnr_pooled']:+.1f}"
                     if 0 in by and 1 in by else "")  # fmt: skip
            lines.append(
                f"| {interval} | x{by[orders[0]]['flop_bound']:.2f} | x{speed:.2f} | "
                + " | ".join(cells)
                + f" | {delta} |"
            )
        lines += ["", '`*`: the order `forecast="auto"` resolves to for this sampler.', ""]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        samplers = list(dict.fromkeys(r["sampler"] for r in rows))
        fig, axes = plt.subplots(1, len(samplers), figsize=(5.5 * len(samplers), 4), squeeze=False)
        for ax, sampler in zip(axes[0], samplers):
            sel = [r for r in rows if r["sampler"] == sampler]
            for order in sorted({r["order"] for r in sel}):
                pts = sorted(
                    (r["flop_bound"], r["psnr_mean"], r["interval"], r["psnr_pooled"])
                    for r in sel
                    if r["order"] == order
                )
                label = "reuse" if order == 0 else f"forecast order {order}"
                line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{label}, per-sample mean")[0]
                ax.plot(
                    [p[0] for p in pts],
                    [p[3] for p in pts],
                    "o--",
                    color=line.get_color(),
                    alpha=0.5,
                    label=f"{label}, pooled",
                )
                for bx, py, iv, _ in pts:
                    ax.annotate(str(iv), (bx, py), textcoords="offset points", xytext=(3, 3), fontsize=7)
            ax.set_title(sampler)
            ax.set_xlabel("speedup (FLOP bound, 1 / block fraction; labels: interval)")
            ax.set_ylabel("PSNR vs uncached (dB; solid: per-sample mean, dashed: pooled)")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(stem + ".png", dpi=110)
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=100, help="DDIM samples")
    p.add_argument("--ddpm-samples", type=int, default=100)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--ddpm-steps", type=int, default=250)
    p.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 4, 6, 8])
    p.add_argument("--ddpm-intervals", type=int, nargs="+", default=None)
    p.add_argument("--orders", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shallow", type=int, default=1)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patch", type=int, default=2, help="patch size of the self-trained fallback model")
    p.add_argument("--train-iters", type=int, default=600)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--model-cache", default="/tmp/skipdit_forecast_model.pt")
    p.add_argument("--tag", default="cpu")
    p.add_argument("--out", default=RESULTS, help="results directory")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = report.environment()
    model, desc = load_model(args)
    meta = dict(
        date=datetime.date.today().isoformat(), device=f"{args.tag}: {env['name']}, {args.threads} threads", model=desc,
        environment=env,
        settings=f"shallow_blocks {args.shallow}, CFG {args.cfg}, seed {args.seed}, DDIM-{args.ddim_steps} x "
        f"{args.samples} samples, DDPM-{args.ddpm_steps} x {args.ddpm_samples} samples, fp32",
    )  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"forecast-fidelity-{args.tag}-{meta['date']}")
    rows: list[dict] = []
    if args.samples:
        run_sampler(model, "ddim", args.ddim_steps, args.samples, args.intervals, args.orders, args, rows)
        write(rows, meta, stem)
    if args.ddpm_samples:
        run_sampler(model, "ddpm", args.ddpm_steps, args.ddpm_samples, args.ddpm_intervals or args.intervals,
                    args.orders, args, rows)  # fmt: skip
        write(rows, meta, stem)
    print(f"wrote {stem}.md/.json/.png")


if __name__ == "__main__":
    main()
