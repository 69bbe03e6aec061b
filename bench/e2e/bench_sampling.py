"""End-to-end sampling latency: official-style eager vs ours, Skip-Cache, CUDA graphs, fused kernels.

    python bench/e2e/bench_sampling.py                    # CPU: DiT-S/2, DiT-B/2, batch 2, CFG 4, fp32
    python bench/e2e/bench_sampling.py --models DiT-XL/2 --batches 1 8 --dtype bf16   # a GPU
    skipdit bench [same options]

Rows, per model / batch / sampler (latency of one sampled batch, classifier-free guidance on, so the
model runs 2 x batch; random SkipDiT weights, 256px = 32x32 latents = 256 tokens):
  (a) official-style eager baseline (bench/official_dit.py: timm-style blocks, cat + fp32 LayerNorm +
      Linear, DiT's forward_with_cfg, the sampler over the doubled batch), full compute;
  (b) ours, full compute: the executor (persistent buffers), ops on the torch reference backend;
  (c) ours + Skip-Cache, interval 2, 3, 4, shallow 4;
  (d) + CUDA graphs (the executor's captured full / cached steps; CUDA only);
  (e) + fused kernels (ops backend "native" on CPU; the "auto" choice on CUDA).

How latency is measured: each distinct step (a full step, a cached step: model with CFG + sampler
update) is timed round-robin across all variants (``report.time_fns``: medians and min-max of
--rounds, so load drifts hit every variant alike); a trajectory's latency is composed from the
schedule's counts of full and cached steps (``SkipCache.plan``): n_full * t_full + n_cached *
t_cached. That is exact up to per-step
noise, since a Skip-Cache trajectory is nothing but those two steps; ``--e2e`` rows additionally run
whole trajectories (``sample()``), the rows of one sampler interleaved round by round for
--e2e-rounds rounds, and report their median wall time next to the composed one.
The FLOP bound of a schedule is full-trajectory MACs / its MACs, counted analytically from the
blocks each step runs, plus embedding and final layer; "of bound" = achieved speedup / bound.
Peak memory: CPU, the growth of the process's peak RSS over one full + one cached step in a fresh
subprocess (buffers included); CUDA, torch.cuda.max_memory_allocated over one full + one cached step.
Results: bench/results/sampling-<device tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402
from official_dit import OfficialSkipDiT  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels import ops  # noqa: E402
from skipdit_kernels.cache import Condition  # noqa: E402
from skipdit_kernels.sampling import (
    GaussianDiffusion,  # noqa: E402
    SkipStackExecutor,  # noqa: E402
)
from skipdit_kernels.sampling.trajectory import NUM_COEF, SamplerTrajectory, sampler_coefficients  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INTERVALS = (2, 3, 4)
SHALLOW = 4
CFG_SCALE = 4.0


# -- models -----------------------------------------------------------------------------------------


def build_ours(preset: str, seed: int = 0) -> sk.SkipDiT:
    """A SkipDiT with random non-zero weights (a fresh model zeroes adaLN and the output)."""
    torch.manual_seed(seed)
    model = sk.SkipDiT.from_preset(preset).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                continue
            base = 1.0 if name.startswith("skip_norms") and name.endswith("weight") else 0.0
            p.copy_(base + 0.02 * torch.randn_like(p))
    return model


def official_forward_with_cfg(model, x, t, y, cfg_scale):
    """DiT's forward_with_cfg: guide the first 3 channels, return both halves."""
    half = x[: len(x) // 2]
    out = model(torch.cat([half, half], dim=0), t, y)
    eps, rest = out[:, :3], out[:, 3:]
    cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond + cfg_scale * (cond - uncond)
    return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


class OfficialSampler:
    """The official sampling loop: the doubled batch through forward_with_cfg and the sampler."""

    def __init__(self, model, dtype):
        self.model, self.dtype = model, dtype

    @torch.no_grad()
    def step(self, diffusion, z, y, i, t, generator=None):
        t_batch = torch.full((z.shape[0],), int(t), device=z.device, dtype=torch.long)
        out = official_forward_with_cfg(self.model, z.to(self.dtype), t_batch, y, CFG_SCALE).float()
        noise = torch.randn(z.shape, generator=generator).to(z.device) if diffusion.is_stochastic else None
        return diffusion.step(out, z, i, noise)

    def sample(self, diffusion, x, y, generator):
        z = torch.cat([x, x])
        for i, t in zip(range(diffusion.num_steps - 1, -1, -1), diffusion.timesteps):
            z = self.step(diffusion, z, y, i, t, generator)
        return z[: x.shape[0]]


# -- FLOPs ------------------------------------------------------------------------------------------


def step_macs(cfg: dict, batch: int, blocks: list[int], long_skips: bool = True) -> float:
    """Multiply-accumulates of one model call on ``batch`` inputs running ``blocks``."""
    d, depth, p = cfg["hidden_size"], cfg["depth"], cfg["patch_size"]
    tokens = (cfg["input_size"] // p) ** 2
    cin = cfg["in_channels"]
    cout = 2 * cin if cfg.get("learn_sigma", True) else cin
    mlp = int(d * cfg.get("mlp_ratio", 4.0))
    per_sample = tokens * p * p * cin * d + 256 * d + d * d  # patch embed, timestep MLP
    per_sample += 2 * d * d + tokens * d * p * p * cout  # final adaLN + linear
    for i in blocks:
        per_sample += 6 * d * d  # adaLN
        per_sample += tokens * (4 * d * d + 2 * d * mlp) + 2 * tokens * tokens * d  # qkv, proj, MLP, attention
        if long_skips and i >= depth // 2:
            per_sample += tokens * 2 * d * d  # skip linear
    return float(batch * per_sample)


def schedule_counts(diffusion, interval: int | None):
    if interval is None:
        return diffusion.num_steps, 0
    plan = sk.SkipCache(interval=interval, shallow_blocks=SHALLOW).full_steps(diffusion.timesteps)
    return plan.count(True), plan.count(False)


def flop_bound(cfg: dict, diffusion, interval: int) -> tuple[float, float]:
    """(MAC-ratio bound, 1 / block fraction) of a Skip-Cache schedule against full compute."""
    depth = cfg["depth"]
    full_blocks = list(range(depth))
    cached_blocks = [*range(SHALLOW), *range(depth - SHALLOW, depth)]
    n_full, n_cached = schedule_counts(diffusion, interval)
    full_macs = step_macs(cfg, 1, full_blocks)
    total = n_full * full_macs + n_cached * step_macs(cfg, 1, cached_blocks)
    fraction = sk.SkipCache(interval=interval, shallow_blocks=SHALLOW).block_fraction(diffusion.timesteps, depth)
    return diffusion.num_steps * full_macs / total, 1.0 / fraction


# -- variants ---------------------------------------------------------------------------------------


class ExecutorSteps:
    """One full and one cached step of the executor on persistent buffers (what a trajectory repeats)."""

    def __init__(self, model, diffusion, batch, dtype, device, backend, graphs=False):
        self.model, self.backend, self.graphs = model, backend, graphs
        self.ex = SkipStackExecutor(model)
        g = torch.Generator().manual_seed(0)
        self.x0 = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g).to(device)
        y = torch.randint(0, model.num_classes, (batch,), generator=g)
        self.y = torch.cat([y, torch.full_like(y, model.num_classes)]).to(device)
        cond = Condition({"y": self.y})
        self.sig = self.ex.signature(self.x0, cond, dtype, True)
        self.trajectory = SamplerTrajectory(diffusion, CFG_SCALE, guided=model.guided_channels(False))
        with ops.use_backend(backend):
            self.program = self.ex.program(sk.SkipCache(interval=2, shallow_blocks=SHALLOW), self.trajectory)
        self.b = self.ex.acquire(self.sig, self.program, NUM_COEF, cond)
        self.b.copy_outputs = graphs
        mid = diffusion.num_steps // 2
        self.b.coef.copy_(torch.from_numpy(sampler_coefficients(diffusion, CFG_SCALE)[mid]).float())
        self.b.t.fill_(int(diffusion.timestep_map[mid]))
        self.b.cond["y"].copy_(self.y)
        self.b.noise.normal_(generator=None)
        self._graphs = None
        self.full()  # allocates the buffers, fills the deep cache
        if graphs:
            with ops.use_backend(backend):
                self._graphs = self.ex.graphs(self.b, self.program, self.trajectory)

    def _run(self, full):
        self.b.x.copy_(self.x0)  # every timed step starts from the same state
        if self._graphs is not None:
            (self._graphs.full if full else self._graphs.cached).replay()
        else:
            with ops.use_backend(self.backend):
                self.ex.step(self.b, self.program, self.trajectory, full)

    def full(self):
        self._run(True)

    def cached(self):
        self._run(False)


def span(timing: dict, scale: float, fmt: str = "{:.1f}") -> str | None:
    """'min-max' of one ``report.time_fns`` entry in units of 1/``scale`` s, for the tables."""
    return f"{fmt.format(timing['min_s'] * scale)}-{fmt.format(timing['max_s'] * scale)}" if "min_s" in timing else None


def fused_backend(device) -> tuple[str | None, str]:
    if device.type == "cuda":
        return "auto", "ops backend 'auto' (Triton / native where the table picks them)"
    ok, why = ops.backend_status().get("native", (False, "not registered"))
    return ("native", "ops backend 'native' (csrc CPU driver)") if ok else (None, f"native backend missing: {why}")


# -- peak memory ------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(preset: str, variant: str, batch: int, threads: int) -> dict:
    """Run in a fresh process: peak RSS growth over one full (+ one cached) step of ``variant``."""
    torch.set_num_threads(threads)
    model = build_ours(preset)
    diffusion = GaussianDiffusion.create(50, method="ddim")
    if variant == "official":
        runner = OfficialSampler(OfficialSkipDiT.from_skipdit(model).eval(), torch.float32)
        del model
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 4, 32, 32, generator=g)
        y = torch.cat([torch.randint(0, 1000, (batch,), generator=g), torch.full((batch,), 1000)])
        import gc

        gc.collect()
        before = _rss_bytes()
        runner.step(diffusion, torch.cat([x, x]), y, 25, diffusion.timesteps[24])
    else:
        backend = "torch" if variant == "ours" else variant
        import gc

        gc.collect()
        before = _rss_bytes()
        steps = ExecutorSteps(model, diffusion, batch, torch.float32, torch.device("cpu"), backend)
        steps.cached()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_growth_mb": max(0, peak - before) / 2**20}


def probe_in_subprocess(preset, variant, batch, threads) -> float | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", preset, variant, str(batch), str(threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_growth_mb"]
    except Exception as exc:  # report, do not fail the benchmark
        print(f"  memory probe {preset} {variant} failed: {exc}", file=sys.stderr)
        return None


# -- the benchmark ----------------------------------------------------------------------------------


def bench_model(preset, batch, dtype, device, samplers, rounds, e2e, e2e_rounds, memory, threads, log):
    model = build_ours(preset).to(device=device, dtype=dtype)
    official = OfficialSkipDiT.from_skipdit(model).to(device=device, dtype=dtype).eval()
    cfg = model.config
    fused, fused_note = fused_backend(device)
    graphs_ok = device.type == "cuda"
    rows = []
    cuda_peaks: dict = {}
    for sampler in samplers:
        method, steps = ("ddim", int(sampler[4:])) if sampler.startswith("ddim") else ("ddpm", int(sampler[4:]))
        diffusion = GaussianDiffusion.create(steps, method=method)
        variants = {"ours": ExecutorSteps(model, diffusion, batch, dtype, device, "torch")}
        if graphs_ok:
            variants["graphs"] = ExecutorSteps(model, diffusion, batch, dtype, device, "torch", graphs=True)
        if fused:
            variants["fused"] = ExecutorSteps(model, diffusion, batch, dtype, device, fused, graphs=graphs_ok)
        runner = OfficialSampler(official, dtype)
        g = torch.Generator().manual_seed(0)
        z = torch.randn(2 * batch, 4, model.input_size, model.input_size, generator=g).to(device)
        y = variants["ours"].y
        mid = diffusion.num_steps // 2
        fns = {"official/full": lambda: runner.step(diffusion, z, y, mid, diffusion.timestep_map[mid])}
        for name, v in variants.items():
            fns[f"{name}/full"], fns[f"{name}/cached"] = v.full, v.cached
        log(f"{preset} batch {batch} {sampler}: timing {len(fns)} step kinds x {rounds} rounds")
        timing = report.time_fns(fns, device, min_rounds=rounds, max_rounds=rounds, budget_s=0.0, warmup=1)
        failed = {k: v["error"] for k, v in timing.items() if "error" in v}
        for k, why in failed.items():
            log(f"  {k} failed: {why}")
        if "official/full" in failed or "ours/full" in failed:
            raise RuntimeError(f"{preset} batch {batch} {sampler}: a baseline step failed: {failed}")
        t = {k: v["median_s"] for k, v in timing.items() if k not in failed}
        if memory and device.type == "cuda":
            cuda_peaks[(sampler, "official")] = cuda_peak_mb(fns["official/full"], device)
            for name, v in variants.items():
                peak = cuda_peak_mb(lambda v=v: (v.full(), v.cached()), device)
                if v._graphs is not None:  # replay allocates nothing: count the graphs' private pool instead
                    peak += graph_pool_mb(v._graphs.pool) or 0.0
                cuda_peaks[(sampler, name)] = peak

        def latency(full_s, cached_s, interval):
            n_full, n_cached = schedule_counts(diffusion, interval)
            return n_full * full_s + n_cached * (cached_s or 0.0)

        base_a = latency(t["official/full"], None, None)
        base_b = latency(t["ours/full"], None, None)
        table = [("(a) official-style eager", "official", None)]
        for name, tag in (("ours", "b/c"), ("graphs", "d"), ("fused", "e")):
            if name not in variants:
                continue
            label = {"ours": "ours", "graphs": "ours + CUDA graphs", "fused": "ours + fused kernels"}[name]
            if name == "fused" and graphs_ok:
                label = "ours + CUDA graphs + fused kernels"
            first = "(b)" if name == "ours" else f"({tag})"
            table.append((f"{first} {label}, full", name, None))
            for k in INTERVALS:
                prefix = "(c)" if name == "ours" else f"({tag})"
                table.append((f"{prefix} {label}, Skip-Cache {k}", name, k))
        for label, name, interval in table:
            if f"{name}/full" in failed or (interval and f"{name}/cached" in failed):
                rows.append(
                    dict(
                        model=preset,
                        batch=batch,
                        sampler=sampler,
                        variant=label,
                        error=failed.get(f"{name}/full") or failed.get(f"{name}/cached"),
                    )
                )
                continue
            full_s = t[f"{name}/full"]
            cached_s = t.get(f"{name}/cached")
            lat = latency(full_s, cached_s, interval)
            n_full, n_cached = schedule_counts(diffusion, interval)
            row = dict(
                model=preset,
                batch=batch,
                sampler=sampler,
                variant=label,
                dtype=str(dtype).split(".")[-1],
                full_steps=n_full,
                cached_steps=n_cached,
                full_step_ms=1e3 * full_s,
                cached_step_ms=1e3 * cached_s if (cached_s and interval) else None,
                full_step_span_ms=span(timing[f"{name}/full"], 1e3),
                cached_step_span_ms=span(timing[f"{name}/cached"], 1e3) if (cached_s and interval) else None,
                latency_s=lat,
                speedup_vs_a=base_a / lat,
                speedup_vs_b=base_b / lat,
            )
            if interval is not None:
                bound, block_bound = flop_bound(cfg, diffusion, interval)
                own_full = latency(full_s, None, None)
                row.update(
                    flop_bound=bound,
                    block_bound=block_bound,
                    cache_speedup=own_full / lat,
                    of_bound=(own_full / lat) / bound,
                )
            rows.append(row)

        if e2e and sampler in e2e.get("samplers", ()):
            chosen = [
                row
                for row in rows
                if row["sampler"] == sampler and row["variant"] in e2e.get(preset, ()) and "error" not in row
            ]
            if chosen:
                runs = {
                    row["variant"]: e2e_run(row["variant"], model, runner, diffusion, batch, device, variants)
                    for row in chosen
                }
                log(
                    f"{preset} batch {batch} {sampler}: {len(runs)} whole trajectories x {e2e_rounds} interleaved rounds"
                )
                whole = report.time_fns(
                    runs, device, min_rounds=e2e_rounds, max_rounds=e2e_rounds, budget_s=0.0, warmup=0
                )
                for row in chosen:
                    w = whole[row["variant"]]
                    if "error" in w:
                        row["e2e_error"] = w["error"]
                        log(f"  e2e {row['variant']} failed: {w['error']}")
                        continue
                    row.update(e2e_s=w["median_s"], e2e_span_s=span(w, 1.0))
                    log(
                        f"  e2e {preset} {sampler} {row['variant']}: {w['median_s']:.1f} s "
                        f"({span(w, 1.0)}; composed {row['latency_s']:.1f} s)"
                    )
        del variants

    if memory and device.type == "cpu":
        mem = {}
        for variant in ["official", "ours"] + ([fused] if fused else []):
            mem[variant] = probe_in_subprocess(preset, variant, batch, threads)
        for row in rows:
            key = (
                "official" if row["variant"].startswith("(a)") else ("ours" if "fused" not in row["variant"] else fused)
            )
            row["peak_mb"] = mem.get(key)
    elif memory and device.type == "cuda":
        for row in rows:
            row["peak_mb"] = cuda_peaks.get((row["sampler"], _variant_key(row["variant"])))
    return rows, fused_note


def _variant_key(label: str) -> str:
    if label.startswith("(a)"):
        return "official"
    return "fused" if "fused" in label else ("graphs" if "graphs" in label else "ours")


def graph_pool_mb(pool) -> float | None:
    """Memory reserved by one CUDA-graph private pool (segments tagged with its id), or None."""
    try:
        return (
            sum(
                seg["total_size"]
                for seg in torch.cuda.memory_snapshot()
                if tuple(seg.get("segment_pool_id", ())) == tuple(pool)
            )
            / 2**20
        )
    except Exception:
        return None


def cuda_peak_mb(fn, device) -> float:
    """Peak allocated memory above the current allocation while ``fn`` runs (buffers already made)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def e2e_run(variant, model, runner, diffusion, batch, device, variants):
    """A call that samples one whole trajectory of ``variant`` (a row label) through sample() (or the
    official loop for (a))."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, model.input_size, model.input_size, generator=g).to(device)
    labels = list(range(batch))
    interval = int(variant.rsplit(" ", 1)[1]) if "Skip-Cache" in variant else None
    cache = sk.SkipCache(interval=interval, shallow_blocks=SHALLOW) if interval else None
    if variant.startswith("(a)"):
        y = torch.tensor(labels + [1000] * batch, device=device)
        return lambda: runner.sample(diffusion, x, y, torch.Generator().manual_seed(0))
    v = variants[_variant_key(variant)]

    def run():
        with ops.use_backend(v.backend):
            sk.sample(
                model,
                labels,
                steps=diffusion.num_steps,
                method=diffusion.method,
                cfg_scale=CFG_SCALE,
                cache=cache,
                progress=False,
                executor=v.ex,
                cuda_graphs=v.graphs,
            )

    return run


COLUMNS = [
    ("model", "model"),
    ("sampler", "sampler"),
    ("variant", "variant"),
    ("full_steps", "full"),
    ("cached_steps", "cached"),
    ("full_step_ms", "full step ms"),
    ("full_step_span_ms", "min-max"),
    ("cached_step_ms", "cached step ms"),
    ("cached_step_span_ms", "min-max"),
    ("latency_s", "latency s"),
    ("e2e_s", "e2e s"),
    ("e2e_span_s", "min-max"),
    ("speedup_vs_a", "vs (a)"),
    ("speedup_vs_b", "vs (b)"),
    ("flop_bound", "FLOP bound"),
    ("cache_speedup", "cache speedup"),
    ("of_bound", "of bound"),
    ("peak_mb", "peak MB"),
]


def configure(p: argparse.ArgumentParser) -> None:
    cuda = torch.cuda.is_available()
    p.add_argument("--models", nargs="+", default=["DiT-XL/2"] if cuda else ["DiT-S/2", "DiT-B/2"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8] if cuda else [2])
    p.add_argument("--samplers", nargs="+", default=["ddim50", "ddpm250"], help="ddimN / ddpmN")
    p.add_argument("--dtype", default="bf16" if cuda else "fp32", choices=sorted(DTYPES))
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per step kind (medians)")
    p.add_argument(
        "--e2e",
        default="default",
        help="whole-trajectory runs: 'none', 'default' (CPU: DDIM-50 rows a, b, c4 of DiT-S/2; "
        "GPU: every DDIM-50 row), or 'all' (every DDIM-50 row)",
    )
    p.add_argument("--e2e-rounds", type=int, default=3, help="interleaved rounds of the whole trajectories (medians)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--out", default=report.RESULTS_DIR)


def e2e_plan(choice, models, device) -> dict:
    if choice == "none":
        return {}
    everything = "all" if (choice == "all" or device.type == "cuda") else None
    plan = {"samplers": ("ddim50",)}
    for m in models:
        if everything or m not in ("DiT-S/2", "DiT-B/2"):
            plan[m] = _AllRows()
        elif m == "DiT-S/2":
            plan[m] = {"(a) official-style eager", "(b) ours, full", "(c) ours, Skip-Cache 4"}
        else:
            plan[m] = set()  # DiT-B/2 trajectories take minutes each on 2 shared cores
    return plan


class _AllRows:
    def __contains__(self, item):
        return True


def run(args) -> int:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    env = report.environment(device)
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)  # noqa: E731
    e2e = e2e_plan(args.e2e, args.models, device)
    rows, notes = [], []
    fused_note = ""
    for preset in args.models:
        for batch in args.batches:
            r, fused_note = bench_model(
                preset,
                batch,
                dtype,
                device,
                args.samplers,
                args.rounds,
                e2e,
                args.e2e_rounds,
                not args.no_memory,
                args.threads,
                log,
            )
            rows += r
    notes += [
        f"{env['name']}; {args.dtype}; batch = sampled images (CFG scale {CFG_SCALE}: the model runs 2 x batch); "
        f"random SkipDiT weights; 32x32 latents (256px, 256 tokens); Skip-Cache shallow_blocks {SHALLOW}.",
        f"latency s = n_full x full step + n_cached x cached step, from per-step medians of {args.rounds} "
        "interleaved rounds (a step = model with CFG + sampler update); e2e s = whole sample() runs "
        f"(official loop for (a)), where run: median of {args.e2e_rounds} rounds, the rows of one sampler "
        "interleaved round by round; min-max over the rounds.",
        "(b)'s full step is timed with the deep-cache store of the cached program (one hidden-state copy).",
        "(a) runs the sampler over the doubled batch, as the official sample.py does.",
        "FLOP bound = full-trajectory MACs / schedule MACs (blocks, attention, skip linears, embedding, final "
        "layer); cache speedup = same variant's full latency / row latency; of bound = cache speedup / bound.",
        f"(e): {fused_note}.",
    ]
    if device.type != "cuda":
        notes.append(
            "(d) CUDA graphs: skipped (no GPU on this machine); the graph path is covered by gpu-marked tests only."
        )
    if device.type == "cpu" and not args.no_memory:
        notes.append(
            "peak MB: growth of peak RSS over one full + one cached step in a fresh process "
            "(activations, workspace and the executor's buffers; weights excluded)."
        )
    elif device.type == "cuda" and not args.no_memory:
        notes.append(
            "peak MB: torch.cuda.max_memory_allocated above the allocation before one full + one cached "
            "step (weights and the executor's persistent buffers excluded: they exist before); for graph rows "
            "the memory reserved by the graphs' private pool is added (replays allocate nothing)."
        )
    notes.append(f"whole benchmark wall time {time.perf_counter() - started:.0f} s.")
    columns = COLUMNS + [("error", "error")] * any("error" in r for r in rows)
    stem = report.write_results(
        "sampling",
        rows,
        columns,
        meta=vars(args) | {"e2e": str(e2e)},
        device=device,
        notes=notes,
        env=env,
        out_dir=args.out,
        title="End-to-end sampling latency",
    )
    print(open(stem + ".md").read())
    print(f"wrote {stem}.json and .md")
    return 0


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--memory-probe":
        preset, variant, batch, threads = argv[1], argv[2], int(argv[3]), int(argv[4])
        print(json.dumps(memory_probe(preset, variant, batch, threads)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configure(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
