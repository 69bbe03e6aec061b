"""Convert the bundled plain DiT to a SkipDiT, fine-tune it in Skip-DiT's two stages, and compare it
with the original DiT and with the same DiT fine-tuned for the same number of steps.

    nice -n 10 python bench/quality/convert_study.py                    # the full study (CPU, ~30 min, 1 thread)
    python bench/quality/convert_study.py --skip-steps 4 --all-steps 4 --samples 20 --tag smoke   # a smoke run

1. Conversion (``skipdit_kernels.training.convert.convert_dit``) with both skip initialisations; the step-0
   output change (relative L2 vs the original DiT) on held-out noised digits.
2. Fine-tuning on the bundled digits (``skipdit_kernels.training.loop.train``, batch 64, EMA 0.999 with
   warm-up): stage ``skip`` (only the skip branches) for each init, then stage ``all`` from the
   identity run; the plain DiT fine-tuned (stage ``all``) for skip + all steps at stage all's lr.
3. Samples (DDIM-50, CFG 3, 10 per digit, two noise seeds): classifier accuracy and Frechet
   distance (bundled classifier features vs all digits); Skip-Cache fidelity against each model's
   own uncached samples at intervals 2, 3, 4 with one shallow unit each side (equal computed blocks:
   the plain DiT caches its middle units' residual at the same boundary), PSNR per sample (mean) and
   pooled; the cached feature's cosine similarity between adjacent steps (feature stability).

Writes bench/results/convert-study-<tag>.{json,md,png} and the run folders under
bench/results/convert-study-<tag>/ (logs only are kept: the weights are deleted at the end unless
--keep).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.evaluation.bundled import load_bundled  # noqa: E402
from skipdit_kernels.evaluation.metrics import classifier_accuracy, classifier_features, frechet_distance, psnr  # noqa: E402
from skipdit_kernels.training import convert as cv  # noqa: E402
from skipdit_kernels.training.data import load_digits_tensors  # noqa: E402
from skipdit_kernels.training.loop import train  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def loadavg():
    return [round(v, 2) for v in os.getloadavg()]


def finetune(model, out, stage, steps, lr, args, init_from_path=None):
    started = time.perf_counter()
    r = train(
        model,
        "digits",
        steps=steps,
        batch_size=args.batch_size,
        lr=lr,
        ema_decay=0.999,
        grad_clip=1.0,
        seed=args.seed,
        out_dir=out,
        save_every=0,
        log_every=args.log_every,
        progress=False,
        threads=args.threads,
        stage=stage,
        init_from_path=init_from_path,
    )
    return r, time.perf_counter() - started


@torch.no_grad()
def cached_feature_stability(model, labels, args, skip: bool) -> float:
    """Mean cosine similarity between adjacent sampling steps of what a cached step reuses: the
    input of unit L-1 (SkipDiT: the deep state at the boundary) or the middle units' residual (DiT)."""
    outs = {i: [] for i in range(model.depth)}
    hooks = [
        b.register_forward_hook(lambda m, i_, o, i=i: outs[i].append(o.detach().float().clone()))
        for i, b in enumerate(model.blocks)
    ]
    try:
        sk.sample(model, labels, steps=50, method="ddim", cfg_scale=3.0, seed=0, progress=False)
    finally:
        for h in hooks:
            h.remove()
    k = model.depth - 2
    feats = [outs[k][s] - (0 if skip else outs[0][s]) for s in range(len(outs[k]))]
    sims = [
        torch.nn.functional.cosine_similarity(feats[s - 1].flatten(1), feats[s].flatten(1), dim=1).mean().item()
        for s in range(1, len(feats))
    ]
    return float(sum(sims) / len(sims))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-steps", type=int, default=400)
    p.add_argument("--all-steps", type=int, default=400)
    p.add_argument("--skip-lr", type=float, default=1e-3)
    p.add_argument("--all-lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--tag", default=datetime.date.today().isoformat())
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = os.path.join(RESULTS, f"convert-study-{args.tag}")
    os.makedirs(base, exist_ok=True)
    env = report.environment()
    results = dict(args=vars(args), environment=env, load_start=loadavg(), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    t_all = time.perf_counter()

    # 1. conversion and the step-0 change
    dit = load_bundled("dit")
    x, y = load_digits_tensors()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    calibration = cv.calibration_inputs(dit, x[perm[:256]], y[perm[:256]].tolist(), seed=1)
    held_out = cv.calibration_inputs(dit, x[perm[256:768]], y[perm[256:768]].tolist(), seed=2)
    converted = {}
    results["step0"] = {}
    for init in cv.INITS:
        torch.manual_seed(args.seed)
        model, conversion = cv.convert_dit(dit, init, calibration)
        converted[init] = model
        results["step0"][init] = dict(
            relative_error=cv.step0_relative_error(model, held_out),
            carried=len(conversion.carried),
            new=len(conversion.new),
        )
        sk.save_checkpoint(model, os.path.join(base, f"converted-{init}.safetensors"))
    print("step 0:", results["step0"], flush=True)

    # 2. fine-tuning
    runs = {}
    for init in cv.INITS:
        model = sk.SkipDiT(**dit.config)  # init_from_path loads the converted weights
        r, sec = finetune(
            model,
            os.path.join(base, f"skip-{init}"),
            "skip",
            args.skip_steps,
            args.skip_lr,
            args,
            os.path.join(base, f"converted-{init}.safetensors"),
        )
        runs[f"skip-{init}"] = dict(result=r, seconds=sec)
        print(f"stage skip ({init}): {sec:.0f} s", flush=True)
    model = sk.SkipDiT(**dit.config)
    r, sec = finetune(
        model,
        os.path.join(base, "all-identity"),
        "all",
        args.all_steps,
        args.all_lr,
        args,
        os.path.join(base, "skip-identity"),
    )
    runs["all-identity"] = dict(result=r, seconds=sec)
    print(f"stage all: {sec:.0f} s", flush=True)
    plain = sk.DiT(**dit.config)
    r, sec = finetune(
        plain,
        os.path.join(base, "plain-dit"),
        "all",
        args.skip_steps + args.all_steps,
        args.all_lr,
        args,
        sk.bundled.asset_path("dit"),
    )
    runs["plain-dit"] = dict(result=r, seconds=sec)
    print(f"plain DiT fine-tune: {sec:.0f} s", flush=True)
    results["training"] = {}
    for k in runs:  # from the run folders: a rerun of the script resumes finished runs without training
        with open(os.path.join(base, k, "log.jsonl")) as f:
            log = [json.loads(line) for line in f]
        results["training"][k] = dict(seconds=log[-1]["seconds"], log=log)

    # 3. samples
    models = {
        "DiT (bundled)": (dit, False),
        "DiT fine-tuned": (runs["plain-dit"]["result"].ema, False),
        "SkipDiT after skip + all": (runs["all-identity"]["result"].ema, True),
        "SkipDiT after stage skip": (runs["skip-identity"]["result"].ema, True),
    }
    classifier = load_bundled("classifier")
    real = classifier_features(classifier, x)
    labels = torch.arange(args.samples) % 10
    rows = []
    cached_models = {
        "DiT (bundled)",
        "DiT fine-tuned",
        "SkipDiT after skip + all",
    }  # CPU time: the stage-skip model uncached only
    for name, (model, _) in models.items():
        model.eval()
        for seed in args.seeds:
            full = sk.sample(model, labels, steps=50, method="ddim", cfg_scale=3.0, seed=seed, progress=False).clamp(
                -1, 1
            )
            row = dict(
                model=name,
                seed=seed,
                interval=1,
                accuracy=classifier_accuracy(classifier, full, labels),
                fd=frechet_distance(classifier_features(classifier, full), real),
            )
            rows.append(row)
            if name not in cached_models:
                continue
            for interval in args.intervals:
                cache = sk.SkipCache(interval=interval, shallow_blocks=1)
                out = sk.sample(
                    model, labels, steps=50, method="ddim", cfg_scale=3.0, seed=seed, progress=False, cache=cache
                ).clamp(-1, 1)
                rows.append(
                    dict(
                        model=name,
                        seed=seed,
                        interval=interval,
                        psnr_mean=psnr(out, full),
                        psnr_pooled=psnr(out, full, reduction="pooled"),
                        accuracy=classifier_accuracy(classifier, out, labels),
                        fd=frechet_distance(classifier_features(classifier, out), real),
                    )
                )
            print(name, seed, [round(r.get("psnr_pooled", 0), 2) for r in rows[-len(args.intervals) :]], flush=True)
    results["samples"] = rows
    results["stability"] = {
        name: cached_feature_stability(models[name][0], torch.arange(20) % 10, args, models[name][1]) for name in models
    }
    results["load_end"] = loadavg()
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    write(results, args, base)
    if not args.keep:
        for root, _, files in os.walk(base):
            for f in files:
                if f.endswith((".safetensors", ".pt")):
                    os.remove(os.path.join(root, f))


def write(results, args, base) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = os.path.join(RESULTS, f"convert-study-{args.tag}")
    with open(stem + ".json", "w") as f:
        json.dump(results, f, indent=1, default=str)
    rows = results["samples"]

    def mean(model, interval, key):
        vals = [r[key] for r in rows if r["model"] == model and r["interval"] == interval and key in r]
        return sum(vals) / len(vals) if vals else float("nan")

    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = [
        f"# Converting the bundled DiT to a SkipDiT ({args.tag})",
        "",
        f"CPU: {report.cpu_model()}, 2 cores shared with other jobs; torch.set_num_threads({args.threads}); load "
        f"average {results['load_start']} at the start, {results['load_end']} at the end of the evaluation run. "
        f"Training {sum(r['seconds'] for r in results['training'].values()) / 60:.1f} min of wall time (per run "
        f"below; the machine's load varied, so minutes are not comparable between runs), evaluation "
        f"{results['total_seconds'] / 60:.1f} min. Command: `nice -n 10 python bench/quality/convert_study.py --tag "
        f"{args.tag} --skip-steps {args.skip_steps} --all-steps {args.all_steps}` (a rerun resumes finished runs).",
        "",
        "## Step 0: output change of the conversion",
        "",
        "Relative L2 change of the model output (eps and variance) against the original DiT on 512 held-out digits "
        "noised to uniform random timesteps (the identity init is fitted on 256 other digits).",
        "",
        "| init | carried tensors | new tensors | relative change |",
        "| --- | --- | --- | --- |",
    ]
    for init, r in results["step0"].items():
        lines.append(f"| {init} | {r['carried']} | {r['new']} | {r['relative_error']:.3f} |")
    lines += [
        "",
        "## Fine-tuning",
        "",
        f"Bundled digits, batch {args.batch_size}, AdamW, EMA 0.999 with warm-up, grad clip 1. "
        f"Stage skip: {args.skip_steps} steps at lr {args.skip_lr}; stage all: {args.all_steps} steps at lr {args.all_lr}; "
        f"the plain DiT: {args.skip_steps + args.all_steps} steps at lr {args.all_lr}.",
        "",
        "| run | minutes | first logged loss | last logged loss |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in results["training"].items():
        lines.append(f"| {name} | {r['seconds'] / 60:.1f} | {r['log'][0]['loss']:.4f} | {r['log'][-1]['loss']:.4f} |")
    lines += [
        "",
        f"## Samples (DDIM-50, CFG 3, {args.samples} samples, seeds {args.seeds}; means over the seeds)",
        "",
        "| model | accuracy | FD | "
        + " | ".join(f"@{i} PSNR mean / pooled | @{i} accuracy" for i in args.intervals)
        + " |",
        "| --- | --- | --- | " + " | ".join("--- | ---" for _ in args.intervals) + " |",
    ]
    for m in models:
        cells = [f"{mean(m, 1, 'accuracy'):.0%}", f"{mean(m, 1, 'fd'):.2f}"]
        for i in args.intervals:
            if any(r["model"] == m and r["interval"] == i for r in rows):
                cells += [
                    f"{mean(m, i, 'psnr_mean'):.2f} / {mean(m, i, 'psnr_pooled'):.2f}",
                    f"{mean(m, i, 'accuracy'):.0%}",
                ]
            else:
                cells += ["-", "-"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    conv, plain, orig = "SkipDiT after skip + all", "DiT fine-tuned", "DiT (bundled)"
    if conv in models and plain in models:
        gains = [mean(conv, i, "psnr_pooled") - mean(plain, i, "psnr_pooled") for i in args.intervals]
        gains_orig = [mean(conv, i, "psnr_pooled") - mean(orig, i, "psnr_pooled") for i in args.intervals]
        worst = min(
            r["psnr_pooled"]
            - next(
                q["psnr_pooled"]
                for q in rows
                if q["model"] == plain and q["seed"] == r["seed"] and q["interval"] == r["interval"]
            )
            for r in rows
            if r["model"] == conv and r["interval"] > 1
        )
        lines += [
            "",
            "Findings:",
            "",
            "- Skip-Cache on the converted model against caching the DiT fine-tuned for the same steps at equal "
            "computed blocks, pooled PSNR gain: "
            + ", ".join(f"@{i} {g:+.2f} dB" for i, g in zip(args.intervals, gains))
            + f" (smallest single seed and interval: {worst:+.2f} dB); against the bundled DiT: "
            + ", ".join(f"@{i} {g:+.2f} dB" for i, g in zip(args.intervals, gains_orig))
            + ".",
            f"- Uncached samples: accuracy {mean(conv, 1, 'accuracy'):.0%} (converted) vs {mean(plain, 1, 'accuracy'):.0%} "
            f"(DiT fine-tuned) and {mean(orig, 1, 'accuracy'):.0%} (bundled DiT); Frechet distance {mean(conv, 1, 'fd'):.1f} "
            f"vs {mean(plain, 1, 'fd'):.1f} and {mean(orig, 1, 'fd'):.1f} (100 samples in a 64-d feature space: "
            "a noisy estimate, but the converted model's is the highest).",
            "- Initialisation: at every logged window of stage skip (the same batches for both) the identity init's "
            "loss is below the official init's; it is the default.",
        ]
    lines += ["", "Per seed (pooled PSNR at each interval):", ""]
    for m in models:
        for seed in args.seeds:
            vals = [r.get("psnr_pooled") for r in rows if r["model"] == m and r["seed"] == seed and r["interval"] > 1]
            if vals:
                lines.append(
                    f"- {m}, seed {seed}: " + ", ".join(f"@{i} {v:.2f} dB" for i, v in zip(args.intervals, vals))
                )
    lines += [
        "",
        "Feature stability (mean cosine similarity between adjacent steps of the feature a cached step reuses; "
        "20 samples, DDIM-50, CFG 3):",
        "",
    ]
    for name, v in results["stability"].items():
        lines.append(f"- {name}: {v:.4f}")
    lines += ["", f"![study]({os.path.basename(stem)}.png)", ""]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, r in results["training"].items():
        axes[0].plot([row["step"] for row in r["log"]], [row["loss"] for row in r["log"]], label=name)
    axes[0].set(xlabel="step (of its stage)", ylabel="loss (logged window mean)", title="fine-tuning", yscale="log")
    for m in models:
        pts = [
            (i, mean(m, i, "psnr_pooled"))
            for i in args.intervals
            if any(r["model"] == m and r["interval"] == i for r in rows)
        ]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", label=m)
    axes[1].set(
        xlabel="cache interval (1 shallow unit)", ylabel="pooled PSNR vs own uncached (dB)", title="Skip-Cache fidelity"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
