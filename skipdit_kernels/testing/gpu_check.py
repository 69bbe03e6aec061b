"""``python -m skipdit_kernels.testing.gpu_check``: one screen that says whether this library works on this GPU.

Checks, in order (each line says ok or FAIL and why):
1. a CUDA device is visible (name, compute capability);
2. the native CUDA build is present (``torch.ops.skipdit`` has CUDA kernels);
3. Triton compiles and runs on the device;
4. every op with kernels (``skipdit_kernels.ops.spec``: the ops, their backends, sample inputs and
   tolerances all come from the op specs) on each of its backends, in fp32 (TF32 off) and bf16,
   against its reference: max error against the reference in float64 and the spec's bound (twice
   the eager op's error plus a small atol), on contiguous tensors (the 16-byte vector path) and on
   slices that start at element 1 with a row stride not a multiple of 8 (the scalar path);
5. skip_fuse on rows of mean 300 and std 1 with TF32 on: within twice the eager op's error against
   float64, per backend;
6. a CUDA-graph smoke per backend: its ops, forecast_blend with device weights and index_copy_
   captured once, replayed on new inputs, compared with eager.

Results go to ``bench/results/gpu-check-<device>.json`` and ``.md`` in a source checkout (``--out``
elsewhere; ``--no-write`` for none). Exit status: 0 every check passed, 1 some check failed (listed
at the end), 2 no CUDA device (nothing checked). The test suite's gpu tests
(python_tests/ops/test_ops_gpu.py) run the same checks.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import sys

import torch

from ..ops import spec as S

BACKENDS = ("torch", "triton", "native")
# The ops with kernels, and (op, backend) for each backend its spec lists.
OPS = tuple(name for name, s in S.specs().items() if len(s.backends) > 1)
CELLS = tuple((name, b) for name in OPS for b in BACKENDS if b in S.specs()[name].backends)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = ("contiguous", "slice")
SHAPE = S.DIT_SHAPE  # batch, tokens (odd), DiT-XL's hidden


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for CUDA matmuls (cuBLAS and Triton's fp32 tl.dot follow the same flag) inside the block."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@functools.lru_cache(maxsize=64)
def cached_args(op: str, shape, dtype, device, layout) -> tuple:
    """The op's sample arguments, drawn once per case: the ops never write their inputs."""
    return tuple(S.specs()[op].sample_args(shape, dtype=dtype, device=device, layout=layout))


def run_op(op: str, backend: str, args) -> tuple[torch.Tensor, ...]:
    from .. import ops

    with ops.use_backend(backend):
        return S.as_tuple(S.specs()[op].op(*args))


def _describe(exc: Exception) -> str:
    """A failed cell's message: the exception's type and first line."""
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _max_err(got, ref) -> float:
    return max((g.double() - r.double()).abs().max().item() for g, r in zip(got, ref))


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def backend_problem(backend: str, device="cuda") -> str | None:
    """Why ``backend`` cannot run on ``device`` here (None when it can). On a CUDA machine every
    backend must: a missing build is a failure, not a skip."""
    from .. import ops
    from ..ops import native

    if backend == "torch":
        return None
    ok, why = ops.backend_status()[backend]
    if not ok:
        return f"backend {backend!r} is not available: {why}"
    if backend == "native" and torch.device(device).type == "cuda" and not native.has_cuda_kernels():
        return (
            "the native extension has no CUDA kernels (a CPU-only build); rebuild with "
            "SKIPDIT_BUILD_CUDA=1 pip install --no-build-isolation -e ."
        )
    return None


def check_op(
    op: str, backend: str, dtype: str = "fp32", layout: str = "contiguous", device="cuda", shape=SHAPE
) -> dict:
    """One cell: ``op`` on ``backend`` against its reference (``ops.spec.check_close``). Returns a row
    with ``err``, ``bound`` and ``ok`` (or ``error`` when the backend raised or is missing)."""
    spec = S.specs()[op]
    if backend not in spec.backends:
        raise ValueError(f"{op} has no {backend} kernel (its backends: {spec.backends})")
    row = {"check": "op", "op": op, "backend": backend, "dtype": dtype, "layout": layout}
    problem = backend_problem(backend, device)
    if problem:
        return {**row, "ok": False, "error": problem}
    try:
        with tf32(False):
            device = torch.device(device)
            args = cached_args(op, tuple(shape), DTYPES[dtype], device, layout)
            eager = run_op(op, "torch", args)
            got = run_op(op, backend, args)
            _sync(device)
            err, bound = S.check_close(spec, got, args, eager)
    except Exception as exc:  # a kernel that raises is a failed cell, reported with its message
        return {**row, "ok": False, "error": _describe(exc)}
    return {**row, "err": err, "bound": bound, "ok": err <= bound}


def check_tf32_large_mean(backend: str, device="cuda", shape=(2, 256, 1152), mean=300.0) -> dict:
    """skip_fuse on rows of mean ``mean`` and std 1 with TF32 on: error against float64 at most twice
    the eager op's (LayerNorm in fp32, then the TF32 Linear)."""
    row = {"check": "tf32-mean-300", "op": "skip_fuse", "backend": backend, "dtype": "fp32", "layout": "contiguous"}
    problem = backend_problem(backend, device)
    if problem:
        return {**row, "ok": False, "error": problem}
    spec = S.specs()["skip_fuse"]
    try:
        args = spec.sample_args(shape, device=device, seed=3, mean=mean)
        ref = S.as_tuple(spec.exact(*S.to_float64(args)))
        with tf32(True):
            eager = run_op("skip_fuse", "torch", args)
            got = run_op("skip_fuse", backend, args)
        _sync(device)
    except Exception as exc:
        return {**row, "ok": False, "error": _describe(exc)}
    err, err_eager = _max_err(got, ref), _max_err(eager, ref)
    return {**row, "err": err, "bound": 2 * err_eager, "ok": err <= 2 * err_eager}


def _copy_into(static, fresh) -> None:
    """Write ``fresh``'s tensor values into ``static``'s tensors (lists recursed)."""
    for s, f in zip(static, fresh):
        if isinstance(s, torch.Tensor):
            s.copy_(f)
        elif isinstance(s, (list, tuple)):
            _copy_into(s, f)


def graph_chain(backend: str, args: dict, hist: torch.Tensor, slot: torch.Tensor) -> list[torch.Tensor]:
    """Every op of ``backend`` once, plus the executor's two graph-side primitives: forecast_blend
    reading device weights (one of the ops) and index_copy_ of a deep state (skip_fuse's output) into
    a persistent history buffer at a device index."""
    outs = []
    for op, op_args in args.items():
        out = S.as_tuple(S.specs()[op].op(*op_args))
        if op == "skip_fuse":
            hist.index_copy_(0, slot, out[0].unsqueeze(0))
        outs += out
    outs.append(hist.clone())
    return outs


def check_graph(backend: str, dtype: str = "bf16", device="cuda", shape=(2, 64, 256)) -> dict:
    """Capture graph_chain once on ``backend``, write new inputs (weights included) and slot into the
    static tensors, replay, and compare with eager on the new inputs (values, not shapes)."""
    row = {"check": "cuda-graph", "op": "chain", "backend": backend, "dtype": dtype, "layout": "contiguous"}
    problem = backend_problem(backend, device)
    if problem:
        return {**row, "ok": False, "error": problem}
    from .. import ops

    dt = DTYPES[dtype]
    names = [op for op, b in CELLS if b == backend]
    try:
        with tf32(False), ops.use_backend(backend):
            static = {op: S.specs()[op].sample_args(shape, dtype=dt, device=device, seed=1) for op in names}
            hist = torch.zeros(3, *shape, dtype=dt, device=device)
            slot = torch.zeros(1, dtype=torch.long, device=device)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: autotuning, folded weights, lazy loads
                for _ in range(2):
                    graph_chain(backend, static, hist, slot)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = graph_chain(backend, static, hist, slot)
            for op in names:
                _copy_into(static[op], S.specs()[op].sample_args(shape, dtype=dt, device=device, seed=2))
            slot.fill_(2)
            graph.replay()
            eager_hist = hist.clone()  # what the replay left, recomputed eagerly below
            expected = graph_chain(backend, static, eager_hist, slot)
            torch.cuda.synchronize(device)
    except Exception as exc:
        return {**row, "ok": False, "error": _describe(exc)}
    err = _max_err(captured, expected)
    scale = max(e.abs().max().item() for e in expected)
    bound = (1e-6 if dt == torch.float32 else 1e-2) * scale
    wrote_slot = bool(
        (captured[-1][2].double() - expected[-1][2].double()).abs().max().item() <= bound
        and expected[-1][2].abs().max().item() > 0
    )
    return {
        **row,
        "err": err,
        "bound": bound,
        "ok": err <= bound and wrote_slot,
        **({} if wrote_slot else {"error": "index_copy_ did not write the slot set before the replay"}),
    }


def all_checks(device="cuda") -> list[dict]:
    rows = []
    for op, backend in CELLS:
        for dtype in ("fp32", "bf16"):
            for layout in LAYOUTS:
                rows.append(check_op(op, backend, dtype, layout, device))
    rows += [check_tf32_large_mean(b, device) for b in BACKENDS[1:]]
    rows += [check_graph(b, "bf16", device) for b in BACKENDS]
    cached_args.cache_clear()
    return rows


# ---- report ---------------------------------------------------------------------------------------
def _status(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def _versions() -> str:
    parts = [f"torch {torch.__version__}", f"CUDA {torch.version.cuda}"]
    if importlib.util.find_spec("triton") is not None:
        import triton

        parts.append(f"triton {triton.__version__}")
    return ", ".join(parts)


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if "err" not in row:
        return "ERROR"
    mark = "" if row["ok"] else "!"
    return f"{row['err']:.1e}{mark}"


def op_table(rows: list[dict]) -> list[str]:
    """max error per op (lines) x backend (columns), one line per dtype/layout; '!' marks a miss, '-' a
    backend without a kernel for the op."""
    lines = [f"{'op':22} {'dtype':5} {'layout':10} " + " ".join(f"{b:>9}" for b in BACKENDS)]
    cells = {(r["op"], r["dtype"], r["layout"], r["backend"]): r for r in rows if r["check"] == "op"}
    for op in OPS:
        for dtype in ("fp32", "bf16"):
            for layout in LAYOUTS:
                if any((op, dtype, layout, b) in cells for b in BACKENDS):
                    lines.append(
                        f"{op:22} {dtype:5} {layout:10} "
                        + " ".join(f"{_cell(cells.get((op, dtype, layout, b))):>9}" for b in BACKENDS)
                    )
    return lines


def write(rows: list[dict], out_dir: str | None, device) -> str | None:
    """The results files (None when there is no ``out_dir`` and no source checkout to default to)."""
    from . import report

    if out_dir is None and not os.path.isdir(os.path.dirname(report.RESULTS_DIR)):
        return None
    columns = [(k, k) for k in ("check", "op", "backend", "dtype", "layout", "err", "bound", "ok", "error")]
    notes = [
        "max abs error against the reference in float64; bound: 2x the eager op's error + the spec's atol "
        "(fp32 with TF32 off);",
        "tf32-mean-300: skip_fuse on rows of mean 300, std 1, TF32 on, vs float64, bound 2x eager;",
        "cuda-graph: the ops + forecast_blend + index_copy_ captured, replayed on new inputs, vs eager.",
    ]
    return report.write_results(
        "gpu-check", rows, columns, device=device, notes=notes, out_dir=out_dir, title=f"python -m {__name__}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__name__}", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="a CUDA device (default: the current one)")
    p.add_argument("--out", default=None, help="results directory (default bench/results of the source checkout)")
    p.add_argument("--no-write", action="store_true", help="print the verdict only")
    args = p.parse_args(argv)

    print(f"skipdit-kernels GPU check ({_versions()})")
    if not torch.cuda.is_available():
        why = "this torch has no CUDA" if torch.version.cuda is None else "torch.cuda.is_available() is False"
        print(
            f"no CUDA device: {why} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
            "nothing checked"
        )
        return 2
    try:
        device = torch.device(args.device)
        if device.type != "cuda":
            raise ValueError(f"--device must be a CUDA device, got {args.device!r}")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}")
        return 2

    from ..ops import native

    props = torch.cuda.get_device_properties(device)
    print(
        f"{'CUDA device':20} ok   {props.name} (sm_{props.major}{props.minor}, "
        f"{props.total_memory / 2**30:.0f} GiB), {torch.cuda.device_count()} visible, checking {device}"
    )
    failures = []
    for backend, label in (("native", "native CUDA build"), ("triton", "Triton")):
        problem = backend_problem(backend, device)
        detail = problem or (native.probe()[1] if backend == "native" else "runs on this device")
        print(f"{label:20} {_status(problem is None):4} {detail}")
        if problem:
            failures.append(f"{label}: {problem}")
    with torch.cuda.device(device):
        rows = all_checks(device)
    print(f"\nmax error vs the torch reference, shape {SHAPE} ('!': over the bound; ERROR: raised or missing)")
    print("\n".join(op_table(rows)))
    for r in rows:
        if r["check"] != "op":
            detail = (
                f"err {r['err']:.2e} <= bound {r['bound']:.2e}"
                if r["ok"]
                else r.get("error") or f"err {r['err']:.2e} > bound {r['bound']:.2e}"
            )
            print(f"{r['check'] + ' ' + r['backend']:20} {_status(r['ok']):4} {detail}")
    failures += [
        f"{r['check']} {r['op']} {r['backend']} {r['dtype']} {r['layout']}: "
        + (r.get("error") or f"err {r['err']:.2e} > bound {r['bound']:.2e}")
        for r in rows
        if not r["ok"]
    ]
    if not args.no_write:
        stem = write(rows, args.out, device)
        print(
            f"\nresults: {stem}.json, .md"
            if stem
            else "\nresults not written: no source checkout here "
            "(pass --out DIR; a source checkout writes bench/results/gpu-check-<device>.json)"
        )
    if failures:
        print(f"\nverdict: FAIL ({len(failures)} of {len(rows) + 2} checks)")
        for f in failures[:12]:
            print(f"  - {f}")
        if len(failures) > 12:
            print(f"  ... and {len(failures) - 12} more (see the results file)")
        return 1
    print(f"\nverdict: PASS ({len(rows) + 2} checks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
