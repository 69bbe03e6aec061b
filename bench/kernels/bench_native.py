"""Native ops against eager torch and torch.compile of the eager chain, on CPU (or CUDA).

    python bench/kernels/bench_native.py [--threads 2] [--hidden 768 1152] [--dtypes fp32 bf16] [--out bench/results]
    python -m pytest bench/kernels/bench_native.py --benchmark-only      # the same cells under pytest-benchmark

Shapes are DiT-B/2 and DiT-XL/2 blocks: batch 4, 256 tokens, hidden 768 / 1152; the ops (those with
native kernels) and their inputs are the op specs' (skipdit_kernels/ops/spec.py). Each cell times its
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402

from skipdit_kernels import ops  # noqa: E402
from skipdit_kernels.ops import native, spec  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SPECS = {s.name: s for s in spec.with_backend("native")}  # the ops with native kernels


def make_inputs(op: str, hidden: int, dtype, device="cpu", batch=4, tokens=256, seed=0) -> list:
    """The op's arguments: its spec's samples at DiT-block widths."""
    return SPECS[op].sample_args((batch, tokens, hidden), dtype=dtype, device=device, seed=seed)


def implementations(op: str, args: list) -> dict:
    s = SPECS[op]
    compiled = torch.compile(lambda: s.reference(*args), dynamic=False)

    def native_call():
        with ops.use_backend("native"):
            return s.op(*args)

    impls = {"eager": lambda: s.reference(*args), "compile": compiled, "native": native_call}
    if op == "skip_fuse":
        cat = torch.cat([args[0], args[1]], dim=-1)
        impls["bare_linear"] = lambda: F.linear(cat, args[4], args[5])
    return impls


def run(hiddens, dtypes, budget_s=4.0, ops_filter=None) -> list[dict]:
    rows = []
    for dname in dtypes:
        for hidden in hiddens:
            for op in SPECS:
                if ops_filter and op not in ops_filter:
                    continue
                torch._dynamo.reset()
                with torch.no_grad():
                    res = report.time_fns(
                        implementations(op, make_inputs(op, hidden, DTYPES[dname])), budget_s=budget_s, max_rounds=50
                    )
                row = {"op": op, "hidden": hidden, "dtype": dname}
                for k, v in res.items():
                    if "error" in v:
                        row[f"{k}_error"] = v["error"]
                    else:
                        row.update(
                            {
                                f"{k}_ms": v["median_s"] * 1e3,
                                f"{k}_min_max_ms": [v["min_s"] * 1e3, v["max_s"] * 1e3],
                                "rounds": v["rounds"],
                            }
                        )
                # Ratios: median of the per-round ratios (drift within a round cancels).
                ratio = lambda a, b: (
                    report.round_ratio(res, a, b)["ratio"] if f"{a}_ms" in row and f"{b}_ms" in row else None
                )  # noqa: E731
                row["native_vs_eager"] = ratio("native", "eager")
                row["native_vs_compile"] = ratio("native", "compile")
                if "bare_linear" in res and ratio("bare_linear", "native"):
                    row["native_over_bare_linear"] = ratio("bare_linear", "native")
                rows.append(row)
                print(
                    f"{dname} D={hidden} {op:22s} "
                    + "  ".join(
                        f"{k} {row[f'{k}_ms']:8.2f} ms" if f"{k}_ms" in row else f"{k} {row[f'{k}_error']}" for k in res
                    )
                    + "".join(f"  x{row[k]:.2f} {k[10:]}" for k in ("native_vs_eager", "native_vs_compile") if row[k])
                    + (
                        f"  {row['native_over_bare_linear']:.3f}x bare Linear"
                        if "native_over_bare_linear" in row
                        else ""
                    ),
                    flush=True,
                )
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
    p.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
    )
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
    @pytest.mark.parametrize("op", list(SPECS))
    @pytest.mark.parametrize("hidden", [768, 1152])
    @pytest.mark.parametrize("dname", ["fp32", "bf16"])
    def test_bench_native(benchmark, dname, hidden, op, impl):
        if not native.load():
            pytest.skip("native backend unavailable")
        torch.set_num_threads(2)
        fn = implementations(op, make_inputs(op, hidden, DTYPES[dname]))[impl]
        with torch.no_grad():
            fn()
            benchmark(fn)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    main()
