"""Each op as torch eager vs torch.compile vs triton (vs native when built), at DiT-XL/2 shapes.

    python bench/kernels/bench_ops.py                    # the device's default grid -> bench/results/ops-<device>.{json,md}
    python bench/kernels/bench_ops.py --write-auto       # also refresh skipdit_kernels/ops/auto_backends.json
    python -m pytest bench/kernels/bench_ops.py --benchmark-only     # the same cells under pytest-benchmark

    python bench/kernels/bench_ops.py --quick            # small timing budget, no torch.compile column

Grid: hidden 1152; 256 and 1024 tokens; batch 2 and 16; bf16 (on CUDA). On a CPU the default grid
is DiT-B/2 and DiT-XL/2 (hidden 768 and 1152), batch 4 x 256 tokens, fp32 and bf16, and the
triton column is skipped: Triton runs there only in its numpy interpreter, a test tool.

The ops and their inputs are the op specs' (skipdit_kernels/ops/spec.py: the ops with kernels, sample
inputs at DiT widths). "eager" is the op's torch reference (the eager chain: cat + fp32 LayerNorm +
Linear, ...);
"compile" is torch.compile of that same chain; "triton"/"native" are the public ops on that backend.
Reported: median ms per call, achieved GB/s (minimum bytes: every input tensor read once, every
output written once), TFLOP/s for the GEMM ops, and speedup over eager.

Baselines, timed in the same interleaved rounds as the op (so load drift hits them alike):
- memory-bound ops (adaln_modulate, gated_residual): ``torch.empty_like(x).copy_(x)`` on a tensor of
  the activation's size; "% copy BW" = the op's GB/s / the copy's GB/s (bytes read + written; target
  >= 80 %). Each cell also gets a "copy" row (its GB/s is the copy bandwidth). The native
  kernel is also timed alone (no op layer: "kernel alone % copy BW") and on 32 tokens, whose rows stay
  in cache: a kernel no faster per row there is not limited by memory bandwidth (said when a target
  is missed).
- GEMM ops: the bare GEMM the op contains, same shape, through the vendor GEMM the native op calls
  (torch.mm in the GEMM's compute dtype: fp32 for bf16/fp16 on CPUs without bf16 units);
  "native / GEMM" (skip_fuse target: <= 1.05). For the skip fusion also the weight folding alone
  ("fold ms", recomputed on every call), so that a miss shows where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402

from skipdit_kernels import ops  # noqa: E402
from skipdit_kernels.ops import spec  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SPECS = spec.specs()
OPS = tuple(name for name, s in SPECS.items() if len(s.backends) > 1)  # the ops with kernels
IMPLS = ("eager", "compile", "triton", "native")


def make_inputs(op, batch, tokens, hidden, dtype, device, seed=0) -> list:
    """The op's arguments at (batch, tokens, hidden): its spec's samples, GEMM widths of a DiT block
    (qkv 3 x hidden, MLP 4 x hidden), per-sample vectors as chunk() views of the adaLN projection."""
    return SPECS[op].sample_args((batch, tokens, hidden), dtype=dtype, device=device, seed=seed)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def gemm_operands(op, args):
    """(activation (M, K), weight (N, K)) of the op's GEMM, or None."""
    s = SPECS[op]
    if s.gemm is None:
        return None
    a, w, _ = s.gemm
    act = torch.cat([args[0], args[1]], dim=-1) if s.folds else args[a]
    return act.reshape(-1, act.shape[-1]), args[w]


def traffic(op, args, outs):
    """(minimum bytes moved: every input read once, every output written once, flops of the GEMM)."""
    nbytes = sum(t.numel() * t.element_size() for t in _tensors(args) + _tensors(outs))
    operands = gemm_operands(op, args)
    if operands is None:
        return nbytes, 0
    act, w = operands
    return nbytes, 2 * act.shape[0] * act.shape[1] * w.shape[0]


def skipped_impls(device: torch.device) -> dict[str, str]:
    """Implementations that cannot run on ``device``, with the reason."""
    status = ops.backend_status()
    out = {}
    if device.type != "cuda":
        out["triton"] = "no GPU: Triton only runs in its interpreter here (a test tool, not a speed path)"
    elif not status["triton"][0]:
        out["triton"] = status["triton"][1]
    if not status["native"][0]:
        out["native"] = status["native"][1]
    return out


def gemm_name(act: torch.Tensor) -> str:
    """The GEMM the native op runs: '<library> <dtype>' (oneDNN or at::mm for fp32, see native.cpu_fp32_gemm)."""
    from skipdit_kernels.ops import native

    dtype = gemm_dtype(act)
    lib = "oneDNN" if dtype == torch.float32 and native.cpu_fp32_gemm() == "onednn" else "at::mm"
    return f"{lib} {str(dtype).replace('torch.', '')}"


def gemm_dtype(act: torch.Tensor) -> torch.dtype:
    """The dtype the native op's GEMM runs in (fp32 for half precision on CPUs without its units)."""
    from skipdit_kernels.ops import native

    return torch.float32 if native._gemm_in_fp32(act) else act.dtype


CACHED_TOKENS = 32  # a (batch 4, 32, hidden) activation and its output stay in L2 (2 MB here)


def baselines(op: str, args: list, with_native: bool) -> dict:
    """The reference points of ``op`` (see the module docstring), timed with its implementations."""
    from skipdit_kernels.ops import native

    x = _tensors(args)[0]
    operands = gemm_operands(op, args)
    if operands is None:  # memory-bound
        out = {"copy": lambda: torch.empty_like(x).copy_(x)}
        if with_native and op in native.KERNELS:  # the kernel alone, here and with its rows in cache
            kernel = native.KERNELS[op]
            small = make_inputs(op, x.shape[0], CACHED_TOKENS, x.shape[2], x.dtype, x.device)
            out["kernel"] = lambda: kernel(*args)
            out["kernel_cached"] = lambda: kernel(*small)
        return out
    compute = gemm_dtype(x)
    act = operands[0].to(compute).contiguous()
    w = operands[1].to(compute)
    if compute == torch.float32 and native.cpu_fp32_gemm() == "onednn":
        out = {"gemm": lambda: torch.ops.mkldnn._linear_pointwise(act, w, None, "none", [], "")}
    else:
        out = {"gemm": lambda: torch.mm(act, w.t())}
    if SPECS[op].folds:
        out["fold"] = lambda: native._folded(x, *args[2:6])
    return out


def _on_backend(backend: str, public, args: list):
    with ops.use_backend(backend):
        return public(*args)


def implementations(op: str, args: list, device: torch.device, skip: dict, compile: bool = True) -> dict:
    s = SPECS[op]
    impls = {"eager": lambda: s.reference(*args)}
    if compile:
        torch._dynamo.reset()
        impls["compile"] = torch.compile(lambda: s.reference(*args), dynamic=False)
    for backend in ("triton", "native"):
        if backend not in skip and backend in s.backends:
            impls[backend] = lambda backend=backend: _on_backend(backend, s.op, args)
    return impls


def run_cell(op, B, T, D, dname, device, budget_s, skip, compile=True) -> dict:
    args = make_inputs(op, B, T, D, DTYPES[dname], device)
    fns = implementations(op, args, device, skip, compile)
    if device.type == "cpu":
        fns.update(baselines(op, args, "native" in fns))
    with torch.no_grad():
        res = report.time_fns(fns, device, budget_s=budget_s, min_rounds=3, warmup=1 if device.type == "cpu" else 5)
        nbytes, flops = traffic(op, args, SPECS[op].reference(*args))
    row = {"op": op, "batch": B, "tokens": T, "hidden": D, "dtype": dname}
    eager = res["eager"].get("median_s")
    best = None
    for impl in IMPLS:
        r = res.get(impl)
        if r is None:
            continue
        if "error" in r:
            row[f"{impl}_error"] = r["error"]
            continue
        s = r["median_s"]
        row[f"{impl}_ms"] = s * 1e3
        row[f"{impl}_GBps"] = nbytes / s / 1e9
        if flops:
            row[f"{impl}_TFLOPs"] = flops / s / 1e12
        row[f"{impl}_speedup"] = eager / s if eager else None
        if impl != "compile" and (best is None or s < best[1]):
            best = (impl, s)
    row["rounds"] = res["eager"].get("rounds")
    row["fastest_backend"] = {"eager": "torch"}.get(best[0], best[0]) if best else None
    copy_s = res.get("copy", {}).get("median_s")
    if copy_s:
        copy_GBps = 2 * B * T * D * DTYPES[dname].itemsize / copy_s / 1e9
        row["copy_GBps"] = copy_GBps
        for impl in ("eager", "native"):
            if f"{impl}_GBps" in row:
                row[f"{impl}_pct_copy"] = 100 * row[f"{impl}_GBps"] / copy_GBps
    gemm_s = res.get("gemm", {}).get("median_s")
    if gemm_s:
        row["gemm_ms"] = gemm_s * 1e3
        row["gemm"] = gemm_name(_tensors(args)[0])
        for impl in ("eager", "native"):
            if f"{impl}_ms" in row:
                row[f"{impl}_vs_gemm"] = row[f"{impl}_ms"] / row["gemm_ms"]
    kernel_s, cached_s = (res.get(k, {}).get("median_s") for k in ("kernel", "kernel_cached"))
    if kernel_s and cached_s:
        row["kernel_pct_copy"] = 100 * nbytes / kernel_s / 1e9 / row["copy_GBps"]
        row["kernel_ns_per_row"] = kernel_s * 1e9 / (B * T)
        row["kernel_cached_ns_per_row"] = cached_s * 1e9 / (B * CACHED_TOKENS)
    if "fold" in res and "median_s" in res["fold"]:
        row["fold_ms"] = res["fold"]["median_s"] * 1e3
    return row


def copy_row(B, T, D, dname, device, budget_s) -> dict:
    """The copy bandwidth of a (B, T, D) activation: ``torch.empty_like(x).copy_(x)``, bytes read + written."""
    x = torch.randn(B, T, D, device=device).to(DTYPES[dname])
    res = report.time_fns({"eager": lambda: torch.empty_like(x).copy_(x)}, device, budget_s=budget_s, min_rounds=3)
    s = res["eager"]["median_s"]
    GBps = 2 * x.numel() * x.element_size() / s / 1e9
    return {
        "op": "copy",
        "batch": B,
        "tokens": T,
        "hidden": D,
        "dtype": dname,
        "eager_ms": s * 1e3,
        "eager_GBps": GBps,
        "copy_GBps": GBps,
        "rounds": res["eager"]["rounds"],
    }


PCT_COPY_TARGET, GEMM_TARGET = 80.0, 1.05


def target_notes(rows) -> list[str]:
    """One line per memory-bound / skip-fusion row: its target, met or missed, and where the time goes
    when missed."""
    notes = []
    for r in rows:
        cell = f"{r['op']} B{r['batch']} T{r['tokens']} D{r['hidden']} {r['dtype']}"
        if r.get("native_pct_copy") is not None:
            pct, eager = r["native_pct_copy"], r.get("eager_pct_copy")
            verdict = "met" if pct >= PCT_COPY_TARGET else "MISSED"
            line = (
                f"{cell}: native at {pct:.0f} % of copy bandwidth ({r['copy_GBps']:.1f} GB/s), target >= "
                f"{PCT_COPY_TARGET:.0f} %: {verdict}; eager chain at {eager:.0f} %"
            )
            here, cached = r.get("kernel_ns_per_row"), r.get("kernel_cached_ns_per_row")
            if verdict == "MISSED" and here and cached:
                bound = (
                    "not memory-bound: no faster per row with its rows in cache"
                    if cached >= 0.8 * here
                    else "memory-bound: faster per row with its rows in cache"
                )
                line += (
                    f"; the kernel alone (no op layer) at {r['kernel_pct_copy']:.0f} %, {here:.0f} ns per row "
                    f"here and {cached:.0f} ns at {CACHED_TOKENS} tokens ({bound})"
                )
            notes.append(line)
        elif r["op"].startswith("skip_fuse") and r.get("native_vs_gemm") is not None:
            ratio, total, gemm, fold = r["native_vs_gemm"], r["native_ms"], r["gemm_ms"], r.get("fold_ms", 0.0)
            verdict = "met" if ratio <= GEMM_TARGET else "MISSED"
            rest = total - gemm - fold
            notes.append(
                f"{cell}: native {ratio:.3f}x the bare {r['gemm']} GEMM, target <= {GEMM_TARGET}: {verdict}; "
                f"profile of {total:.2f} ms: GEMM {gemm:.2f} ms ({100 * gemm / total:.0f} %), weight folding "
                f"{fold:.2f} ms ({100 * fold / total:.0f} %), statistics + shift + epilogue + call {rest:.2f} ms "
                f"({100 * rest / total:.0f} %)"
            )
    return notes


def default_grid(device: torch.device) -> list[tuple]:
    if device.type == "cuda":
        return [(B, T, 1152, "bf16") for B in (2, 16) for T in (256, 1024)]
    return [(4, 256, D, dname) for D in (768, 1152) for dname in ("fp32", "bf16")]


def columns() -> list[tuple[str, str]]:
    cols = [("op", "op"), ("batch", "B"), ("tokens", "T"), ("hidden", "D"), ("dtype", "dtype")]
    for impl in IMPLS:
        cols += [(f"{impl}_ms", f"{impl} ms"), (f"{impl}_speedup", f"{impl} x")]
    cols += [
        ("eager_GBps", "eager GB/s"),
        ("best_GBps", "best GB/s"),
        ("best_TFLOPs", "best TFLOP/s"),
        ("copy_GBps", "copy GB/s"),
        ("eager_pct_copy", "eager % copy BW"),
        ("native_pct_copy", "native % copy BW"),
        ("kernel_pct_copy", "kernel alone % copy BW"),
        ("gemm", "GEMM"),
        ("gemm_ms", "GEMM ms"),
        ("fold_ms", "fold ms"),
        ("native_vs_gemm", "native / GEMM"),
        ("fastest_backend", "fastest backend"),
    ]
    return cols


def write_auto_table(rows, device: torch.device, source: str, path=None, margin=1.1) -> dict:
    """Record, per (device kind, op, dtype), the fastest backend: one beating torch eager by more
    than ``margin`` (never triton on a CPU); torch otherwise. Other device kinds' entries are kept."""
    from skipdit_kernels.ops import _backend

    path = path or _backend.AUTO_TABLE_PATH
    with open(path) as f:
        data = json.load(f)
    table, sources = data.setdefault("table", {}), data.setdefault("sources", {})
    best: dict[str, tuple[str, float]] = {}
    for r in rows:
        if r["op"] not in OPS:  # the copy baseline rows
            continue
        key = f"{device.type}/{r['op']}/{DTYPES[r['dtype']]}".replace("torch.", "")
        eager = r.get("eager_ms")
        for impl in ("triton", "native"):
            ms = r.get(f"{impl}_ms")
            if ms is None or eager is None or (impl == "triton" and device.type != "cuda"):
                continue
            if eager / ms > margin and (key not in best or ms < best[key][1]):
                best[key] = (impl, ms)
        best.setdefault(key, ("torch", eager or 0.0))
    for key, (impl, _) in best.items():
        if impl == "torch":
            table.pop(key, None)
        else:
            table[key] = impl
    sources[device.type] = source
    data["table"] = dict(sorted(table.items()))
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--ops", nargs="*", default=list(OPS), choices=OPS)
    p.add_argument("--cells", nargs="*", default=None, help="B,T,D,dtype (e.g. 16,256,1152,bf16)")
    p.add_argument("--budget", type=float, default=None, help="seconds of timing per cell")
    p.add_argument("--quick", action="store_true", help="0.3 s of timing per cell and no torch.compile column")
    p.add_argument("--out", default=report.RESULTS_DIR)
    p.add_argument("--write-auto", action="store_true", help="update skipdit_kernels/ops/auto_backends.json")
    p.add_argument(
        "--auto-margin",
        type=float,
        default=1.1,
        help="a backend enters the auto table only when this much faster than torch eager",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    grid = (
        [(int(b), int(t), int(d), dt) for b, t, d, dt in (c.split(",") for c in args.cells)]
        if args.cells
        else default_grid(device)
    )
    budget = args.budget or (0.3 if args.quick else 1.0 if device.type == "cpu" else 0.5)
    skip = skipped_impls(device)
    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    for impl, why in skip.items():
        print(f"skipping {impl}: {why}", flush=True)
    rows = []
    for B, T, D, dname in grid:
        if device.type == "cpu":
            rows.append(copy_row(B, T, D, dname, device, budget))
            print(f"copy B={B} T={T} D={D} {dname}: {rows[-1]['copy_GBps']:.1f} GB/s", flush=True)
        for op in args.ops:
            row = run_cell(op, B, T, D, dname, device, budget, skip, compile=not args.quick)
            best = row.get("fastest_backend")
            if best:
                key = {"torch": "eager"}.get(best, best)
                row["best_GBps"] = row.get(f"{key}_GBps")
                row["best_TFLOPs"] = row.get(f"{key}_TFLOPs")
            rows.append(row)
            print(
                " ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in row.items()
                    if not k.endswith("GBps") and not k.endswith("TFLOPs")
                ),
                flush=True,
            )
    notes = (
        [
            "Median ms per call of interleaved rounds; `x` = speedup over eager; GB/s counts the minimum bytes "
            "(inputs read once, outputs written once); TFLOP/s counts the GEMM only.",
            "eager = the op's torch reference chain; compile = torch.compile of that chain (inductor); "
            "triton/native = the public op on that backend.",
        ]
        + [f"{impl} skipped: {why}" for impl, why in skip.items()]
        + (["quick mode: 0.3 s per cell, no torch.compile column"] if args.quick else [])
        + target_notes(rows)
    )
    for line in target_notes(rows):
        print(line)
    stem = report.write_results(
        "ops",
        rows,
        columns(),
        meta={"grid": grid, "budget_s": budget, "loadavg_1m_start": load_start, "quick": args.quick},
        device=device,
        notes=notes,
        out_dir=args.out,
        title="Op benchmarks",
    )
    print("wrote", stem + ".{json,md}")
    if args.write_auto:
        write_auto_table(
            rows,
            device,
            margin=args.auto_margin,
            source=os.path.relpath(stem + ".json", os.path.dirname(os.path.dirname(report.RESULTS_DIR))),
        )
        print("updated the auto table")


# ---- pytest-benchmark entry points (python -m pytest bench/kernels/bench_ops.py --benchmark-only) ----------
try:
    import pytest

    _DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @pytest.mark.parametrize("impl", IMPLS)
    @pytest.mark.parametrize("op", OPS)
    @pytest.mark.parametrize("cell", default_grid(_DEVICE), ids=lambda c: "B{}-T{}-D{}-{}".format(*c))
    def test_bench_op(benchmark, cell, op, impl):
        skip = skipped_impls(_DEVICE)
        if impl in skip:
            pytest.skip(skip[impl])
        B, T, D, dname = cell
        args = make_inputs(op, B, T, D, DTYPES[dname], _DEVICE)
        fns = implementations(op, args, _DEVICE, skip)
        if impl not in fns:
            pytest.skip(f"{op} has no {impl} kernel")
        fn = fns[impl]
        with torch.no_grad():
            nbytes, flops = traffic(op, args, SPECS[op].reference(*args))
        sync = torch.cuda.synchronize if _DEVICE.type == "cuda" else (lambda: None)

        def timed():
            fn()
            sync()

        with torch.no_grad():
            timed()
            benchmark(timed)
        s = benchmark.stats.stats.median
        benchmark.extra_info.update(
            GBps=nbytes / s / 1e9, TFLOPs=flops / s / 1e12 if flops else None, device=report.device_tag(_DEVICE)
        )
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    main()
