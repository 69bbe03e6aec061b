"""Class-to-video Latte-skip sampling on CPU: full compute vs Skip-Cache (interval 2/3/4), against
the FLOP bound of each schedule.

    python bench/e2e/bench_video.py                 # the small configuration below, fp32, CPU
    python bench/e2e/bench_video.py --preset xl     # Latte-XL/2, 16 x 256 x 256 (32 x 32 latents): for a GPU

Timing: the two distinct steps of a Skip-Cache trajectory, the model call on the CFG batch (2 x
batch videos; random weights) as a full step and as a cached step (a step-by-step Skip-Cache request
that stays cached: only pairs 0 and P-1 run, the middle comes from the stored state), are timed
round-robin (``report.time_fns``: load drifts hit both alike; medians of many short calls, which
the shared machine's load disturbs far less than whole trajectories). A trajectory's latency is
composed from its schedule's counts, n_full * t_full + n_cached * t_cached; the DDIM update and
guidance (elementwise on the latents) are left out of both. Skip-Cache uses the release's
class-to-video schedule: shallow 1 (pair), full while t >= 900, reset after t < 50
(``stop_t=49``), DDIM. The FLOP bound of a
schedule is the full trajectory's multiply-accumulates over the cached one's, counted analytically
from the pairs each step runs (patch embedding, timestep MLP, per-video adaLN, attention, MLP, skip
linears, final layer); "of bound" = measured speedup / bound (target >= 0.9). The CPU model, thread
count and load average are recorded with the results (the machine is shared: numbers under load are
noisy). Results: bench/results/video-<device tag>.{json,md}. GPU numbers are never produced here.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.models import LatteSkip  # noqa: E402
from skipdit_kernels.sampling import GaussianDiffusion  # noqa: E402

CONFIGS = {
    # 8 frames of 16x16 latents (64 patches per frame), 6 pairs: a trajectory takes seconds on 2 cores.
    "small": dict(input_size=16, patch_size=2, in_channels=4, hidden_size=128, depth=12, num_heads=4, num_frames=8,
                  num_classes=10, extras=2),
    # The released size (ucf101): documented for a GPU run, not run here.
    "xl": dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16, num_frames=16,
               num_classes=101, extras=2),
}  # fmt: skip
INTERVALS = (2, 3, 4)
CFG_SCALE = 4.0


def release_cache(interval: int) -> sk.SkipCache:
    return sk.SkipCache(interval=interval, shallow_blocks=1, start_t=900, stop_t=49)


def step_macs(cfg: dict, batch: int, pairs: list[int]) -> float:
    """Multiply-accumulates of one model call on ``batch`` videos running ``pairs``."""
    d, p, frames = cfg["hidden_size"], cfg["patch_size"], cfg["num_frames"]
    tokens = (cfg["input_size"] // p) ** 2
    cin, mlp, num_pairs = cfg["in_channels"], 4 * d, cfg["depth"] // 2
    cout = 2 * cin
    ft = frames * tokens
    per_video = ft * p * p * cin * d + 256 * d + d * d  # patch embedding, timestep MLP
    per_video += frames * 2 * d * d + ft * d * p * p * cout  # final adaLN (per frame) + linear
    for i in pairs:
        per_video += 2 * 6 * d * d  # adaLN of both blocks, once per video
        per_video += 2 * ft * (4 * d * d + 2 * d * mlp)  # qkv, proj, MLP of both blocks
        per_video += frames * 2 * tokens * tokens * d + tokens * 2 * frames * frames * d  # spatial, temporal attention
        if i >= num_pairs // 2:
            per_video += ft * 2 * d * d  # skip linear
    return float(batch * per_video)


def flop_bound(cfg: dict, diffusion, interval: int) -> float:
    num_pairs = cfg["depth"] // 2
    plan = release_cache(interval).full_steps(diffusion.timesteps)
    full = step_macs(cfg, 1, list(range(num_pairs)))
    cached = step_macs(cfg, 1, [0, num_pairs - 1])
    return len(plan) * full / (plan.count(True) * full + plan.count(False) * cached)


def run(args) -> int:
    torch.manual_seed(0)
    cfg = CONFIGS[args.preset]
    device = torch.device(args.device)
    if args.preset == "xl" and device.type != "cuda":
        print("the xl configuration is for a GPU (--device cuda); refusing to run it on the CPU", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model = LatteSkip(**cfg).eval()
    with torch.no_grad():  # random non-zero weights: the official init zeroes adaLN and the output
        for name, param in model.named_parameters():
            if name not in ("pos_embed", "temp_embed"):
                param.normal_(0, 0.02)
    model.to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * args.batch, *model.latent_shape, generator=g).to(device)
    y = torch.cat([torch.arange(args.batch) % cfg["num_classes"], torch.full((args.batch,), cfg["num_classes"])])
    t = torch.full((2 * args.batch,), 500)
    y, t = y.to(device), t.to(device)
    diffusion = GaussianDiffusion.create(args.steps, method="ddim", learn_sigma=True)
    plain_forward = type(model).forward  # the uncached forward, whatever request is open
    # Interval 10**9 and start_t above every timestep: after its first (full) call the request stays
    # cached for as long as t does not rise.
    request = sk.enable_skip_cache(model, sk.SkipCache(interval=10**9, shallow_blocks=1, start_t=10**4, stop_t=-1))

    def full():
        with torch.no_grad():
            plain_forward(model, x, t, y)

    def cached():
        model(x, t, y)

    info = report.environment(device)
    print(f"{info['name']}, {info['threads']} threads, {report.load_line(info)}", file=sys.stderr)
    try:
        times = report.time_fns({"full": full, "cached": cached}, device, budget_s=args.budget,
                                min_rounds=args.rounds, warmup=2)  # fmt: skip
    finally:
        request.close()
    assert request.full_steps == 1, "the timed request left its cached state"
    t_full, t_cached = times["full"]["median_s"], times["cached"]["median_s"]
    full_s = args.steps * t_full
    rows = []
    for interval in (None, *INTERVALS):
        plan = release_cache(interval).full_steps(diffusion.timesteps) if interval else [True] * args.steps
        latency = plan.count(True) * t_full + plan.count(False) * t_cached
        bound = flop_bound(cfg, diffusion, interval) if interval else 1.0
        speedup = full_s / latency
        rows.append(dict(variant="full" if interval is None else f"skip-cache {interval}", full_steps=plan.count(True),
                         cached_steps=plan.count(False), latency_s=latency, speedup=speedup, flop_bound=bound,
                         of_bound=speedup / bound))  # fmt: skip
    columns = [("variant", "variant"), ("full_steps", "full"), ("cached_steps", "cached"),
               ("latency_s", "latency s"), ("speedup", "speedup"), ("flop_bound", "FLOP bound"),
               ("of_bound", "of bound")]  # fmt: skip
    meta = dict(config=cfg, preset=args.preset, batch=args.batch, cfg_scale=CFG_SCALE, steps=args.steps,
                method="ddim", schedule="SkipCache(interval=k, shallow_blocks=1, start_t=900, stop_t=49)",
                step_times_ms=report.summary(times))  # fmt: skip
    notes = [
        f"Latte-skip {cfg['depth'] // 2} pairs, hidden {cfg['hidden_size']}, {cfg['num_frames']} frames of "
        f"{cfg['input_size']}x{cfg['input_size']} latents, batch {args.batch} with CFG (model batch {2 * args.batch}), "
        f"DDIM-{args.steps}, fp32, random weights. Model step medians over {times['full']['rounds']} interleaved rounds: "
        f"full {t_full * 1e3:.1f} ms ({times['full']['min_s'] * 1e3:.1f}-{times['full']['max_s'] * 1e3:.1f}), "
        f"cached {t_cached * 1e3:.1f} ms ({times['cached']['min_s'] * 1e3:.1f}-{times['cached']['max_s'] * 1e3:.1f}); "
        "latency = n_full * full + n_cached * cached.",
        "Speedups are ratios of medians taken in the same interleaved rounds.",
    ]
    stem = report.write_results("video", rows, columns, meta=meta, device=device, notes=notes, env=info, out_dir=args.out,
                                title="Latte-skip class-to-video sampling: full vs Skip-Cache")  # fmt: skip
    print(report.markdown_table(rows, columns))
    print(f"wrote {stem}.json / .md", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(CONFIGS), default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5, help="minimum interleaved rounds")
    p.add_argument("--budget", type=float, default=120.0, help="seconds of timing to aim for")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=report.RESULTS_DIR, help="results directory")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
