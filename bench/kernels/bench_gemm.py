"""fp32 GEMMs at the library's shapes: torch's F.linear (MKL's sgemm in torch's x86 builds) vs oneDNN
(torch's own ``mkldnn::_linear_pointwise``) vs the native driver's ``skipdit::linear`` (which runs
its fp32 GEMMs on whichever of the two ``native.cpu_fp32_gemm()`` names).

Why it exists: on x86 CPUs not made by Intel, MKL's sgemm takes a code path about half as fast as
oneDNN's JIT kernels, so the native CPU driver sends fp32 GEMMs to oneDNN there
(``csrc/cpu/ops_cpu.cpp: gemm_nt``); this benchmark is the evidence, per CPU.

    python bench/kernels/bench_gemm.py [--threads 1] [--budget 2]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import report  # noqa: E402

from skipdit_kernels.ops import native  # noqa: E402

# (model, layer, rows M, in K, out N): the bundled demo model (hidden 96, 16 tokens, a CFG batch of
# 200), DiT-B/2 and DiT-XL/2 (256 tokens, batch 4).
SHAPES = [
    ("demo", "qkv", 3200, 96, 288), ("demo", "fc1", 3200, 96, 384), ("demo", "fc2", 3200, 384, 96),
    ("demo", "skip", 3200, 192, 96), ("demo", "adaLN", 200, 96, 576),
    ("DiT-B/2", "qkv", 1024, 768, 2304), ("DiT-B/2", "fc1", 1024, 768, 3072), ("DiT-B/2", "fc2", 1024, 3072, 768),
    ("DiT-B/2", "skip", 1024, 1536, 768), ("DiT-B/2", "adaLN", 4, 768, 4608),
    ("DiT-XL/2", "qkv", 1024, 1152, 3456), ("DiT-XL/2", "fc1", 1024, 1152, 4608), ("DiT-XL/2", "fc2", 1024, 4608, 1152),
]  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per shape")
    parser.add_argument("--out", default=report.RESULTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not native.load():
        raise SystemExit("the native extension is not built: pip install -e . (see csrc/README.md)")
    rows = []
    for model, layer, M, K, N in SHAPES:
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
        fns = {
            "torch": lambda: F.linear(x, w, b),
            "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
            "native": lambda: torch.ops.skipdit.linear(x, w, b),
        }
        t = report.time_fns(fns, budget_s=args.budget)
        err = (torch.ops.skipdit.linear(x, w, b) - F.linear(x, w, b)).abs().max().item()
        flops = 2 * M * K * N
        row = dict(model=model, layer=layer, M=M, K=K, N=N, native_max_abs_err=err)
        for name in fns:
            row[f"{name}_ms"] = t[name]["median_s"] * 1e3
            row[f"{name}_gflops"] = flops / t[name]["median_s"] / 1e9
        row["native_vs_torch"] = t["torch"]["median_s"] / t["native"]["median_s"]
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    notes = [
        f"Median ms per call of interleaved rounds, {args.threads} thread(s); native = skipdit::linear, whose fp32 "
        f"GEMMs run on {native.cpu_fp32_gemm()} here (SKIPDIT_CPU_FP32_GEMM=onednn|torch overrides); "
        "native x = torch ms / native ms; err = max |native - F.linear|.",
    ]
    stem = report.write_results("gemm", rows, columns=[
        ("model", "model"), ("layer", "layer"), ("M", "M"), ("K", "K"), ("N", "N"),
        ("torch_ms", "torch (MKL) ms"), ("onednn_ms", "oneDNN ms"), ("native_ms", "native ms"),
        ("torch_gflops", "torch GFLOP/s"), ("native_gflops", "native GFLOP/s"), ("native_vs_torch", "native x"),
        ("native_max_abs_err", "err")], meta=dict(cpu_fp32_gemm=native.cpu_fp32_gemm()), notes=notes,
        title="fp32 GEMMs: torch (MKL) vs oneDNN vs native", out_dir=args.out)  # fmt: skip
    print(open(stem + ".md").read())


if __name__ == "__main__":
    main()
