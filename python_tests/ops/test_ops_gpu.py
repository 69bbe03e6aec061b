"""Every op on every backend on a CUDA device (marker ``gpu``; skipped without CUDA).

On a machine with CUDA the triton and native backends must both be there: a missing build FAILS
(build the CUDA kernels with ``SKIPDIT_BUILD_CUDA=1 pip install --no-build-isolation -e .``). The
``auto`` table picks torch on CUDA until a GPU has measured the kernels, so these tests name each
backend explicitly. Inputs and bounds are the op specs', run by skipdit_kernels.testing.gpu_check
(the same verdict the GPU owner's one-screen check prints); opcheck of the compiled ops on CUDA is
the contract test's (test_contract.py, marker ``gpu``):

- values against the reference (fp32 with TF32 off, bf16, fp16): within twice the eager op's error
  against float64 plus the spec's atol; hidden 1152, 2 x 255 tokens, on contiguous tensors (the
  16-byte vector path) and on slices starting at element 1 with row stride 1161 (not a multiple of 8:
  the scalar path);
- skip_fuse on rows of mean 300 and std 1 under TF32: within twice the eager op's error vs float64;
- a CUDA graph of all ops plus forecast_blend (device weights) and index_copy_ (device index),
  replayed on new inputs: equal to eager on those inputs;
- inputs on cuda:1 while cuda:0 is current (two GPUs): results on cuda:1, equal to the reference;
- torch.compile(fullgraph=True) of a Skip-DiT block on each backend (flash-attn's lookup included).
"""

import pytest
import torch

from skipdit_kernels import ops
from skipdit_kernels.ops import spec
from skipdit_kernels.testing import gpu_check as G

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

KERNEL_BACKENDS = ("triton", "native")


def _require(backend):
    problem = G.backend_problem(backend)
    if problem:
        pytest.fail(f"CUDA is available but {problem}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backend_is_built_for_cuda(backend):
    _require(backend)


@pytest.mark.parametrize("layout", G.LAYOUTS)
@pytest.mark.parametrize("dtype", ("fp32", "bf16", "fp16"))
@pytest.mark.parametrize("op, backend", G.CELLS)
def test_op_matches_reference(op, backend, dtype, layout):
    _require(backend)
    row = G.check_op(op, backend, dtype, layout)
    assert row["ok"], row


@pytest.mark.parametrize("op", G.OPS)
def test_small_and_odd_shapes(op):
    """Batch 1, one token, an odd hidden size (no vector path anywhere), on every backend."""
    for backend in spec.specs()[op].backends:
        _require(backend)
        for shape in ((1, 1, 1152), (3, 7, 37)):
            for dtype in ("fp32", "bf16"):
                row = G.check_op(op, backend, dtype, "slice", shape=shape)
                assert row["ok"], (shape, row)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_skip_fuse_tf32_mean_300_within_twice_eager_error(backend):
    _require(backend)
    row = G.check_tf32_large_mean(backend)
    assert row["ok"], row


@pytest.mark.parametrize("dtype", ("fp32", "bf16"))
@pytest.mark.parametrize("backend", G.BACKENDS)
def test_cuda_graph_replays_new_inputs_like_eager(backend, dtype):
    _require(backend)
    row = G.check_graph(backend, dtype)
    assert row["ok"], row


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("op, backend", [c for c in G.CELLS if c[1] != "torch"])
def test_ops_run_on_their_tensors_device_not_the_current_one(op, backend):
    _require(backend)
    dev = torch.device("cuda", 1)
    args = spec.specs()[op].sample_args((2, 33, 256), dtype=torch.bfloat16, device=dev)
    with torch.cuda.device(0):
        got = G.run_op(op, backend, args)
        torch.cuda.synchronize(dev)
        assert torch.cuda.current_device() == 0
    ref = G.run_op(op, "torch", args)
    for g, r in zip(got, ref):
        assert g.device == dev
        torch.testing.assert_close(g, r, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("backend", G.BACKENDS)
def test_compile_fullgraph_skipdit_block(backend):
    from skipdit_kernels.models.layers import DiTBlock, SkipProjection

    _require(backend)
    torch.manual_seed(0)
    D = 128
    block = DiTBlock(D, 4).eval().cuda().bfloat16()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.05)
    norm, proj = torch.nn.LayerNorm(2 * D, eps=1e-6).cuda(), SkipProjection(D).cuda().bfloat16()
    x, skip = (torch.randn(2, 64, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    c = torch.randn(2, D, device="cuda", dtype=torch.bfloat16)

    def run(x, skip, c):
        return block(x, c, fusion=(skip, norm, proj.linear))

    with torch.no_grad(), ops.use_backend(backend):
        eager = run(x, skip, c)
        torch._dynamo.reset()
        compiled = torch.compile(run, fullgraph=True)(x, skip, c)
    err = ((compiled.float() - eager.float()).abs().max() / eager.float().abs().max()).item()
    assert err < 2e-2, err
