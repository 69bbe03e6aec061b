"""``python -m skipdit_kernels.gpu_check``: one screen that says whether this library works on this GPU.

Checks, in order (each line says ok or FAIL and why):
1. a CUDA device is visible (name, compute capability);
2. the native CUDA build is present (``torch.ops.skipdit`` has CUDA kernels);
3. Triton compiles and runs on the device;
4. every op on every backend (torch, triton, native) against the torch reference in fp32 (TF32 off)
   and bf16: max error and the bound it must meet (fp32: relative to max|ref|; bf16: twice the eager
   op's error against fp32 plus a small atol), on contiguous rows (the 16-byte vector path) and on a
   slice that starts at element 1 with a row stride not a multiple of 8 (the scalar path);
5. skip_fuse on rows of mean 300 and std 1 with TF32 on: within twice the eager op's error against
   float64, per backend;
6. a CUDA-graph smoke per backend: the ops, forecast_blend with device weights and index_copy_
   captured once, replayed on new inputs, compared with eager.

Results go to ``bench/results/gpu-check-<device>.json`` and ``.md`` in a source checkout (``--out``
elsewhere; ``--no-write`` for none). Exit status: 0 every check passed, 1 some check failed (listed
at the end), 2 no CUDA device (nothing checked). The test suite's gpu tests
(python_tests/ops/test_ops_gpu.py) use the same inputs and bounds.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import sys
from typing import Callable

import torch

BACKENDS = ("torch", "triton", "native")
OPS = ("adaln_modulate", "gated_residual", "linear_gelu", "linear_gated_residual", "skip_fuse", "skip_fuse_adaln",
       "forecast_blend")
GEMM_OPS = ("linear_gelu", "linear_gated_residual", "skip_fuse", "skip_fuse_adaln")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# "rows": contiguous (batch, tokens, hidden); "slice": a view [..., 1:1 + hidden] of (..., hidden + 9):
# the first element is 1 past an aligned start and the row stride (hidden + 9) is no multiple of 8.
LAYOUTS = ("rows", "slice")
SHAPE = (2, 255, 1152)  # batch, tokens (odd), DiT-XL's hidden
HALF_ATOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}
FORECAST_WEIGHTS = (1.0, -3.0, 3.0)  # order-2 Lagrange weights of equally spaced steps
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for CUDA matmuls (cuBLAS and Triton's fp32 tl.dot follow the same flag) inside the block."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def make_inputs(shape=SHAPE, dtype=torch.float32, device="cuda", layout="rows", seed=0, mean=0.0) -> dict:
    """Inputs of every op. The same seed gives the same values in every dtype (drawn in fp32, then
    rounded), so a half-precision run compares with the fp32 run of its inputs. Activations follow
    ``layout``; shift/scale/gate are chunk() views of one (batch, 6 * hidden) tensor; the LayerNorm
    parameters stay fp32."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    batch, tokens, hidden = shape
    g = torch.Generator().manual_seed(seed)

    def draw(*s, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*s, generator=g) * scale + shift).to(device=device, dtype=dt)

    def act(width, shift=0.0):
        if layout == "rows":
            return draw(batch, tokens, width, shift=shift)
        return draw(batch, tokens, width + 9, shift=shift)[..., 1:1 + width]

    D = hidden
    shift, scale, gate = draw(batch, 6 * D, scale=0.5).chunk(6, dim=1)[:3]
    return dict(
        x=act(D, mean), skip=act(D, mean + 0.5), y=act(D), h4=act(4 * D),
        shift=shift, scale=scale, gate=gate,
        w1=draw(4 * D, D, scale=D ** -0.5), b1=draw(4 * D, scale=0.1),
        w2=draw(D, 4 * D, scale=(4 * D) ** -0.5), b2=draw(D, scale=0.1),
        nw=1 + draw(2 * D, scale=0.1, dt=torch.float32), nb=draw(2 * D, scale=0.1, dt=torch.float32),
        ws=draw(D, 2 * D, scale=(2 * D) ** -0.5), bs=draw(D, scale=0.1),
        fw=torch.tensor(FORECAST_WEIGHTS, dtype=torch.float32, device=device),
    )


@functools.lru_cache(maxsize=8)
def cached_inputs(shape, dtype, device, layout) -> dict:
    """make_inputs, drawn once per (shape, dtype, device, layout): the ops never write their inputs."""
    return make_inputs(shape, dtype, device, layout)


def _calls() -> dict[str, Callable[[dict], object]]:
    from . import ops

    return {
        "adaln_modulate": lambda t: ops.adaln_modulate(t["x"], t["shift"], t["scale"]),
        "gated_residual": lambda t: ops.gated_residual(t["x"], t["gate"], t["y"]),
        "linear_gelu": lambda t: ops.linear_gelu(t["x"], t["w1"], t["b1"]),
        "linear_gated_residual": lambda t: ops.linear_gated_residual(t["x"], t["h4"], t["w2"], t["b2"], t["gate"]),
        "skip_fuse": lambda t: ops.skip_fuse(t["x"], t["skip"], t["nw"], t["nb"], t["ws"], t["bs"]),
        "skip_fuse_adaln": lambda t: ops.skip_fuse_adaln(t["x"], t["skip"], t["nw"], t["nb"], t["ws"], t["bs"],
                                                         t["shift"], t["scale"]),
        "forecast_blend": lambda t: ops.forecast_blend([t["x"], t["y"], t["skip"]], t["fw"]),
    }


def run_op(op: str, backend: str, t: dict) -> tuple[torch.Tensor, ...]:
    from . import ops

    with ops.use_backend(backend):
        out = _calls()[op](t)
    return out if isinstance(out, tuple) else (out,)


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
    from . import ops
    from .ops import native

    if backend == "torch":
        return None
    ok, why = ops.backend_status()[backend]
    if not ok:
        return f"backend {backend!r} is not available: {why}"
    if backend == "native" and torch.device(device).type == "cuda" and not native.has_cuda_kernels():
        return ("the native extension has no CUDA kernels (a CPU-only build); rebuild with "
                "SKIPDIT_BUILD_CUDA=1 pip install --no-build-isolation -e .")
    return None


def check_op(op: str, backend: str, dtype: str = "fp32", layout: str = "rows", device="cuda",
             shape=SHAPE) -> dict:
    """One cell: ``op`` on ``backend`` against the torch reference. Returns a row with ``err``,
    ``bound`` and ``ok`` (or ``error`` when the backend raised or is missing)."""
    row = {"check": "op", "op": op, "backend": backend, "dtype": dtype, "layout": layout}
    problem = backend_problem(backend, device)
    if problem:
        return {**row, "ok": False, "error": problem}
    dt = DTYPES[dtype]
    try:
        with tf32(False):
            device = torch.device(device)
            t32 = cached_inputs(shape, torch.float32, device, layout)
            ref = run_op(op, "torch", t32)
            if dt == torch.float32:
                got = run_op(op, backend, t32)
                rel = 1e-4 if op in GEMM_OPS else 1e-5
                bound = rel * max(r.abs().max().item() for r in ref)
            else:
                th = cached_inputs(shape, dt, device, layout)
                eager = run_op(op, "torch", th)
                got = run_op(op, backend, th)
                bound = 2 * _max_err(eager, ref) + HALF_ATOL[dt]
            _sync(device)
    except Exception as exc:  # a kernel that raises is a failed cell, reported with its message
        return {**row, "ok": False, "error": _describe(exc)}
    wrong_dtype = [g.dtype for g in got if g.dtype != dt]
    err = _max_err(got, ref)
    ok = not wrong_dtype and err <= bound
    return {**row, "err": err, "bound": bound, "ok": ok,
            **({"error": f"output dtype {wrong_dtype[0]}, expected {dt}"} if wrong_dtype else {})}


def skip_fuse_float64(t: dict) -> torch.Tensor:
    z = torch.cat([t["x"], t["skip"]], -1).double()
    normed = torch.nn.functional.layer_norm(z, (z.shape[-1],), t["nw"].double(), t["nb"].double(), 1e-6)
    return torch.nn.functional.linear(normed, t["ws"].double(), t["bs"].double())


def check_tf32_large_mean(backend: str, device="cuda", shape=(2, 256, 1152), mean=300.0) -> dict:
    """skip_fuse on rows of mean ``mean`` and std 1 with TF32 on: error against float64 at most twice
    the eager op's (LayerNorm in fp32, then the TF32 Linear)."""
    row = {"check": "tf32-mean-300", "op": "skip_fuse", "backend": backend, "dtype": "fp32", "layout": "rows"}
    problem = backend_problem(backend, device)
    if problem:
        return {**row, "ok": False, "error": problem}
    try:
        t = make_inputs(shape, torch.float32, device, "rows", seed=3, mean=mean)
        t["skip"] = t["skip"] - 0.5  # both halves at the same mean
        ref = skip_fuse_float64(t)
        with tf32(True):
            eager = run_op("skip_fuse", "torch", t)[0]
            got = run_op("skip_fuse", backend, t)[0]
        _sync(device)
    except Exception as exc:
        return {**row, "ok": False, "error": _describe(exc)}
    err, err_eager = _max_err((got,), (ref,)), _max_err((eager,), (ref,))
    return {**row, "err": err, "bound": 2 * err_eager, "ok": err <= 2 * err_eager}


def graph_chain(t: dict, hist: torch.Tensor, slot: torch.Tensor) -> list[torch.Tensor]:
    """Every op once, plus the executor's two graph-side primitives: forecast_blend reading device
    weights and index_copy_ of a deep state into a persistent history buffer at a device index."""
    outs = []
    for call in _calls().values():
        out = call(t)
        outs += out if isinstance(out, tuple) else (out,)
    hist.index_copy_(0, slot, outs[4].unsqueeze(0))  # skip_fuse's output into slot `slot`
    outs.append(hist.clone())
    return outs


def check_graph(backend: str, dtype: str = "bf16", device="cuda", shape=(2, 64, 256)) -> dict:
    """Capture graph_chain once on ``backend``, write new inputs, weights and slot into the static
    tensors, replay, and compare with eager on the new inputs (values, not shapes)."""
    row = {"check": "cuda-graph", "op": "chain", "backend": backend, "dtype": dtype, "layout": "rows"}
    problem = backend_problem(backend, device)
    if problem:
        return {**row, "ok": False, "error": problem}
    from . import ops

    dt = DTYPES[dtype]
    try:
        with tf32(False), ops.use_backend(backend):
            static = make_inputs(shape, dt, device, seed=1)
            hist = torch.zeros(3, *shape, dtype=dt, device=device)
            slot = torch.zeros(1, dtype=torch.long, device=device)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: autotuning, folded weights, lazy loads
                for _ in range(2):
                    graph_chain(static, hist, slot)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = graph_chain(static, hist, slot)
            fresh = make_inputs(shape, dt, device, seed=2)
            for k in ("x", "skip", "y", "h4", "shift", "scale", "gate"):
                static[k].copy_(fresh[k])
            static["fw"].copy_(torch.tensor((0.5, 0.25, 0.25)))
            slot.fill_(2)
            graph.replay()
            eager_hist = hist.clone()  # what the replay left, recomputed eagerly below
            expected = graph_chain(static, eager_hist, slot)
            torch.cuda.synchronize(device)
    except Exception as exc:
        return {**row, "ok": False, "error": _describe(exc)}
    err = _max_err(captured, expected)
    scale = max(e.abs().max().item() for e in expected)
    bound = (1e-6 if dt == torch.float32 else 1e-2) * scale
    replayed_slot = captured[-1][2].double()
    wrote_slot = bool((replayed_slot - expected[4].double()).abs().max().item() <= bound)
    return {**row, "err": err, "bound": bound, "ok": err <= bound and wrote_slot,
            **({} if wrote_slot else {"error": "index_copy_ did not write the slot set before the replay"})}


def all_checks(device="cuda") -> list[dict]:
    rows = []
    for op in OPS:
        for dtype in ("fp32", "bf16"):
            for layout in LAYOUTS:
                for backend in BACKENDS:
                    rows.append(check_op(op, backend, dtype, layout, device))
    rows += [check_tf32_large_mean(b, device) for b in BACKENDS[1:]]
    rows += [check_graph(b, "bf16", device) for b in BACKENDS]
    cached_inputs.cache_clear()
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


def _cell(row: dict) -> str:
    if "err" not in row:
        return "ERROR"
    mark = "" if row["ok"] else "!"
    return f"{row['err']:.1e}{mark}"


def op_table(rows: list[dict]) -> list[str]:
    """max error per op (lines) x backend (columns), one line per dtype/layout; '!' marks a miss."""
    lines = [f"{'op':22} {'dtype':5} {'layout':6} " + " ".join(f"{b:>9}" for b in BACKENDS)]
    cells = {(r["op"], r["dtype"], r["layout"], r["backend"]): r for r in rows if r["check"] == "op"}
    for op in OPS:
        for dtype in ("fp32", "bf16"):
            for layout in LAYOUTS:
                if (op, dtype, layout, BACKENDS[0]) in cells:
                    lines.append(f"{op:22} {dtype:5} {layout:6} "
                                 + " ".join(f"{_cell(cells[(op, dtype, layout, b)]):>9}" for b in BACKENDS))
    return lines


def _results_module():
    path = os.path.join(REPO, "bench", "report.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("skipdit_bench_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(rows: list[dict], out_dir: str | None, device) -> str | None:
    report = _results_module()
    if report is None:
        return None
    columns = [(k, k) for k in ("check", "op", "backend", "dtype", "layout", "err", "bound", "ok", "error")]
    notes = ["max abs error against the torch reference (fp32, TF32 off: relative bound; bf16: 2x eager + atol);",
             "tf32-mean-300: skip_fuse on rows of mean 300, std 1, TF32 on, vs float64, bound 2x eager;",
             "cuda-graph: the ops + forecast_blend + index_copy_ captured, replayed on new inputs, vs eager."]
    kwargs = {"out_dir": out_dir} if out_dir else {}
    return report.write_results("gpu-check", rows, columns, device=device, notes=notes,
                                title="python -m skipdit_kernels.gpu_check", **kwargs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m skipdit_kernels.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="a CUDA device (default: the current one)")
    p.add_argument("--out", default=None, help="results directory (default bench/results of the source checkout)")
    p.add_argument("--no-write", action="store_true", help="print the verdict only")
    args = p.parse_args(argv)

    print(f"skipdit-kernels GPU check ({_versions()})")
    if not torch.cuda.is_available():
        why = "this torch has no CUDA" if torch.version.cuda is None else "torch.cuda.is_available() is False"
        print(f"no CUDA device: {why} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
              "nothing checked")
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

    from .ops import native

    props = torch.cuda.get_device_properties(device)
    print(f"{'CUDA device':20} ok   {props.name} (sm_{props.major}{props.minor}, "
          f"{props.total_memory / 2**30:.0f} GiB), {torch.cuda.device_count()} visible, checking {device}")
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
            detail = (f"err {r['err']:.2e} <= bound {r['bound']:.2e}" if r["ok"] else
                      r.get("error") or f"err {r['err']:.2e} > bound {r['bound']:.2e}")
            print(f"{r['check'] + ' ' + r['backend']:20} {_status(r['ok']):4} {detail}")
    failures += [f"{r['check']} {r['op']} {r['backend']} {r['dtype']} {r['layout']}: "
                 + (r.get("error") or f"err {r['err']:.2e} > bound {r['bound']:.2e}") for r in rows if not r["ok"]]
    if not args.no_write:
        stem = write(rows, args.out, device)
        print(f"\nresults: {stem}.json, .md" if stem else "\nresults not written: bench/report.py not found "
              "(a source checkout writes bench/results/gpu-check-<device>.json)")
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
