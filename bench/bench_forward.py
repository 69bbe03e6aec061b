"""End-to-end SkipDiT-B/2 forward (batch 4, 256 tokens): the package on its torch and native backends
against an official-style eager model (bench/official_dit.py) and torch.compile of it.

    python bench/bench_forward.py [--threads 2] [--dtypes fp32 bf16] [--no-compile] [--out bench/results]

fp32 rows: official eager, official torch.compile, package torch backend, package native backend
(and, with --compile-native, native under torch.compile). bf16 rows: official under bf16 autocast
(eager; the official way to run bf16) against the package in bf16 on the native backend. All
variants share one set of random weights (not the zero-initialised adaLN of a fresh model) and are
timed round-robin in one run. Results: bench/results/forward-<cpu model>-<capability>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
from official_dit import OfficialSkipDiT  # noqa: E402

from skipdit_kernels import SkipDiT, ops  # noqa: E402
from skipdit_kernels.ops import native  # noqa: E402


def build(preset="DiT-B/2", seed=0):
    torch.manual_seed(seed)
    model = SkipDiT.from_preset(preset).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                continue
            base = 1.0 if name.startswith("skip_norms") and name.endswith("weight") else 0.0
            p.copy_(base + 0.02 * torch.randn_like(p))
    return model, OfficialSkipDiT.from_skipdit(model).eval()


def inputs(batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 32, 32, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g).float()
    y = torch.randint(0, 1000, (batch,), generator=g)
    return x, t, y


def on_backend(model, backend):
    def run(x, t, y):
        with ops.use_backend(backend):
            return model(x, t, y)

    return run


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-native", action="store_true")
    p.add_argument("--budget", type=float, default=30.0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not native.load():
        raise SystemExit(f"native backend unavailable: {native._state['error']}")
    env = _timing.environment()
    model, official = build()
    x, t, y = inputs()
    results = {"environment": env, "model": "SkipDiT-B/2", "batch": 4, "tokens": 256}

    with torch.no_grad():
        if "fp32" in args.dtypes:
            fns = {"official_eager": official, "torch_backend": on_backend(model, "torch"), "native": on_backend(model, "native")}
            compile_s = {}
            if not args.no_compile:
                t0 = time.perf_counter()
                fns["official_compile"] = torch.compile(official)
                fns["official_compile"](x, t, y)
                compile_s["official_compile"] = time.perf_counter() - t0
            if args.compile_native:
                t0 = time.perf_counter()
                fns["native_compile"] = torch.compile(on_backend(model, "native"))
                fns["native_compile"](x, t, y)
                compile_s["native_compile"] = time.perf_counter() - t0
            ref = official(x, t, y)
            errors = {k: rel_err(fn(x, t, y), ref) for k, fn in fns.items()}
            timing = _timing.interleaved({k: (lambda f=f: f(x, t, y)) for k, f in fns.items()}, budget_s=args.budget, min_rounds=3, warmup=1)
            results["fp32"] = {
                "ms": {k: v["median_s"] * 1e3 for k, v in timing.items()},
                "rounds": {k: v["rounds"] for k, v in timing.items()},
                "rel_err_vs_official": errors, "compile_s": compile_s,
            }
            print("fp32", {k: round(v, 1) for k, v in results["fp32"]["ms"].items()}, "errors", errors, flush=True)
        if "bf16" in args.dtypes:
            model_bf16 = SkipDiT.from_preset("DiT-B/2").eval()
            model_bf16.load_state_dict(model.state_dict())
            model_bf16 = model_bf16.to(torch.bfloat16)

            def official_autocast(x, t, y):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return official(x, t, y)

            native_bf16 = on_backend(model_bf16, "native")
            fns = {"official_autocast_bf16": official_autocast, "native_bf16": lambda x, t, y: native_bf16(x.bfloat16(), t, y)}
            ref = official(x, t, y)
            errors = {k: rel_err(fn(x, t, y), ref) for k, fn in fns.items()}
            timing = _timing.interleaved({k: (lambda f=f: f(x, t, y)) for k, f in fns.items()}, budget_s=args.budget, min_rounds=3, warmup=1)
            results["bf16"] = {
                "ms": {k: v["median_s"] * 1e3 for k, v in timing.items()},
                "rounds": {k: v["rounds"] for k, v in timing.items()},
                "rel_err_vs_official_fp32": errors,
            }
            print("bf16", {k: round(v, 1) for k, v in results["bf16"]["ms"].items()}, "errors", errors, flush=True)

    stem = os.path.join(args.out, f"forward-{_timing.device_tag()}")
    _timing.write_results(stem, results, markdown(results))
    print("wrote", stem + ".{json,md}")


def markdown(r) -> str:
    env = r["environment"]
    lines = [
        f"# SkipDiT-B/2 forward on {env['cpu']} ({env['native_cpu_capability']}), {env['threads']} threads",
        "",
        f"torch {env['torch']}, {env['date']}. Batch 4, 256 tokens, random weights shared by all variants; "
        "medians of interleaved rounds. speedup = official eager (fp32) or official bf16 autocast (bf16) / variant.",
        "",
        "| dtype | variant | ms | speedup | rel. error vs official fp32 |",
        "|---|---|---|---|---|",
    ]
    for dtype, base in (("fp32", "official_eager"), ("bf16", "official_autocast_bf16")):
        if dtype not in r:
            continue
        ms = r[dtype]["ms"]
        errs = r[dtype].get("rel_err_vs_official") or r[dtype].get("rel_err_vs_official_fp32")
        for k, v in ms.items():
            lines.append(f"| {dtype} | {k} | {v:.1f} | {ms[base] / v:.3f}x | {errs[k]:.2e} |")
    if "fp32" in r and "official_compile" in r["fp32"]["ms"]:
        ms = r["fp32"]["ms"]
        lines += ["", f"native vs official torch.compile: {ms['official_compile'] / ms['native']:.3f}x"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
