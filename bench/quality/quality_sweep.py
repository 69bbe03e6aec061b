"""Quality-matched speed sweep: forecast order 1 with a warm start of full steps, on the
bundled SkipDiT with the demo's settings, against reuse at interval 2 (the paper's "almost free").

    python bench/quality/quality_sweep.py                 # the issue's sweep: DDIM-50, 100 samples, 3 rounds
    python bench/quality/quality_sweep.py --rounds 5 --threads 2

Settings: full compute; reuse (``forecast=0``) at intervals 2..6; forecast order 1 at interval 2 and,
for intervals 3..6, with ``start_t`` in {1000 (no warm start), 950, 900, 850, 800} (every step with
t >= start_t runs in full); all ``shallow_blocks=1``. Labels, CFG, sampler, steps and seed are
``skipdit demo``'s defaults (10 per digit).

For each setting: fidelity against full compute from the same noise (``metrics.fidelity``: PSNR
and SSIM per-sample mean, pooled, worst 5%; samples clamped to [-1, 1] as the demo shows them),
the bundled digit classifier's accuracy, the FLOP bound (1 / ``SkipCache.block_fraction`` with
``model.num_units``), and the measured wall-time speedup over full compute: every round runs every
setting once (interleaved round by round), the speedup is the median over rounds of the
round's full-compute time over the setting's time (``report.time_fns``, ``report.round_ratio``). The
load average at start and end and the CPU name are recorded:
on a loaded machine use ``--threads 1`` (OpenMP oversubscription distorts timings badly).

Writes bench/results/quality-sweep-<tag>-<date>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.commands import demo  # noqa: E402
from skipdit_kernels.evaluation.bundled import load_bundled  # noqa: E402
from skipdit_kernels.evaluation.metrics import classifier_accuracy, fidelity, psnr  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
REFERENCE = "reuse@2"  # the paper's "almost free" schedule: the fidelity a faster setting must match


def settings(args) -> dict[str, sk.SkipCache | None]:
    out: dict[str, sk.SkipCache | None] = {"full": None}
    shallow = args.shallow
    for interval in args.reuse_intervals:
        out[f"reuse@{interval}"] = sk.SkipCache(interval=interval, shallow_blocks=shallow, forecast=0)
    out["forecast1@2"] = sk.SkipCache(interval=2, shallow_blocks=shallow, forecast=1)
    for interval in args.intervals:
        for start_t in args.start_ts:
            name = f"forecast1@{interval}" + ("" if start_t >= 1000 else f",t>={start_t:g}")
            out[name] = sk.SkipCache(interval=interval, shallow_blocks=shallow, start_t=start_t, forecast=1)
    if args.settings:
        unknown = sorted(set(args.settings) - set(out))
        if unknown:
            raise SystemExit(f"unknown settings {unknown}; known: {sorted(out)}")
        out = {k: v for k, v in out.items() if k in {"full", REFERENCE, *args.settings}}
    return out


def demo_defaults():
    parser = argparse.ArgumentParser()
    demo.configure(parser)
    return parser.parse_args([])


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    d = demo_defaults()
    model = load_bundled("skipdit")
    classifier = load_bundled("classifier")
    labels = torch.arange(10).repeat_interleave(args.per_class)
    seed = d.seed if args.seed is None else args.seed
    common = dict(steps=d.steps, method=d.method, cfg_scale=d.cfg, seed=seed, progress=False)
    timesteps = sk.sampling.GaussianDiffusion.create(d.steps, method=d.method, learn_sigma=model.learn_sigma).timesteps
    caches = settings(args)
    meta = dict(
        date=datetime.date.today().isoformat(), cpu=report.environment()["name"], cpu_count=os.cpu_count(), threads=args.threads,
        torch=torch.__version__, loadavg_start=loadavg(), model="bundled SkipDiT (skipdit_kernels.evaluation.bundled)",
        num_units=model.num_units, samples=len(labels), sampler=f"{d.method.upper()}-{d.steps}", cfg=d.cfg,
        settings=args.settings or "all", per_class=args.per_class, seed=seed, shallow_blocks=args.shallow, rounds=args.rounds,
        scoring="samples clamped to [-1, 1]; PSNR with peak-to-peak 2; worst 5% = mean over the worst "
                "ceil(0.05 N) samples; speedup = median over rounds of (full time / setting time) in that round",
    )  # fmt: skip
    rows = {}
    for name, cache in caches.items():
        row = dict(setting=name, interval=cache.interval if cache else 1, start_t=cache.start_t if cache else None,
                   forecast=int(cache.forecast) if cache else None)  # fmt: skip
        fraction = cache.block_fraction(timesteps, model.num_units) if cache else 1.0
        row.update(block_fraction=fraction, flop_bound=1 / fraction)
        if cache:
            plan = cache.full_steps(timesteps)
            row.update(full_steps=plan.count(True), cached_steps=plan.count(False))
        else:
            row.update(full_steps=len(timesteps), cached_steps=0)
        rows[name] = row
    sk.sample(model, labels[:2], **{**common, "steps": 2})  # warm-up
    outputs = {}

    def run_setting(name):
        outputs[name] = sk.sample(model, labels, cache=caches[name], **common).clamp(-1, 1)  # same every round (seed)

    timing = report.time_fns({name: (lambda name=name: run_setting(name)) for name in caches}, min_rounds=args.rounds,
                             max_rounds=args.rounds, budget_s=0.0, warmup=0, pause_s=0.05)  # fmt: skip
    failed = {k: v["error"] for k, v in timing.items() if "error" in v}
    if failed:
        raise RuntimeError(f"sampling failed: {failed}")
    reference = outputs["full"]
    for name, row in rows.items():
        out, t = outputs[name], timing[name]
        row.update(fidelity(out, reference), accuracy=classifier_accuracy(classifier, out, labels))
        if name != "full":
            row["psnr_per_sample"] = [round(float(v), 3) for v in psnr(out, reference, reduction="none")]
        row.update(
            seconds=t["samples_s"],
            median_s=t["median_s"],
            min_s=t["min_s"],
            max_s=t["max_s"],
            speedup=report.round_ratio(timing, name, "full")["ratio"],
        )
    meta["loadavg_end"] = loadavg()
    return dict(meta=meta, rows=list(rows.values()))


def recommend(rows: list[dict], target: float) -> dict:
    by = {r["setting"]: r for r in rows}
    ref = by[REFERENCE]
    ok = [r for r in rows if r["setting"] not in ("full", REFERENCE)
          and r["psnr_pooled"] >= ref["psnr_pooled"] and r["psnr_mean"] >= ref["psnr_mean"]]  # fmt: skip
    if not ok:
        return dict(setting=None, reason=f"no setting reaches {REFERENCE}'s pooled and per-sample-mean PSNR")
    best = max(ok, key=lambda r: (round(r["flop_bound"], 6), r["speedup"]))
    faster_measured = [r["setting"] for r in ok if r["speedup"] > best["speedup"]]
    return dict(setting=best["setting"], qualifying=[r["setting"] for r in ok], faster_measured=faster_measured,
                target=target, met=best["speedup"] >= target)  # fmt: skip


def fmt_row(r: dict) -> str:
    psnr = lambda v: "inf" if v == float("inf") else f"{v:.1f}"  # noqa: E731
    span = f" ({r['min_s']:.1f}-{r['max_s']:.1f})" if "min_s" in r else ""  # older results: median only
    return (f"| {r['setting']} | {r['full_steps']}/{r['cached_steps']} | x{r['flop_bound']:.2f} | x{r['speedup']:.2f} | "
            f"{r['median_s']:.1f}{span} | {psnr(r['psnr_mean'])} | {psnr(r['psnr_pooled'])} | {psnr(r['psnr_worst'])} | "
            f"{r['ssim_mean']:.4f} | {r['ssim_worst']:.4f} | {r['accuracy']:.0%} |")  # fmt: skip


def readme_table(rows: list[dict], rec: dict, meta: dict) -> list[str]:
    by = {r["setting"]: r for r in rows}
    intervals = sorted({r["interval"] for r in rows if r["forecast"] == 1})
    warm = by[rec["setting"]]["start_t"] if rec.get("setting") else 1000
    warm = warm if warm < 1000 else 900  # the warm start when the recommendation has none
    families = [("reuse", lambda i: f"reuse@{i}"), ("forecast 1", lambda i: f"forecast1@{i}")]
    if warm < 1000:
        families.append((f"forecast 1, full steps t >= {warm:g}", lambda i: f"forecast1@{i},t>={warm:g}"))
    lines = [f"PSNR (dB) of cached vs uncached samples, scored per sample and averaged (pooled over all samples "
             f"in parentheses); bundled SkipDiT, shallow 1, {meta['sampler']}, CFG {meta['cfg']:g}, {meta['samples']} "
             f"samples, same noise; measured CPU wall-time speedup (FLOP bound) below each:", "",
             "| schedule, interval | " + " | ".join(str(i) for i in intervals) + " |",
             "| --- |" + " --- |" * len(intervals)]  # fmt: skip
    for label, key in families:
        cells = [
            f"{by[key(i)]['psnr_mean']:.1f} ({by[key(i)]['psnr_pooled']:.1f})" if key(i) in by else ""
            for i in intervals
        ]
        speed = [
            f"{by[key(i)]['speedup']:.2f} ({by[key(i)]['flop_bound']:.2f})" if key(i) in by else "" for i in intervals
        ]
        lines += [
            f"| {label} | " + " | ".join(cells) + " |",
            "| speedup, measured (bound) | " + " | ".join(speed) + " |",
        ]
    return lines


def write(result: dict, stem: str, target: float) -> None:
    meta, rows = result["meta"], result["rows"]
    rec = recommend(rows, target)
    result["recommendation"] = rec
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    by = {r["setting"]: r for r in rows}
    ref = by[REFERENCE]
    lines = [f"# Quality-matched speed sweep ({meta['date']})", "",
             f"Model: {meta['model']} ({meta['num_units']} units), {meta['sampler']}, CFG {meta['cfg']:g} (the demo's "
             f"settings), {meta['samples']} samples ({meta['per_class']} per digit), seed {meta['seed']}, shallow_blocks "
             f"{meta['shallow_blocks']}, fp32.",
             f"Machine: {meta['cpu']}, {meta['cpu_count']} cores shared with other jobs; torch.set_num_threads("
             f"{meta['threads']}). "
             + report.load_line(dict(load_average=meta["loadavg_start"], load_average_end=meta["loadavg_end"],
                                     cores=meta["cpu_count"])),
             "",
             f"Scoring: {meta['scoring']} ({meta['rounds']} rounds, every setting once per round, interleaved round by round; median s (min-max)). "
             "Fidelity against full compute from the same noise. Bound: 1 / block fraction (FLOP bound). "
             "Steps: full/cached. Accuracy: the bundled digit classifier on the samples.", "",
             "| setting | steps | bound | speedup | median s | PSNR mean | PSNR pooled | PSNR worst 5% | SSIM mean | "
             "SSIM worst 5% | accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    lines += [fmt_row(r) for r in rows]
    lines += ["", "`forecast1@I,t>=S`: forecast order 1 at interval I, every step with t >= S in full (DDIM-50's "
              "timesteps are 980, 960, ..., 0, so S = 950 / 900 / 850 / 800 runs the first 2 / 5 / 7 / 10 steps in full).",
              "", "## Recommendation", ""]  # fmt: skip
    if rec["setting"]:
        r = by[rec["setting"]]
        lines += [
            f"Rule: the fastest setting by FLOP bound whose pooled and per-sample-mean PSNR are both at least "
            f"{REFERENCE}'s ({ref['psnr_pooled']:.1f} dB pooled, {ref['psnr_mean']:.1f} dB mean). Qualifying: "
            f"{', '.join(rec['qualifying'])}.",
            "",
            f"**{rec['setting']}** (interval {r['interval']}, start_t {r['start_t']:g}, forecast 1, shallow 1): "
            f"x{r['speedup']:.2f} measured (FLOP bound x{r['flop_bound']:.2f}), PSNR {r['psnr_mean']:.1f} mean / "
            f"{r['psnr_pooled']:.1f} pooled / {r['psnr_worst']:.1f} worst 5%, SSIM {r['ssim_mean']:.4f} mean, "
            f"accuracy {r['accuracy']:.0%} (full compute {by['full']['accuracy']:.0%}).",
            f"{REFERENCE} for comparison: x{ref['speedup']:.2f} measured (bound x{ref['flop_bound']:.2f}), PSNR "
            f"{ref['psnr_mean']:.1f} / {ref['psnr_pooled']:.1f} / {ref['psnr_worst']:.1f}, SSIM {ref['ssim_mean']:.4f}, "
            f"accuracy {ref['accuracy']:.0%}.",
            "",
            f"Target (>= x{target:g} measured wall-time speedup at a pooled PSNR >= {REFERENCE}'s): "
            + ("**met**" if rec["met"] else f"**not met** (x{r['speedup']:.2f})")
            + (f" (timing from {meta['rounds']} round(s) only: not conclusive)" if meta["rounds"] < 3 else "") + ".",
        ]  # fmt: skip
        if rec["faster_measured"]:
            lines.append(f"Measured faster than it despite a lower FLOP bound (timing noise or per-step overheads): "
                         f"{', '.join(rec['faster_measured'])}.")  # fmt: skip
    else:
        lines.append(rec["reason"] + ".")
    if meta.get("settings", "all") == "all":
        lines += ["", "## README forecast table (replacement)", ""] + readme_table(rows, rec, meta)
    lines += ["", f"![pooled PSNR against measured speedup]({os.path.basename(stem)}.png)", ""]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))
    plot(rows, stem + ".png", meta, target)


def plot(rows, path, meta, target) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing: no plot (pip install matplotlib)", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {1000: "o", 950: "v", 900: "s", 850: "D", 800: "^"}
    colors = {i: c for i, c in zip(range(2, 9), plt.get_cmap("tab10").colors)}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        if r["setting"] == "full":
            continue
        if r["forecast"] == 0:
            style = dict(marker="x", color=colors.get(r["interval"], "k"), s=50)
        else:
            style = dict(marker=markers.get(r["start_t"], "o"), color=colors.get(r["interval"], "k"), s=40,
                         edgecolors="k", linewidths=0.4)  # fmt: skip
        if r["setting"] == REFERENCE:
            style = dict(marker="*", color="red", s=260, edgecolors="k", linewidths=0.6, zorder=5)
        ax.scatter(r["speedup"], r["psnr_pooled"], **style)
        ax.annotate(r["setting"].replace("forecast1", "f1"), (r["speedup"], r["psnr_pooled"]),
                    textcoords="offset points", xytext=(4, 3), fontsize=6)  # fmt: skip
    ref = next(r for r in rows if r["setting"] == REFERENCE)
    ax.axhline(ref["psnr_pooled"], color="red", ls="--", lw=0.8, label=f"{REFERENCE} pooled PSNR")
    ax.axvline(target, color="gray", ls=":", lw=0.8, label=f"x{target:g} target")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=m, ls="", color="gray", label="reuse" if s is None else f"forecast 1, start_t {s}")
               for s, m in [(None, "x")] + list(markers.items())]  # fmt: skip
    handles += [Line2D([], [], marker="o", ls="", color=c, label=f"interval {i}") for i, c in colors.items()
                if any(r["interval"] == i for r in rows)]  # fmt: skip
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=7, loc="lower left")
    ax.set_xlabel(f"measured wall-time speedup over full compute (CPU, {meta['threads']} thread(s), median of rounds)")
    ax.set_ylabel("pooled PSNR vs full compute (dB)")
    ax.set_title(f"Bundled SkipDiT, {meta['sampler']}, CFG {meta['cfg']:g}, {meta['samples']} samples")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=10, help="samples per digit (100 in all)")
    p.add_argument("--intervals", type=int, nargs="+", default=[3, 4, 5, 6])
    p.add_argument("--start-ts", type=float, nargs="+", default=[1000, 950, 900, 850, 800])
    p.add_argument("--reuse-intervals", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    p.add_argument("--shallow", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: the demo's)")
    p.add_argument("--settings", nargs="+", help="only these settings (plus full and reuse@2), e.g. to confirm a "
                   "timing with more rounds or a fidelity with another seed")  # fmt: skip
    p.add_argument("--target", type=float, default=1.9, help="the measured speedup target")
    p.add_argument("--tag", default="cpu-bundled")
    p.add_argument("--out", default=RESULTS, help="results directory")
    p.add_argument("--rewrite", help="re-render the .md/.png from this .json without running")
    args = p.parse_args(argv)
    if args.rewrite:
        with open(args.rewrite) as f:
            result = json.load(f)
        write(result, args.rewrite.removesuffix(".json"), args.target)
        return
    if 2 not in args.reuse_intervals:
        p.error(f"--reuse-intervals must include 2 ({REFERENCE} is the reference)")
    result = run(args)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"quality-sweep-{args.tag}-{result['meta']['date']}")
    write(result, stem, args.target)
    print(f"wrote {stem}.md/.json/.png")


if __name__ == "__main__":
    main()
