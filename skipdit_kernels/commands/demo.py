"""``skipdit demo``: the bundled SkipDiT samples a 10x10 digit grid (row r = digit r) twice from the
same noise, with full compute and with Skip-Cache, and reports wall times, speedup and fidelity."""
from __future__ import annotations

import os
import time

from skipdit_kernels.commands._common import guidance_scale, positive_int

OUTPUTS = ("demo_full.png", "demo_skipcache.png", "demo_compare.png")


def configure(parser) -> None:
    parser.add_argument("--model", choices=["skipdit", "dit"], default="skipdit",
                        help="bundled model (dit: plain DiT, cached FORA-style)")
    parser.add_argument("--steps", type=positive_int, default=50)
    parser.add_argument("--method", choices=["ddim", "ddpm"], default="ddim")
    parser.add_argument("--cfg", type=guidance_scale, default=3.0, help="classifier-free guidance scale, >= 1 (1 = off)")
    parser.add_argument("--cache", type=positive_int, default=3, help="Skip-Cache interval")
    parser.add_argument("--shallow", type=positive_int, default=1, help="Skip-Cache shallow blocks on each side")
    parser.add_argument("--per-class", type=positive_int, default=10, help="samples per digit (grid columns)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--scale", type=positive_int, default=4, help="PNG upscaling factor (nearest neighbour)")
    parser.add_argument("--out-dir", default=".", help=f"writes {', '.join(OUTPUTS)} here "
                        "(the last: full | Skip-Cache | difference x10, labelled)")
    parser.add_argument("--progress", action="store_true")


def run_demo(args) -> dict:
    import torch

    from skipdit_kernels import SkipCache, sample
    from skipdit_kernels.embedded import load_bundled
    from skipdit_kernels.images import save_comparison, save_grid
    from skipdit_kernels.metrics import classifier_accuracy, psnr, ssim

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_bundled(args.model)
    classifier = load_bundled("classifier")
    labels = torch.arange(10).repeat_interleave(args.per_class)
    cache = SkipCache(interval=args.cache, shallow_blocks=args.shallow)
    common = dict(steps=args.steps, method=args.method, cfg_scale=args.cfg, seed=args.seed, progress=args.progress)
    sample(model, labels[:2], steps=2, method="ddim", cfg_scale=args.cfg, progress=False)  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    full = sample(model, labels, cache=None, **common).clamp(-1, 1)
    t_full, c_full = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    cached, info = sample(model, labels, cache=cache, return_info=True, **common)
    cached = cached.clamp(-1, 1)
    t_cached, c_cached = time.perf_counter() - started, time.process_time() - cpu
    os.makedirs(args.out_dir, exist_ok=True)
    paths = [os.path.join(args.out_dir, name) for name in OUTPUTS]
    save_grid(full, paths[0], nrow=args.per_class, scale=args.scale)
    save_grid(cached, paths[1], nrow=args.per_class, scale=args.scale)
    save_comparison(full, cached, paths[2], (f"full compute, {args.steps} steps",
                                             f"Skip-Cache {info.full_steps} full + {info.cached_steps} cached"),
                    nrow=args.per_class, scale=args.scale)
    return dict(
        seconds_full=t_full, seconds_cached=t_cached, speedup=t_full / t_cached,
        cpu_seconds_full=c_full, cpu_seconds_cached=c_cached,
        full_steps=info.full_steps, cached_steps=info.cached_steps,
        psnr=psnr(cached, full), ssim=ssim(cached, full),
        accuracy_full=classifier_accuracy(classifier, full, labels),
        accuracy_cached=classifier_accuracy(classifier, cached, labels), paths=paths,
    )


def run(args) -> int:
    import torch

    total = time.perf_counter()
    r = run_demo(args)
    print(f"bundled {args.model}: {10 * args.per_class} digits, {args.method.upper()}-{args.steps}, CFG {args.cfg:g}, "
          f"{torch.get_num_threads()} threads")
    print(f"  full compute         {r['seconds_full']:6.2f} s wall  ({r['cpu_seconds_full']:.2f} s CPU)")
    print(f"  Skip-Cache           {r['seconds_cached']:6.2f} s wall  ({r['cpu_seconds_cached']:.2f} s CPU; interval "
          f"{args.cache}, shallow {args.shallow}: {r['full_steps']} full + {r['cached_steps']} cached steps)")
    print(f"  speedup              {r['speedup']:6.2f}x wall  ({r['cpu_seconds_full'] / r['cpu_seconds_cached']:.2f}x CPU)")
    print(f"  fidelity (cached vs full): PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}")
    print(f"  classifier accuracy: full {r['accuracy_full']:.1%}, Skip-Cache {r['accuracy_cached']:.1%}")
    print(f"  wrote {', '.join(r['paths'])}  (total {time.perf_counter() - total:.1f} s)")
    return 0
