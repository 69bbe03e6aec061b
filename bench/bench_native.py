"""Native ops against eager torch and torch.compile of the eager chain, on CPU (or CUDA).

    python bench/bench_native.py [--threads 2] [--hidden 768 1152] [--dtypes fp32 bf16] [--out bench/results]
    python -m pytest bench/bench_native.py --benchmark-only      # the same cells under pytest-benchmark

Shapes are DiT-B/2 and DiT-XL/2 blocks: batch 4, 256 tokens, hidden 768 / 1152. Each cell times its
implementations round-robin in one run, so the ratios compare like with like. The Triton column is
left out on CPU (Triton only runs there in its numpy interpreter). Results: bench/results/
native-<cpu model>-<capability>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

from skipdit_kernels import ops  # noqa: E402
from skipdit_kernels.ops import native  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_inputs(hidden: int, dtype, device="cpu", batch=4, tokens=256, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)

    D = hidden
    mod = r(batch, 6 * D, scale=0.5).chunk(6, dim=1)
    return dict(
        x=r(batch, tokens, D), y=r(batch, tokens, D), skip=r(batch, tokens, D), h4=r(batch, tokens, 4 * D, scale=0.5),
        shift=mod[0], scale=mod[1], gate=mod[2],
        w1=r(4 * D, D, scale=D**-0.5), b1=r(4 * D, scale=0.1), w2=r(D, 4 * D, scale=(4 * D) ** -0.5), b2=r(D, scale=0.1),
        nw=(1 + 0.1 * torch.randn(2 * D, generator=g)).to(device), nb=(0.1 * torch.randn(2 * D, generator=g)).to(device),
        ws=r(D, 2 * D, scale=(2 * D) ** -0.5), bs=r(D, scale=0.1),
    )


# Each op: (reference call, public op call) over the inputs dict.
OPS = {
    "adaln_modulate": (
        lambda t: ops.adaln_modulate_reference(t["x"], t["shift"], t["scale"], 1e-6),
        lambda t: ops.adaln_modulate(t["x"], t["shift"], t["scale"], 1e-6),
    ),
    "gated_residual": (
        lambda t: ops.gated_residual_reference(t["x"], t["gate"], t["y"]),
        lambda t: ops.gated_residual(t["x"], t["gate"], t["y"]),
    ),
    "linear_gelu": (
        lambda t: ops.linear_gelu_reference(t["x"], t["w1"], t["b1"]),
        lambda t: ops.linear_gelu(t["x"], t["w1"], t["b1"]),
    ),
    "linear_gated_residual": (
        lambda t: ops.linear_gated_residual_reference(t["x"], t["h4"], t["w2"], t["b2"], t["gate"]),
        lambda t: ops.linear_gated_residual(t["x"], t["h4"], t["w2"], t["b2"], t["gate"]),
    ),
    "skip_fuse": (
        lambda t: ops.skip_fuse_reference(t["x"], t["skip"], t["nw"], t["nb"], t["ws"], t["bs"], 1e-6),
        lambda t: ops.skip_fuse(t["x"], t["skip"], t["nw"], t["nb"], t["ws"], t["bs"], 1e-6),
    ),
    "skip_fuse_adaln": (
        lambda t: ops.skip_fuse_adaln_reference(t["x"], t["skip"], t["nw"], t["nb"], t["ws"], t["bs"], t["shift"], t["scale"], 1e-6),
        lambda t: ops.skip_fuse_adaln(t["x"], t["skip"], t["nw"], t["nb"], t["ws"], t["bs"], t["shift"], t["scale"], 1e-6),
    ),
}


def implementations(op: str, t: dict) -> dict:
    ref, public = OPS[op]
    compiled = torch.compile(lambda: ref(t), dynamic=False)

    def native_call():
        with ops.use_backend("native"):
            return public(t)

    impls = {"eager": lambda: ref(t), "compile": compiled, "native": native_call}
    if op == "skip_fuse":
        cat = torch.cat([t["x"], t["skip"]], dim=-1)
        impls["bare_linear"] = lambda: F.linear(cat, t["ws"], t["bs"])
    return impls


def run(hiddens, dtypes, budget_s=4.0, ops_filter=None) -> list[dict]:
    rows = []
    for dname in dtypes:
        for hidden in hiddens:
            t = make_inputs(hidden, DTYPES[dname])
            for op in OPS:
                if ops_filter and op not in ops_filter:
                    continue
                torch._dynamo.reset()
                with torch.no_grad():
                    res = report.time_fns(implementations(op, t), budget_s=budget_s, max_rounds=50)
                row = {"op": op, "hidden": hidden, "dtype": dname}
                for k, v in res.items():
                    if "error" in v:
                        row[f"{k}_error"] = v["error"]
                    else:
                        row.update({f"{k}_ms": v["median_s"] * 1e3, f"{k}_min_max_ms": [v["min_s"] * 1e3, v["max_s"] * 1e3],
                                    "rounds": v["rounds"]})
                # Ratios: median of the per-round ratios (drift within a round cancels).
                ratio = lambda a, b: report.round_ratio(res, a, b)["ratio"] if f"{a}_ms" in row and f"{b}_ms" in row else None  # noqa: E731
                row["native_vs_eager"] = ratio("native", "eager")
                row["native_vs_compile"] = ratio("native", "compile")
                if "bare_linear" in res and ratio("bare_linear", "native"):
                    row["native_over_bare_linear"] = ratio("bare_linear", "native")
                rows.append(row)
                print(f"{dname} D={hidden} {op:22s} " + "  ".join(
                    f"{k} {row[f'{k}_ms']:8.2f} ms" if f"{k}_ms" in row else f"{k} {row[f'{k}_error']}" for k in res)
                    + "".join(f"  x{row[k]:.2f} {k[10:]}" for k in ("native_vs_eager", "native_vs_compile") if row[k])
                    + (f"  {row['native_over_bare_linear']:.3f}x bare Linear" if "native_over_bare_linear" in row else ""),
                    flush=True)
    return rows


def markdown(rows, env) -> str:
    lines = [
        f"# Native ops on {env['cpu']} ({env['native_cpu_capability']}), {env['threads']} threads",
        "",
        f"torch {env['torch']}, {env['date']}. Batch 4, 256 tokens; ms per call: median (min-max) of interleaved rounds. "
        "Ratios: median of per-round ratios, > 1: native faster. `bare` = Linear(2D->D) on a ready concat (skip_fuse only).",
        "",
        "| dtype | hidden | op | eager | compile | native | bare | native/eager | native/compile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    def ms(r, impl):
        if f"{impl}_ms" not in r:
            return "error" if f"{impl}_error" in r else ""
        lo, hi = r[f"{impl}_min_max_ms"]
        return f"{r[f'{impl}_ms']:.2f} ({lo:.2f}-{hi:.2f})"

    def x(ratio):
        return f"{ratio:.2f}x" if ratio else "-"

    for r in rows:
        lines.append(
            f"| {r['dtype']} | {r['hidden']} | {r['op']} | {ms(r, 'eager')} | {ms(r, 'compile')} | "
            f"{ms(r, 'native')} | {ms(r, 'bare_linear')} | {x(r['native_vs_eager'])} | {x(r['native_vs_compile'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", type=int, nargs="+", default=[768, 1152])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--ops", nargs="*", default=None)
    p.add_argument("--budget", type=float, default=4.0, help="seconds of timing per cell")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not native.load():
        raise SystemExit(f"native backend unavailable: {native._state['error']}")
    env = report.environment()
    rows = run(args.hidden, args.dtypes, args.budget, args.ops)
    stem = report.write_results("native", rows, env=env, body=markdown(rows, env), out_dir=args.out)
    print("wrote", stem + ".{json,md}")


# ---- pytest-benchmark entry points ---------------------------------------------------------------
try:
    import pytest

    @pytest.mark.parametrize("impl", ["eager", "compile", "native"])
    @pytest.mark.parametrize("op", list(OPS))
    @pytest.mark.parametrize("hidden", [768, 1152])
    @pytest.mark.parametrize("dname", ["fp32", "bf16"])
    def test_bench_native(benchmark, dname, hidden, op, impl):
        if not native.load():
            pytest.skip("native backend unavailable")
        torch.set_num_threads(2)
        t = make_inputs(hidden, DTYPES[dname])
        fn = implementations(op, t)[impl]
        with torch.no_grad():
            fn()
            benchmark(fn)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    main()
