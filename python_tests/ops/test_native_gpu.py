"""The native CUDA driver against the torch references (marker ``gpu``; skipped without CUDA).

Run on a GPU machine with the extension built for its architecture:

    SKIPDIT_BUILD_CUDA=1 pip install -e . --no-build-isolation && python -m pytest -q -m gpu python_tests/ops/test_native_gpu.py

Same criteria as on CPU: fp32 within 1e-5 relative (1e-4 for the folded skip fusion); fp16/bf16 within
twice the eager error against an fp32 reference plus a small atol. Plus CUDA-graph capture of every op.
"""
import pytest
import torch

from skipdit_kernels import ops
from skipdit_kernels.ops import native
from skipdit_kernels.ops.folding import fold_skip_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEV = "cuda"


def _require_cuda_kernels():
    if not native.load() or not native.has_cuda_kernels():
        pytest.skip(f"native CUDA kernels not built: {native._state['error'] or 'CPU-only build'}")


def rnd(*shape, g, dtype=torch.float32, scale=1.0, mean=0.0):
    return (torch.randn(*shape, generator=g) * scale + mean).to(device=DEV, dtype=dtype)


def make(hidden, tokens, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = hidden
    mod = rnd(batch, 6 * D, g=g, scale=0.5).chunk(6, dim=1)
    return dict(
        x=rnd(batch, tokens, D, g=g), y=rnd(batch, tokens, D, g=g), skip=rnd(batch, tokens, D, g=g, mean=0.5),
        shift=mod[0], scale=mod[1], gate=mod[2],
        w1=rnd(4 * D, D, g=g, scale=D**-0.5), b1=rnd(4 * D, g=g, scale=0.1),
        w2=rnd(D, 4 * D, g=g, scale=(4 * D) ** -0.5), b2=rnd(D, g=g, scale=0.1),
        nw=1 + 0.1 * rnd(2 * D, g=g), nb=0.1 * rnd(2 * D, g=g),
        ws=rnd(D, 2 * D, g=g, scale=(2 * D) ** -0.5), bs=rnd(D, g=g, scale=0.1),
    )


def chain(t):
    m = ops.adaln_modulate(t["x"], t["shift"], t["scale"])
    r = ops.gated_residual(t["x"], t["gate"], t["y"])
    a = ops.linear_gelu(m, t["w1"], t["b1"])
    o = ops.linear_gated_residual(t["x"], a, t["w2"], t["b2"], t["gate"])
    h = ops.skip_fuse(t["x"], t["skip"], t["nw"], t["nb"], t["ws"], t["bs"])
    h2, hm = ops.skip_fuse_adaln(t["x"], t["skip"], t["nw"], t["nb"], t["ws"], t["bs"], t["shift"], t["scale"])
    return [m, r, a, o, h, h2, hm]


TOL32 = [1e-5, 1e-5, 1e-5, 1e-5, 1e-4, 1e-4, 1e-4]


@pytest.mark.parametrize("hidden", (1152, 768, 37))
@pytest.mark.parametrize("tokens", (1, 255, 256))
def test_fp32(hidden, tokens):
    _require_cuda_kernels()
    torch.backends.cuda.matmul.allow_tf32 = False
    t = make(hidden, tokens)
    ref = chain(t)
    with ops.use_backend("native"):
        got = chain(t)
    for a, r, tol in zip(got, ref, TOL32):
        err = (a - r).abs().max().item()
        assert err <= tol * r.abs().max().item(), err


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("hidden", (1152, 768, 37))
@pytest.mark.parametrize("tokens", (1, 255))
def test_half(dtype, hidden, tokens):
    _require_cuda_kernels()
    t32 = make(hidden, tokens)
    th = {k: (v.to(dtype) if k not in ("nw", "nb") else v) for k, v in t32.items()}
    ref32 = chain(t32)
    eager = chain(th)
    with ops.use_backend("native"):
        got = chain(th)
    for a, e, r in zip(got, eager, ref32):
        assert a.dtype == dtype
        err = (a.float() - r).abs().max().item()
        err_eager = (e.float() - r).abs().max().item()
        assert err <= 2 * err_eager + 1e-2, (err, err_eager)


def test_non_contiguous_and_batched():
    _require_cuda_kernels()
    t = make(96, 33, batch=3)
    base = torch.randn(3, 33, 192, device=DEV)
    t["x"] = base[:, :, :96]
    t["y"] = torch.randn(33, 3, 96, device=DEV).transpose(0, 1)
    ref = chain(t)
    with ops.use_backend("native"):
        got = chain(t)
    for a, r, tol in zip(got, ref, TOL32):
        assert (a - r).abs().max().item() <= 10 * tol * r.abs().max().item()


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_cuda_graph_capture(dtype):
    _require_cuda_kernels()
    t = {k: (v.to(dtype) if k not in ("nw", "nb") else v) for k, v in make(768, 256, batch=2).items()}
    with ops.use_backend("native"):
        eager = chain(t)  # also prepares the folded weights outside the capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            chain(t)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = chain(t)
    graph.replay()
    torch.cuda.synchronize()
    for a, e in zip(static, eager):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_opcheck_cuda():
    _require_cuda_kernels()
    t = make(16, 5, batch=2)
    f = fold_skip_weights(t["nw"], t["nb"], t["ws"], t["bs"])
    sk = torch.ops.skipdit
    samples = [
        (sk.adaln_modulate, (t["x"], t["shift"], t["scale"], 1e-6)),
        (sk.gated_residual, (t["x"], t["gate"], t["y"])),
        (sk.linear_gated_residual, (t["x"], t["y"], t["ws"][:, :16].contiguous(), t["bs"], t["gate"])),
        (sk.linear_gelu, (t["x"], t["w1"], t["b1"])),
        (sk.skip_fuse, (t["x"], t["skip"], f.weight, f.rowsum, f.bias, 1e-6)),
        (sk.skip_fuse_adaln, (t["x"], t["skip"], f.weight, f.rowsum, f.bias, t["shift"], t["scale"], 1e-6)),
    ]
    for op, args in samples:
        torch.library.opcheck(op.default, args)
