"""``skipdit demo``: the bundled SkipDiT samples a 10x4 digit grid (row r = digit r) three times from
the same noise: full compute, the paper's "almost free" Skip-Cache (reuse at interval 2) and the
quality-matched ``SkipCache.preset("fast")`` (forecast at interval 4 after a warm start), and reports
wall times, speedups, fidelity against full compute and classifier accuracy, with a side-by-side
picture (rows labelled by digit). Timing: every variant first runs once untimed at the timed batch
(so no variant pays the first call's allocations), then the variants run in interleaved rounds;
each speedup is the median of the per-round ratios, printed with their range and the schedule's
FLOP bound, and a busy machine is said on screen (``_timing``).

``skipdit demo --video``: the same for the bundled class-to-video LatteSkip (8 frames of a digit
moving on a 16x16 canvas; row r = digit r): full compute, the release's class-to-video schedule
``SkipCache.preset("latte-c2v")`` (reuse at interval 2 while 900 > t > 49) and ``"fast"``, written as
one animated GIF of the panels side by side (fidelity per video; accuracy per frame: the bundled
classifier on each frame cropped to the digit, ``metrics.frame_accuracy``)."""

from __future__ import annotations

import os
import statistics
import time

from skipdit_kernels.commands._common import check_output_dir, guidance_scale, positive_int
from skipdit_kernels.commands._timing import (
    add_threads_option,
    flop_bound,
    interleaved_rounds,
    speedup,
    timing_basis,
)

OUTPUTS = ("demo_full.png", "demo_paper.png", "demo_fast.png", "demo_compare.png")
VIDEO_OUTPUTS = ("demo_video.gif",)
VARIANTS = ("full", "paper", "fast")


def configure(parser) -> None:
    parser.add_argument(
        "--model",
        choices=["skipdit", "dit"],
        default="skipdit",
        help="bundled model (dit: plain DiT, cached FORA-style)",
    )
    parser.add_argument(
        "--video",
        action="store_true",
        help="the bundled class-to-video LatteSkip instead (moving digits), "
        f"'paper' = SkipCache.preset('latte-c2v'); writes {VIDEO_OUTPUTS[0]}",
    )
    parser.add_argument("--steps", type=positive_int, default=50)
    parser.add_argument(
        "--method",
        choices=["ddim", "ddpm"],
        default="ddim",
        help="ddim (deterministic: 'fast' forecasts) or ddpm (stochastic: 'fast' is the paper's reuse)",
    )
    parser.add_argument(
        "--cfg", type=guidance_scale, default=3.0, help="classifier-free guidance scale, >= 1 (1 = off)"
    )
    parser.add_argument(
        "--shallow",
        type=positive_int,
        default=1,
        help="shallow blocks (video: block pairs) of the paper's schedule (reuse at interval 2)",
    )
    parser.add_argument(
        "--per-class",
        type=positive_int,
        default=None,
        help="samples per digit (grid columns); default 4, with --video 1",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_threads_option(parser)
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="timing rounds (variants interleaved, order reversed every other round; speedups are "
        "the medians of the per-round ratios, with their range)",
    )
    parser.add_argument("--scale", type=positive_int, default=4, help="PNG upscaling factor (nearest neighbour)")
    parser.add_argument(
        "--out-dir",
        default=".",
        help=f"writes {', '.join(OUTPUTS)} here "
        "(the last: full | paper | fast | difference x10, labelled, rows = digits 0-9); with --video the same "
        f"comparison as {VIDEO_OUTPUTS[0]}",
    )
    parser.add_argument("--progress", action="store_true")


def run_demo(args) -> dict:
    """Sample, time and score the three variants; ``args`` as parsed (threads already pinned)."""
    import torch

    from skipdit_kernels import SkipCache, sample
    from skipdit_kernels.cache import as_skip_stack
    from skipdit_kernels.evaluation.bundled import load_bundled
    from skipdit_kernels.evaluation.metrics import classifier_accuracy, fidelity, frame_accuracy
    from skipdit_kernels.io.images import save_comparison, save_comparison_gif, save_grid

    per_class = per_class_of(args)
    model = load_bundled("latte" if args.video else args.model)
    classifier = load_bundled("classifier")
    labels = torch.arange(10).repeat_interleave(per_class)
    paper = (
        SkipCache.preset("latte-c2v", shallow_blocks=args.shallow)
        if args.video
        else SkipCache(interval=2, shallow_blocks=args.shallow)
    )
    caches = {"full": None, "paper": paper, "fast": "fast"}
    common = dict(steps=args.steps, method=args.method, cfg_scale=args.cfg, seed=args.seed, progress=args.progress)
    results = {}

    def run(variant):
        def call():
            images, info = sample(model, labels, cache=caches[variant], return_info=True, **common)
            results[variant] = (images.clamp(-1, 1), info)

        return call

    runs = {v: run(v) for v in VARIANTS}
    for variant in VARIANTS:  # warm-up at the timed batch: first-call costs stay out of every round
        sample(model, labels, cache=caches[variant], **{**common, "steps": min(args.steps, 4), "progress": False})
    timings = interleaved_rounds(runs, args.rounds)
    basis = timing_basis(torch.get_num_threads())
    num_units = as_skip_stack(model).num_units
    full = results["full"][0]
    report = {}
    for variant in VARIANTS:
        images, info = results[variant]
        bound = (
            None
            if info.cache is None
            else flop_bound(info.full_steps, info.cached_steps, num_units, info.cache.shallow_blocks)
        )
        report[variant] = dict(
            seconds=statistics.median(timings[variant].wall),
            cpu_seconds=statistics.median(timings[variant].cpu),
            timing=timings[variant],
            basis=basis,
            speedup=speedup(timings[variant].of(basis), timings["full"].of(basis), bound),
            full_steps=info.full_steps,
            cached_steps=info.cached_steps,
            cache=info.cache,
            accuracy=(
                frame_accuracy(classifier, images, labels)[0]
                if args.video
                else classifier_accuracy(classifier, images, labels)
            ),
            # videos (N, F, C, H, W) are scored per video: frames as channels
            **(
                {}
                if variant == "full"
                else fidelity(images.flatten(1, 2), full.flatten(1, 2))
                if args.video
                else fidelity(images, full)
            ),
        )
    titles = {v: f"{v}, {report[v]['speedup'].median:.2f}x" for v in VARIANTS}
    rows = [str(d) for d in range(10)]
    if args.video:
        path = os.path.join(args.out_dir, VIDEO_OUTPUTS[0])
        save_comparison_gif(
            [(titles[v], results[v][0]) for v in VARIANTS], path, nrow=per_class, scale=args.scale, row_labels=rows
        )
        return dict(variants=report, paths=[path])
    paths = [os.path.join(args.out_dir, name) for name in OUTPUTS]
    for variant, path in zip(VARIANTS, paths):
        save_grid(results[variant][0], path, nrow=per_class, scale=args.scale)
    save_comparison(
        [(titles[v], results[v][0]) for v in VARIANTS], paths[-1], nrow=per_class, scale=args.scale, row_labels=rows
    )
    return dict(variants=report, paths=paths)


def per_class_of(args) -> int:
    return args.per_class or (1 if args.video else 4)


def describe(cache) -> str:
    if cache is None:
        return "every block at every step"
    start = "" if cache.start_t >= 1000 else f", full while t >= {cache.start_t:g}"
    start += f", reset after t <= {cache.stop_t:g}"
    kind = "reuse" if not cache.forecast else f"forecast order {cache.forecast}"
    return f"{kind}, interval {cache.interval}, shallow {cache.shallow_blocks}{start}"


def run(args) -> int:
    from skipdit_kernels.commands._timing import busy_note, load_average, pin_threads

    total = time.perf_counter()
    check_output_dir("--out-dir", args.out_dir)
    threads = pin_threads(args.threads)
    load = load_average()
    r = run_demo(args)
    what = "LatteSkip: {} videos of 8 frames" if args.video else args.model + ": {} digits"
    print(
        f"bundled {what.format(10 * per_class_of(args))}, {args.method.upper()}-{args.steps}, CFG {args.cfg:g}, "
        f"{threads}"
    )
    basis = r["variants"]["full"]["basis"]
    print(
        f"  timed: {args.rounds} interleaved round(s) after an untimed warm-up of each variant; seconds = medians; "
        f"speedup = median of the per-round ratios of {'CPU time (1 thread)' if basis == 'cpu' else 'wall time'} "
        "(their range), <= the schedule's FLOP bound"
    )
    print(
        "                 wall s   CPU s  speedup (range) <= bound    steps full+cached  PSNR mean / pooled / worst 5%"
        "   SSIM mean  accuracy"
    )
    for variant in VARIANTS:
        v = r["variants"][variant]
        s = v["speedup"]
        speed = f"{s.median:.2f}x" + ("" if s.bound is None else f" ({s.low:.2f}-{s.high:.2f}) <= {s.bound:.2f}x")
        fid = (
            "      (reference)                    "
            if variant == "full"
            else f"  {v['psnr_mean']:6.2f} / {v['psnr_pooled']:6.2f} / {v['psnr_worst']:6.2f} dB  {v['ssim_mean']:.4f} "
        )
        accuracy = f"  {v['accuracy']:7.1%}"
        print(
            f"  {variant:<6} {v['seconds']:12.2f} {v['cpu_seconds']:7.2f}  {speed:<26} {v['full_steps']:5d} + {v['cached_steps']:<5d}"
            f"   {fid}{accuracy}"
        )
    for variant in VARIANTS:
        print(f"  {variant}: {describe(r['variants'][variant]['cache'])}")
    sample_kind = "video" if args.video else "sample"
    print(
        f"  PSNR per {sample_kind} then averaged (mean), from one MSE over all {sample_kind}s (pooled), "
        "and over the worst 5%; accuracy: the bundled digit classifier's "
        + (
            "on every frame (cropped to the digit): frames read as the video's digit"
            if args.video
            else "on every sample: samples read as the requested digit"
        )
    )
    note = busy_note(load, {v: r["variants"][v]["speedup"] for v in VARIANTS[1:]})
    if note:
        print(f"  {note}")
    print(f"  wrote {', '.join(r['paths'])}  (total {time.perf_counter() - total:.1f} s)")
    return 0
