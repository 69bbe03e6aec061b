"""Skip-DiT's claims at toy scale, on the bundled models (16x16 digits): a markdown report with plots.

    python bench/quality/paper_claims.py                    # writes bench/results/paper-claims/{report.md,*.png,results.json}
    python bench/quality/paper_claims.py --samples 200      # more samples (slower)

1. Training convergence: loss and Frechet distance (digit-classifier features, 100 EMA samples,
   DDIM-20, no guidance, against all 1797 digits) against step, DiT vs SkipDiT of identical size and
   recipe, read from the logs of the bundled training runs (bench/results/training/*/log.jsonl).
2. Caching fidelity at equal speedup: SkipDiT + Skip-Cache vs DiT + the vanilla (FORA-style) cache of
   the same middle blocks' residual; both run the same 2*shallow outer blocks on a cached step.
   PSNR / SSIM against each model's own uncached samples from the same noise, classifier accuracy,
   Frechet distance to the real digits; wall and CPU time, all configurations interleaved round by
   round (--timing-rounds; medians, min-max).
3. Feature stability: cosine similarity of each block's output between adjacent sampling steps
   (forward hooks on model.blocks), uncached, DiT vs SkipDiT.
Numbers are reported as they fall.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.evaluation.bundled import load_bundled  # noqa: E402
from skipdit_kernels.evaluation.metrics import (
    classifier_accuracy,
    classifier_features,
    frechet_distance,
    psnr,
)  # noqa: E402
from skipdit_kernels.evaluation.metrics import (
    fidelity as score_fidelity,
)
from skipdit_kernels.io.images import save_grid  # noqa: E402
from skipdit_kernels.training.data import load_digits_tensors  # noqa: E402

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, BENCH)
import report as bench_report  # noqa: E402  (the benchmarks' timer; ``report`` here is the list of lines)

TRAINING = os.path.join(BENCH, "results", "training")
OUT = os.path.join(BENCH, "results", "paper-claims")
NAMES = {"skipdit": "SkipDiT + Skip-Cache", "dit": "DiT + residual cache"}


def read_log(name: str) -> list[dict]:
    path = os.path.join(TRAINING, name, "log.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def load_models(args):
    if args.models_from:  # run folders (fp32 EMA weights), e.g. while training is still going
        return {
            n: sk.load_checkpoint(os.path.join(args.models_from, n, "model.safetensors")).eval()
            for n in ("skipdit", "dit")
        }
    return {n: load_bundled(n) for n in ("skipdit", "dit")}


def convergence(report: list[str], results: dict) -> None:
    logs = {n: read_log(n) for n in ("skipdit", "dit")}
    if not all(logs.values()):
        report.append("_No training logs found under bench/results/training/; convergence skipped._\n")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in logs.items():
        label = {"skipdit": "SkipDiT", "dit": "DiT"}[name]
        axes[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
        ev = [r for r in rows if "fd" in r]
        axes[1].plot([r["step"] for r in ev], [r["fd"] for r in ev], marker="o", label=label)
    axes[0].set(xlabel="step", ylabel="training loss (mse + vb, mean of 50 steps)", yscale="log", title="loss")
    axes[1].set(
        xlabel="step", ylabel="Frechet distance (classifier features)", yscale="log", title="FD of 100 EMA samples"
    )
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "convergence.png"), dpi=110)
    plt.close(fig)
    evals = {n: {r["step"]: r for r in rows if "fd" in r} for n, rows in logs.items()}
    steps = sorted(set(evals["skipdit"]) & set(evals["dit"]))
    report.append(
        "| step | SkipDiT loss | DiT loss | SkipDiT FD | DiT FD | SkipDiT acc | DiT acc |\n|---|---|---|---|---|---|---|"
    )
    for s in steps:
        a, b = evals["skipdit"][s], evals["dit"][s]
        report.append(
            f"| {s} | {a['loss']:.4f} | {b['loss']:.4f} | {a['fd']:.2f} | {b['fd']:.2f} | "
            f"{a['accuracy']:.0%} | {b['accuracy']:.0%} |"
        )
    report.append("\n(loss: mean of the 50 steps before; FD and accuracy: 100 EMA samples, DDIM-20, no guidance.)\n")
    report.append("![convergence](convergence.png)\n")
    results["convergence"] = {n: [evals[n][s] for s in steps] for n in evals}
    first = {n: next((s for s in steps if evals[n][s]["fd"] < 2 * evals[n][steps[-1]]["fd"]), None) for n in evals}
    results["convergence_first_step_within_2x_final_fd"] = first


def fidelity(models, classifier, real_feats, report, results, args) -> None:
    labels = torch.arange(10).repeat_interleave(args.samples // 10)
    configs = [(name, interval) for name in models for interval in (1, *args.intervals)]
    outputs = {}

    def run(name, interval):
        cache = sk.SkipCache(interval=interval, shallow_blocks=args.shallow) if interval > 1 else None
        x, info = sk.sample(
            models[name],
            labels,
            steps=args.steps,
            method="ddim",
            cfg_scale=args.cfg,
            cache=cache,
            seed=args.seed,
            progress=False,
            return_info=True,
        )
        outputs[name, interval] = x.clamp(-1, 1), info  # the same samples every round (fixed seed)

    for model in models.values():
        sk.sample(model, labels[:2], steps=2, method="ddim", cfg_scale=args.cfg, progress=False)  # warm-up
    # Every configuration once per round, round by round, so load drifts on the shared machine hit all alike.
    timing = bench_report.time_fns(
        {f"{n}/{i}": (lambda n=n, i=i: run(n, i)) for n, i in configs},
        min_rounds=args.timing_rounds,
        max_rounds=args.timing_rounds,
        budget_s=0.0,
        warmup=0,
    )
    failed = {k: v["error"] for k, v in timing.items() if "error" in v}
    if failed:
        raise RuntimeError(f"sampling failed: {failed}")
    results["timing_s"] = bench_report.summary(timing, scale=1.0)
    rows = []
    for name, interval in configs:
        x, info = outputs[name, interval]
        ref = outputs[name, 1][0]
        t, t_ref = timing[f"{name}/{interval}"], timing[f"{name}/1"]
        if interval == 1:
            save_grid(x, os.path.join(OUT, f"samples-{name}-full.png"), nrow=args.samples // 10, scale=3)
        if interval == 3:
            save_grid(x, os.path.join(OUT, f"samples-{name}-cache{interval}.png"), nrow=args.samples // 10, scale=3)
        frac = (info.full_steps * models[name].depth + info.cached_steps * 2 * args.shallow) / (
            (info.full_steps + info.cached_steps) * models[name].depth
        )
        rows.append(
            dict(
                model=name,
                interval=interval,
                seconds=t["median_s"],
                seconds_min=t["min_s"],
                seconds_max=t["max_s"],
                speedup=bench_report.round_ratio(timing, f"{name}/{interval}", f"{name}/1")["ratio"],
                cpu_seconds=t["cpu_median_s"],
                cpu_speedup=t_ref["cpu_median_s"] / t["cpu_median_s"],
                **score_fidelity(x, ref),
                accuracy=classifier_accuracy(classifier, x, labels),
                fd=frechet_distance(classifier_features(classifier, x), real_feats),
                block_fraction=frac,
            )
        )
        if interval > 1:
            print(
                f"  {name} interval {interval}: PSNR {rows[-1]['psnr_mean']:.2f} (pooled {rows[-1]['psnr_pooled']:.2f}) "
                f"SSIM {rows[-1]['ssim_mean']:.3f}",
                flush=True,
            )
    results["fidelity"] = rows
    report.append(
        "| model | cache interval | blocks run (fraction) | wall s (min-max) | speedup | CPU s | CPU-time speedup | "
        "PSNR dB vs own uncached: mean | pooled | worst 5% | SSIM: mean | worst 5% | classifier acc | FD |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        label = (
            NAMES[r["model"]]
            if r["interval"] > 1
            else r["model"].replace("skipdit", "SkipDiT").replace("dit", "DiT") + " uncached"
        )
        report.append(
            f"| {label} | {r['interval'] if r['interval'] > 1 else '-'} | {r['block_fraction']:.2f} | "
            f"{r['seconds']:.2f} ({r['seconds_min']:.2f}-{r['seconds_max']:.2f}) | {r['speedup']:.2f}x | {r['cpu_seconds']:.2f} | {r['cpu_speedup']:.2f}x | {r['psnr_mean']:.2f} | {r['psnr_pooled']:.2f} | "
            f"{r['psnr_worst']:.2f} | {r['ssim_mean']:.4f} | {r['ssim_worst']:.4f} | "
            f"{r['accuracy']:.0%} | {r['fd']:.2f} |"
        )
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for name in models:
        rs = [r for r in rows if r["model"] == name and r["interval"] > 1]
        iv = [r["interval"] for r in rs]
        label = NAMES[name]
        line = axes[0].plot(iv, [r["psnr_mean"] for r in rs], marker="o", label=f"{label}, per-sample mean")[0]
        axes[0].plot(
            iv, [r["psnr_pooled"] for r in rs], marker="o", ls="--", color=line.get_color(), label=f"{label}, pooled"
        )
        axes[1].plot(iv, [r["ssim_mean"] for r in rs], marker="o", label=label)
        base = next(r for r in rows if r["model"] == name and r["interval"] == 1)
        axes[2].plot([1] + iv, [base["accuracy"]] + [r["accuracy"] for r in rs], marker="o", label=label)
        axes[3].plot([1] + iv, [base["fd"]] + [r["fd"] for r in rs], marker="o", label=label)
    for ax, title in zip(
        axes,
        [
            "PSNR vs own uncached (dB)",
            "SSIM vs own uncached (per-sample mean)",
            "classifier accuracy",
            "Frechet distance",
        ],
    ):
        ax.set(xlabel="cache interval (1 = uncached)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "fidelity.png"), dpi=110)
    plt.close(fig)
    report.append("\n![fidelity](fidelity.png)\n")


@torch.no_grad()
def stability(models, report, results, args) -> None:
    labels = torch.arange(10).repeat_interleave(max(1, args.stability_samples // 10))
    curves, per_step, cached = {}, {}, {}
    for name, model in models.items():
        outputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(model.depth)}
        handles = [
            blk.register_forward_hook(lambda m, inp, out, i=i: outputs[i].append(out.detach().float().clone()))
            for i, blk in enumerate(model.blocks)
        ]
        try:
            sk.sample(
                model, labels, steps=args.steps, method="ddim", cfg_scale=args.cfg, seed=args.seed, progress=False
            )
        finally:
            for h in handles:
                h.remove()
        sims = np.zeros((model.depth, args.steps - 1))
        for i, outs in outputs.items():
            for s in range(1, len(outs)):
                a, b = outs[s - 1].flatten(1), outs[s].flatten(1)
                sims[i, s - 1] = torch.nn.functional.cosine_similarity(a, b, dim=1).mean().item()
        curves[name] = sims.mean(1)
        per_step[name] = sims
        # the quantity each cache reuses on a cached step: SkipDiT, the input of block depth-shallow
        # (= output of block depth-shallow-1); DiT, the middle blocks' residual out[depth-shallow-1] - out[shallow-1]
        k = model.depth - args.shallow - 1
        feats = [
            outputs[k][s] - (0 if name == "skipdit" else outputs[args.shallow - 1][s]) for s in range(len(outputs[k]))
        ]
        cached[name] = [
            torch.nn.functional.cosine_similarity(feats[s - 1].flatten(1), feats[s].flatten(1), dim=1).mean().item()
            for s in range(1, len(feats))
        ]
    results["stability"] = {n: c.tolist() for n, c in curves.items()}
    results["cached_feature_stability"] = {n: float(np.mean(c)) for n, c in cached.items()}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, c in curves.items():
        label = {"skipdit": "SkipDiT", "dit": "DiT"}[name]
        axes[0].plot(range(len(c)), c, marker="o", label=label)
        mid = len(c) // 2 - 1
        axes[1].plot(range(1, args.steps), per_step[name][mid], label=f"{label}, block {mid}")
    for name, c in cached.items():
        label = {"skipdit": "SkipDiT: skip-cached input", "dit": "DiT: cached middle residual"}[name]
        axes[1].plot(range(1, len(c) + 1), c, linestyle="--", label=label)
    axes[0].set(xlabel="block", ylabel="mean cosine similarity", title="block output, adjacent DDIM steps")
    axes[1].set(
        xlabel="sampling step (noise -> image)",
        ylabel="cosine similarity",
        title="middle block and cached feature over the trajectory",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "stability.png"), dpi=110)
    plt.close(fig)
    report.append("| block | " + " | ".join(str(i) for i in range(len(curves["skipdit"]))) + " |")
    report.append("|---" * (len(curves["skipdit"]) + 1) + "|")
    for name, c in curves.items():
        report.append(f"| {'SkipDiT' if name == 'skipdit' else 'DiT'} | " + " | ".join(f"{v:.4f}" for v in c) + " |")
    report.append(
        f"\nThe quantity each cache actually reuses (shallow {args.shallow}): for SkipDiT the input of block "
        f"{len(curves['skipdit']) - args.shallow} (Skip-Cache), for DiT the residual added by blocks "
        f"{args.shallow}..{len(curves['dit']) - args.shallow - 1} (FORA-style). Mean cosine similarity between "
        "adjacent steps (min over the trajectory):\n"
    )
    report.append("| model | cached feature, mean | min |\n|---|---|---|")
    for name, c in cached.items():
        report.append(f"| {'SkipDiT' if name == 'skipdit' else 'DiT'} | {np.mean(c):.4f} | {np.min(c):.4f} |")
    report.append("\n![stability](stability.png)\n")


def fp16_check(models, report, results, args) -> None:
    """The assets are stored in fp16; compare samples of the fp32 run-folder weights, if present."""
    rows = []
    labels = torch.arange(10)
    for name, model in models.items():
        path = os.path.join(TRAINING, name, "model.safetensors")
        if not os.path.exists(path):
            continue
        full = sk.load_checkpoint(path).eval()
        a = sk.sample(full, labels, steps=args.steps, method="ddim", cfg_scale=args.cfg, seed=args.seed, progress=False)
        b = sk.sample(
            model, labels, steps=args.steps, method="ddim", cfg_scale=args.cfg, seed=args.seed, progress=False
        )
        rows.append((name, psnr(a.clamp(-1, 1), b.clamp(-1, 1))))
    if rows:
        results["fp16_storage_psnr"] = dict(rows)
        report.append(
            "fp16 storage: PSNR of samples from the shipped fp16 weights vs the fp32 EMA weights of the run "
            "folder (10 samples, same noise): " + ", ".join(f"{n} {p:.1f} dB" for n, p in rows) + ".\n"
        )


def main(argv=None) -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=100, help="samples per configuration (10 per digit)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--shallow", type=int, default=1)
    p.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--stability-samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing-rounds", type=int, default=3, help="interleaved rounds of every configuration (medians)")
    p.add_argument("--threads", type=int, default=1, help="1 on a shared CPU (2 threads spin against other jobs)")
    p.add_argument(
        "--models-from", default=None, help="load run folders DIR/{skipdit,dit}/model.safetensors instead of the assets"
    )
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    OUT = args.out
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(args.threads)
    env = bench_report.environment()
    started = time.perf_counter()
    models = load_models(args)
    classifier = load_bundled("classifier")
    real_x, _ = load_digits_tensors()
    real_feats = classifier_features(classifier, real_x)
    cfg = models["skipdit"].config
    results: dict = dict(args=vars(args), config=cfg)
    report = [
        "# Skip-DiT's claims at toy scale (bundled 16x16 digit models)\n",
        f"Generated by `python bench/quality/paper_claims.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
        f"{datetime.date.today()}, {env['name']}, torch {torch.__version__}, {args.threads} threads.\n",
        f"Models: SkipDiT and DiT of identical size ({json.dumps({k: cfg[k] for k in ('input_size', 'patch_size', 'hidden_size', 'depth', 'num_heads', 'learn_sigma')})}), "
        "trained with the same recipe and seed by `bench/training/train_bundled.sh` (see bench/results/training/). "
        "Frechet distances (FD) are in the 64-d feature space of the bundled digit classifier "
        "(held-out accuracy in bench/results/training/classifier.log), against all 1797 real digits; they "
        f"are not FIDs and, from {args.samples} samples, are biased upward (compare them with each other only). "
        "For scale: FD of every fifth real digit against all 1797 is "
        f"{frechet_distance(real_feats[::5], real_feats):.2f}.\n",
        "## 1. Training convergence\n",
    ]
    convergence(report, results)
    report.append(
        f"## 2. Caching fidelity at equal compute\n\n{args.samples} samples (10 per digit), DDIM-{args.steps}, "
        f"CFG {args.cfg:g}, seed {args.seed}; cached steps run only {args.shallow} block(s) on each side "
        f"(2*{args.shallow} of {cfg['depth']}) in both models: SkipDiT reuses the input of block "
        f"{cfg['depth'] - args.shallow} (Skip-Cache), DiT reuses the middle blocks' residual "
        "(FORA/DeepCache-style). PSNR/SSIM compare each model with its own uncached samples from the "
        "same noise, scored per sample (mean, and the mean of the worst 5%) and pooled (one MSE over all "
        "samples, which a few badly-off samples dominate); SSIM pooled over all windows equals its mean. "
        f"Times: every configuration runs once per round, {args.timing_rounds} rounds interleaved; wall "
        "s = median (min-max), speedup = median of the per-round ratios to the same model uncached. On a "
        "shared machine the CPU time of this process (time.process_time, median) is the steadier measure "
        "of the work saved.\n"
    )
    print("fidelity ...", flush=True)
    fidelity(models, classifier, real_feats, report, results, args)
    report.append(
        f"## 3. Feature stability\n\nMean cosine similarity of each block's output between adjacent "
        f"steps of an uncached DDIM-{args.steps} run (CFG {args.cfg:g}, {len(torch.arange(10).repeat_interleave(max(1, args.stability_samples // 10)))} "
        "samples, both CFG halves), averaged over the trajectory.\n"
    )
    print("stability ...", flush=True)
    stability(models, report, results, args)
    report.append("## Summary (numbers as they fell)\n")
    conv = results.get("convergence")
    if conv:
        a, b = conv["skipdit"][-1], conv["dit"][-1]
        report.append(
            f"- Convergence: at step {a['step']} SkipDiT reaches FD {a['fd']:.1f} / accuracy {a['accuracy']:.0%} "
            f"(no guidance) vs DiT {b['fd']:.1f} / {b['accuracy']:.0%}; training losses {a['loss']:.4f} vs {b['loss']:.4f}."
        )
    for iv in args.intervals:
        rs = {r["model"]: r for r in results["fidelity"] if r["interval"] == iv}
        report.append(
            f"- Interval {iv} (same blocks run by both): PSNR {rs['skipdit']['psnr_mean']:.1f} dB per-sample mean, "
            f"{rs['skipdit']['psnr_pooled']:.1f} pooled (SkipDiT + Skip-Cache) vs {rs['dit']['psnr_mean']:.1f} / "
            f"{rs['dit']['psnr_pooled']:.1f} dB (DiT + residual cache); SSIM {rs['skipdit']['ssim_mean']:.4f} vs "
            f"{rs['dit']['ssim_mean']:.4f}."
        )
    cs = results["cached_feature_stability"]
    st = {n: np.asarray(c) for n, c in results["stability"].items()}
    deep = slice(args.shallow, len(st["skipdit"]) - args.shallow)
    report.append(
        f"- Feature stability: adjacent-step cosine similarity of block outputs is at least "
        f"{min(c.min() for c in st.values()):.4f} for every block of both models; over the cached middle blocks "
        f"it averages {st['skipdit'][deep].mean():.4f} (SkipDiT) vs {st['dit'][deep].mean():.4f} (DiT), and the "
        f"cached features themselves {cs['skipdit']:.4f} vs {cs['dit']:.4f}. Compare the size of these gaps with "
        "the PSNR gaps above.\n"
    )
    report.append("## Notes\n")
    report.append(
        "FD with guidance (section 2, CFG 3) is higher than the unguided FD of section 1: guidance trades "
        "diversity for class fidelity. Cached runs come out with slightly lower FD than uncached ones for both "
        "models, which we read as caching slightly weakening the effect of guidance, not as better samples.\n"
    )
    fp16_check(models, report, results, args)
    report.append(f"Runtime of this script: {time.perf_counter() - started:.0f} s.\n")
    env["load_average_end"] = bench_report.load_average()
    results["environment"] = env
    report.insert(2, bench_report.load_line(env) + "\n")  # after the header: the load at start and end
    with open(os.path.join(OUT, "report.md"), "w") as f:
        f.write("\n".join(report) + "\n")
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    print(f"wrote {os.path.join(OUT, 'report.md')} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
