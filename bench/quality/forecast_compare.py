"""Forecasters at high speedups, against cache-dit's calibrators at equal computed blocks.

For each model and sampler, every method runs at each interval from the same noise and is scored
against full compute: PSNR per sample (mean), pooled (over all samples' pixels) and over the worst
5% of samples (mean of the worst ceil(0.05 N)), samples clamped to [-1, 1], peak-to-peak 2.

Models: the bundled SkipDiT through ``sample()`` (its deep state is forecast; 20 samples, CFG 3 as
``skipdit demo``), the bundled trained DiT converted into a ``DiTPipeline`` and the trained tiny
HunyuanDiT of bench/assets (the middle residual / the long-skip boundary; 20 samples each, the
pipelines of bench/e2e/bench_diffusers.py). Samplers: DDIM-50, DDIM-20, DDPM-250 (DiT's linear betas).

Methods (all ``shallow_blocks=1``, ``start_t`` 1000, no reset before the end): reuse; polynomial
forecast (Taylor) orders 1 and 2 in the step counter; the alpha-sigma forecast
(``forecast_basis="alpha-sigma"``); on the pipelines also cache-dit's DBCache (Fn = Bn = 1, the same
static full/cached step mask) plain and with its TaylorSeer order 1 and 2 and DMD calibrators. Block
calls are counted with forward pre-hooks on the pipelines' blocks; every cached method of one
interval computes the same number.

FLOP bound: 1 / ``SkipCache.block_fraction``. Measured speedup (CPU): from per-step costs, full
compute's time per step and the cached step's (from reuse at the largest interval, which runs the
same units as every cached method of that model), timed interleaved over ``--rounds`` rounds, then
speedup = N t_full / (F t_full + C t_cached) for F full and C cached steps (the forecast blend adds
about 0.3% to a cached step, bench/quality/forecast_cost.py). cache-dit's rows quote the same number (it
computes the same blocks; its own per-call overheads are in bench/e2e/bench_diffusers.py's timings).

    python bench/quality/forecast_compare.py run --model skipdit --sampler ddim-50 --intervals 2,3,4,6,8,10
    python bench/quality/forecast_compare.py report parts/*.json      # -> results/forecast-compare-<tag>-<date>.{md,json,png}
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "e2e"))  # bench_diffusers

import report  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.evaluation.bundled import load_bundled  # noqa: E402
from skipdit_kernels.evaluation.metrics import psnr  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
OURS = {
    "reuse": dict(forecast=0),
    "taylor 1": dict(forecast=1),
    "taylor 2": dict(forecast=2),
    "alpha-sigma": dict(forecast=1, forecast_basis="alpha-sigma"),
}
CACHE_DIT = (
    "cache-dit DBCache",
    "cache-dit DBCache+TaylorSeer1",
    "cache-dit DBCache+TaylorSeer2",
    "cache-dit DBCache+DMD",
)


def scores(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out, ref = out.clamp(-1, 1), ref.clamp(-1, 1)
    per = psnr(out, ref, data_range=2.0, reduction="none").double()
    worst = per.sort().values[: max(1, math.ceil(0.05 * len(per)))]
    pooled = 10 * math.log10(4.0 / max(float(((out - ref).double() ** 2).mean()), 1e-30))
    return dict(psnr_mean=float(per.mean()), psnr_pooled=pooled, psnr_worst5=float(worst.mean()),
                psnr_per_sample=[round(float(v), 3) for v in per])  # fmt: skip


def count_blocks(blocks, fn):
    calls = [0]
    handles = [b.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) for b in blocks]
    try:
        out = fn()
    finally:
        for h in handles:
            h.remove()
    return out, calls[0]


def skipdit_case(sampler: str, n: int):
    model = load_bundled("skipdit")
    method, steps = sampler.split("-")
    labels = torch.arange(10).repeat(n // 10 + 1)[:n]
    common = dict(steps=int(steps), method=method, cfg_scale=3.0, seed=0, progress=False)
    timesteps = sk.sampling.GaussianDiffusion.create(int(steps), method=method, learn_sigma=model.learn_sigma).timesteps

    def run(cache):
        return sk.sample(model, labels, cache=cache, **common), None

    return dict(run=run, timesteps=[float(t) for t in timesteps], num_units=model.num_units, cache_dit=None,
                samples=n, note="bundled SkipDiT via sample(), CFG 3")  # fmt: skip


def pipeline_case(family: str, sampler: str):
    import bench_diffusers as bd

    from skipdit_kernels.integrations import diffusers as sd

    method, steps = sampler.split("-")
    steps = int(steps)
    make = {"ddim": bd._DDIM, "ddpm": bd._DDPM}[method]
    base, call, _ = (bd.trained_dit_pipe if family == "dit" else bd.trained_hunyuan_pipe)(make())
    base.scheduler.set_timesteps(steps)
    timesteps = [float(t) for t in base.scheduler.timesteps]

    def blocks_of(pipe):
        t = pipe.transformer
        return t.blocks if hasattr(t, "blocks") else t.transformer_blocks

    def run(cache):
        pipe = base
        if cache is not None:
            pipe = copy.deepcopy(base)
            sd.apply_skip_cache(pipe, cache)
        return count_blocks(blocks_of(pipe), lambda: call(pipe, steps))

    def run_cache_dit(label, cache):
        pipe = copy.deepcopy(base)
        calibrator = bd.cache_dit_calibrators().get(label)
        bd._enable_cache_dit(
            pipe, cache, cache.full_steps(timesteps), steps, None if calibrator is None else calibrator()
        )
        return count_blocks(blocks_of(pipe), lambda: call(pipe, steps))

    return dict(run=run, timesteps=timesteps, num_units=len(blocks_of(base)),
                cache_dit=run_cache_dit if bd.cache_dit is not None else None, samples=len(bd.TRAINED_LABELS),
                note=f"trained {'DiT (DiTPipeline)' if family == 'dit' else 'HunyuanDiT (HunyuanDiTPipeline)'}, guidance 4")  # fmt: skip


def run_cell(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    case = skipdit_case(args.sampler, args.n) if args.model == "skipdit" else pipeline_case(args.model, args.sampler)
    intervals = [int(i) for i in args.intervals.split(",")]
    env = report.environment()
    ref, full_blocks = case["run"](None)
    rows = []
    for interval in intervals:
        cache0 = sk.SkipCache(interval=interval, shallow_blocks=1, start_t=1000, stop_t=-1)
        plan = cache0.full_steps(case["timesteps"])
        bound = 1 / cache0.block_fraction(case["timesteps"], case["num_units"])
        common = dict(interval=interval, flop_bound=bound, full_steps=plan.count(True), cached_steps=plan.count(False))
        for label, options in OURS.items():
            out, blocks = case["run"](dataclasses.replace(cache0, **options))
            rows.append(dict(method=label, blocks_per_call=blocks, **common, **scores(out, ref)))
            print(args.model, args.sampler, interval, label, round(rows[-1]["psnr_pooled"], 2), flush=True)
        if case["cache_dit"] is not None and not args.no_cache_dit:
            for label in CACHE_DIT:
                try:
                    out, blocks = case["cache_dit"](label, cache0)
                except Exception as exc:  # noqa: BLE001 - recorded
                    rows.append(dict(method=label, error=f"{type(exc).__name__}: {exc}", **common))
                    continue
                rows.append(dict(method=label, blocks_per_call=blocks, **common, **scores(out, ref)))
                print(args.model, args.sampler, interval, label, round(rows[-1]["psnr_pooled"], 2), flush=True)
    # Per-step costs, interleaved: full compute and reuse at the largest interval.
    big = sk.SkipCache(interval=max(intervals), shallow_blocks=1, start_t=1000, stop_t=-1)
    plan = big.full_steps(case["timesteps"])
    timing = report.time_fns({"full": lambda: case["run"](None), "cached": lambda: case["run"](big)},
                             min_rounds=args.rounds, max_rounds=args.rounds, budget_s=0.0, warmup=0)  # fmt: skip
    n, f = len(plan), plan.count(True)
    t_full = timing["full"]["median_s"] / n
    t_cached = (timing["cached"]["median_s"] - f * t_full) / (n - f)
    for r in rows:
        r["speedup_measured"] = n * t_full / (r["full_steps"] * t_full + r["cached_steps"] * t_cached)
    env.update(end=report.environment())
    return dict(model=args.model, sampler=args.sampler, note=case["note"], samples=case["samples"], full_blocks_per_call=full_blocks,
                step_cost_s=dict(full=t_full, cached=t_cached), rounds=args.rounds, env=env, rows=rows)  # fmt: skip


MODEL_NAMES = {
    "skipdit": "bundled SkipDiT (sample())",
    "dit": "trained DiT pipeline",
    "hunyuan": "trained HunyuanDiT pipeline",
}


def best_peer(rows):
    peers = [r for r in rows if r["method"].startswith("cache-dit") and "psnr_pooled" in r]
    return max(peers, key=lambda r: r["psnr_pooled"]) if peers else None


def write_report(parts: list[dict], stem: str) -> None:
    lines = ["PSNR dB against full compute from the same noise (samples clamped to [-1, 1], peak-to-peak 2): "
             "mean of per-sample PSNR / pooled / worst 5%. Bound: FLOP bound (1 / block fraction). Measured: "
             "CPU speedup from interleaved per-step costs (see the script's docstring). All shallow_blocks=1.", ""]  # fmt: skip
    for p in parts:
        e, e2 = p["env"], p["env"].get("end", {})
        lines += [f"## {MODEL_NAMES[p['model']]}, {p['sampler'].upper()}", "",
                  f"{p['note']}, {p['samples']} samples; {p['full_blocks_per_call']} blocks per uncached call; "
                  f"per-step cost full {p['step_cost_s']['full'] * 1e3:.1f} ms, cached {p['step_cost_s']['cached'] * 1e3:.1f} ms "
                  f"({p['rounds']} rounds); {e.get('name', '')}, {e.get('threads', '')} thread(s), load {e.get('load_average')} -> {e2.get('load_average')}.", "",
                  "| interval | bound | measured | steps full/cached | blocks/call | method | PSNR mean | pooled | worst 5% |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in p["rows"]:
            if "error" in r:
                lines.append(
                    f"| {r['interval']} | x{r['flop_bound']:.2f} | | | | {r['method']} | failed: {r['error'][:80]} | | |"
                )
                continue
            lines.append(f"| {r['interval']} | x{r['flop_bound']:.2f} | x{r['speedup_measured']:.2f} | {r['full_steps']}/{r['cached_steps']} | "
                         f"{r['blocks_per_call'] or '-'} | {r['method']} | {r['psnr_mean']:.2f} | {r['psnr_pooled']:.2f} | {r['psnr_worst5']:.2f} |")  # fmt: skip
        lines += ["", "Per interval: the alpha-sigma forecast and Taylor order 1 against the best of cache-dit's calibrators "
                  "(pooled dB) and against reuse:", ""]  # fmt: skip
        for interval in dict.fromkeys(r["interval"] for r in p["rows"]):
            rs = [r for r in p["rows"] if r["interval"] == interval and "psnr_pooled" in r]
            by = {r["method"]: r for r in rs}
            peer = best_peer(rs)
            parts_ = [f"bound x{rs[0]['flop_bound']:.2f}"]
            for m in ("alpha-sigma", "taylor 1"):
                s = f"{m} {by[m]['psnr_pooled']:.2f}"
                if peer:
                    s += f" ({by[m]['psnr_pooled'] - peer['psnr_pooled']:+.2f} vs {peer['method']})"
                s += f" ({by[m]['psnr_pooled'] - by['reuse']['psnr_pooled']:+.2f} vs reuse)"
                parts_.append(s)
            lines.append(f"- interval {interval}: " + "; ".join(parts_))
        lines.append("")
    lines += ["## At a FLOP bound of 3x or more", "",
              "Pooled PSNR of each Skip-Cache forecaster minus the best of cache-dit's calibrators (TaylorSeer 1, 2, DMD) "
              "at the same mask, and minus reuse:", ""]  # fmt: skip
    for p in parts:
        for interval in dict.fromkeys(r["interval"] for r in p["rows"]):
            rs = {r["method"]: r for r in p["rows"] if r["interval"] == interval and "psnr_pooled" in r}
            if rs["reuse"]["flop_bound"] < 3.0:
                continue
            peer = max((r for m, r in rs.items() if m.startswith("cache-dit") and m != "cache-dit DBCache"),
                       key=lambda r: r["psnr_pooled"], default=None)  # fmt: skip
            cells = []
            for m in ("taylor 1", "taylor 2", "alpha-sigma"):
                c = f"{m} {rs[m]['psnr_pooled'] - rs['reuse']['psnr_pooled']:+.2f} vs reuse"
                if peer is not None:
                    c += f", {rs[m]['psnr_pooled'] - peer['psnr_pooled']:+.2f} vs {peer['method']}"
                cells.append(c)
            lines.append(
                f"- {MODEL_NAMES[p['model']]}, {p['sampler'].upper()}, interval {interval} (x{rs['reuse']['flop_bound']:.2f}): "
                + "; ".join(cells)
            )
    lines.append("")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, len(parts), figsize=(4.2 * len(parts), 7.5), squeeze=False)
        for k, p in enumerate(parts):
            methods = list(dict.fromkeys(r["method"] for r in p["rows"] if "psnr_pooled" in r))
            for row, key, xlabel in (
                (0, "flop_bound", "FLOP bound"),
                (1, "speedup_measured", "measured speedup (CPU)"),
            ):
                ax = axes[row][k]
                for m in methods:
                    rs = [r for r in p["rows"] if r["method"] == m and "psnr_pooled" in r]
                    ax.plot([r[key] for r in rs], [r["psnr_pooled"] for r in rs], marker="o" if not m.startswith("cache-dit") else "x",
                            linestyle="-" if not m.startswith("cache-dit") else "--", label=m.replace("cache-dit DBCache", "cd"))  # fmt: skip
                ax.axvline(3.0, color="grey", linewidth=0.5)
                ax.set_xlabel(xlabel)
                ax.set_ylabel("PSNR pooled (dB)")
                ax.set_title(f"{MODEL_NAMES[p['model']]}\n{p['sampler'].upper()}", fontsize=9)
                ax.grid(alpha=0.3)
        widest = max(range(len(parts)), key=lambda k: len({r["method"] for r in parts[k]["rows"]}))
        axes[0][widest].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(stem + ".png", dpi=100)
        lines.append(f"![pooled PSNR against FLOP bound and measured speedup]({os.path.basename(stem)}.png)")
    except ImportError:
        lines.append("(matplotlib missing: no plot)")
    with open(stem + ".md", "w") as f:
        f.write("# Forecasters at high speedups vs cache-dit's calibrators\n\n" + "\n".join(lines) + "\n")
    with open(stem + ".json", "w") as f:
        json.dump(parts, f, indent=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="one model and sampler: writes a part (JSON)")
    run.add_argument("--model", choices=sorted(MODEL_NAMES), required=True)
    run.add_argument("--sampler", choices=("ddim-50", "ddim-20", "ddpm-250"), required=True)
    run.add_argument("--intervals", default="2,3,4,6,8,10")
    run.add_argument("--n", type=int, default=20, help="samples (SkipDiT; the pipelines run their 20)")
    run.add_argument("--rounds", type=int, default=3)
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--no-cache-dit", action="store_true")
    run.add_argument("--out", required=True, help="the part's JSON path")
    rep = sub.add_parser("report", help="combine parts into the results files")
    rep.add_argument("parts", nargs="+")
    rep.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        part = run_cell(args)
        with open(args.out, "w") as f:
            json.dump(part, f)
        print("wrote", args.out)
        return
    parts = [json.load(open(p)) for p in args.parts]
    order = {"skipdit": 0, "dit": 1, "hunyuan": 2}, {"ddim-50": 0, "ddpm-250": 1, "ddim-20": 2}
    parts.sort(key=lambda p: (order[0][p["model"]], order[1][p["sampler"]]))
    stem = os.path.join(args.out, f"forecast-compare-{report.device_tag()}-{datetime.date.today().isoformat()}")
    write_report(parts, stem)
    print("wrote", stem + ".md")


if __name__ == "__main__":
    main()
