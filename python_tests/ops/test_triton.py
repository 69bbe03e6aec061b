"""The triton backend beyond its specs' contract test (test_contract.py: every op x layout x shape
against its reference, opcheck): hidden 1152, rows of large mean, property-based shapes, leading
dimensions, weight updates, backward, a whole model, torch.compile.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by python_tests/conftest.py):
fp32, small shapes (the interpreter has no bf16). Half precision on a GPU: test_ops_gpu.py.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skipdit_kernels import ops
from skipdit_kernels.ops import spec

pytestmark = pytest.mark.skipif(not ops.backend_status()["triton"][0], reason=ops.backend_status()["triton"][1])

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPECS = spec.specs()


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def both(op, args):
    """(triton's outputs, the torch backend's outputs) of ``op`` on ``args``."""
    with ops.use_backend("torch"):
        ref = SPECS[op].op(*args)
    with ops.use_backend("triton"):
        got = SPECS[op].op(*args)
    return spec.as_tuple(got), spec.as_tuple(ref)


@pytest.mark.parametrize("op", ["adaln_modulate", "gated_residual", "skip_fuse"])
def test_fp32_hidden_1152(op):
    """DiT-XL/2's hidden size (skip_fuse to a narrow output: the interpreter pays per tile)."""
    got, ref = both(op, SPECS[op].sample_args((1, 3, 1152), out=16, device=DEVICE, mean=30.0))
    assert rel_err(got[0], ref[0]) < 1e-4


@pytest.mark.parametrize("mean", [30.0, -300.0])
def test_skip_fuse_large_mean_rows_beat_fp32_eager(mean):
    """Rows with a large mean: the folded kernel against a float64 evaluation of the contract."""
    s = SPECS["skip_fuse"]
    args = s.sample_args((2, 5, 96), out=32, device=DEVICE, seed=4, mean=mean)
    with ops.use_backend("triton"):
        got = s.op(*args)
    eager = s.reference(*args)
    ref = s.exact(*spec.to_float64(args))
    assert rel_err(got, ref) <= 2 * rel_err(eager, ref) + 1e-6


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(B=st.integers(1, 3), T=st.integers(1, 40), D=st.integers(1, 80), N=st.integers(1, 40), seed=st.integers(0, 99))
def test_property_shapes(B, T, D, N, seed):
    layout = "transposed" if seed % 2 else "contiguous"
    for op in ("adaln_modulate", "gated_residual", "linear_gelu", "linear_gated_residual", "skip_fuse_adaln"):
        args = SPECS[op].sample_args((B, T, D), out=N, device=DEVICE, layout=layout, seed=seed)
        with torch.no_grad(), ops.use_backend("triton"):
            got = SPECS[op].op(*args)
        err, bound = spec.check_close(SPECS[op], got, args)
        assert err <= bound, (op, B, T, D, N, err, bound)


def test_linear_gelu_leading_dims():
    h, w, b = SPECS["linear_gelu"].sample_args((1, 5, 16), out=24, device=DEVICE)
    h2, h4 = h[0], h.reshape(1, 5, 1, 16).expand(2, 5, 1, 16)
    for x in (h2, h4):
        with ops.use_backend("triton"):
            got = ops.linear_gelu(x, w, b)
        assert rel_err(got, ops.linear_gelu_reference(x, w, b)) < 1e-4


def test_folded_weights_follow_updates_through_triton():
    torch.manual_seed(1)
    D = 24
    norm, lin = torch.nn.LayerNorm(2 * D, eps=1e-6).to(DEVICE), torch.nn.Linear(2 * D, D).to(DEVICE)
    x, skip = torch.randn(1, 4, D, device=DEVICE), torch.randn(1, 4, D, device=DEVICE)

    def check():
        with torch.no_grad():
            with ops.use_backend("triton"):
                got = ops.skip_fuse(x, skip, norm.weight, norm.bias, lin.weight, lin.bias)
            assert rel_err(got, ops.skip_fuse_reference(x, skip, norm.weight, norm.bias, lin.weight, lin.bias)) < 1e-4

    check()
    with torch.no_grad():
        norm.weight.mul_(-1.5)
        lin.weight.add_(0.1)
    check()
    lin.load_state_dict({"weight": torch.randn(D, 2 * D), "bias": torch.randn(D)})
    check()


def test_backward_matches_reference():
    """Gradients through every Triton op (the vjp of its torch formula; for the skip fusion the model
    of the folded kernel, ops.folding.skip_fuse_folded_torch) against the torch backend's."""
    x, skip, nw, nb, ws, bs, shift, scale, eps = SPECS["skip_fuse_adaln"].sample_args((2, 3, 16), device=DEVICE, seed=5)
    _, gate, y = SPECS["gated_residual"].sample_args((2, 3, 16), device=DEVICE, seed=6)
    _, w1, b1 = SPECS["linear_gelu"].sample_args((2, 3, 16), out=8, device=DEVICE, seed=7)
    _, _, w2, _, _ = SPECS["linear_gated_residual"].sample_args((2, 3, 16), out=8, device=DEVICE, seed=8)
    leaves = {
        k: v.detach().clone().requires_grad_()
        for k, v in dict(x=x, y=y, skip=skip, nw=nw, nb=nb, ws=ws, bs=bs, w1=w1, b1=b1, shift=shift).items()
    }

    def loss(backend):
        t = leaves
        with ops.use_backend(backend):
            h, m = ops.skip_fuse_adaln(t["x"], t["skip"], t["nw"], t["nb"], t["ws"], t["bs"], t["shift"], scale)
            out = ops.gated_residual(h, gate, m) + ops.adaln_modulate(t["y"], t["shift"], scale)
            out = ops.linear_gated_residual(out, ops.linear_gelu(out, t["w1"], t["b1"]), w2, None, gate)
        return torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1], device=DEVICE)).sum(), list(t.values()))

    for name, g, r in zip(leaves, loss("triton"), loss("torch")):
        assert rel_err(g, r) < 1e-4, name


def test_tiny_skipdit_forward_matches_torch_backend():
    import skipdit_kernels as sk

    torch.manual_seed(0)
    model = sk.SkipDiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model = model.eval().to(DEVICE)
    x = torch.randn(2, 4, 8, 8, generator=g).to(DEVICE)
    t, y = torch.tensor([10, 500], device=DEVICE), torch.tensor([1, 7], device=DEVICE)
    with torch.no_grad():
        with ops.use_backend("torch"):
            ref = model(x, t, y)
        with ops.use_backend("triton"):
            got = model(x, t, y)
    assert rel_err(got, ref) < 1e-4


# ---- GPU: torch.compile ----------------------------------------------------------------------------
@pytest.mark.gpu
def test_compile_fullgraph_inductor():
    from skipdit_kernels.models.layers import DiTBlock, SkipProjection

    torch.manual_seed(0)
    D = 128
    block = DiTBlock(D, 4).eval().cuda().bfloat16()
    norm, proj = torch.nn.LayerNorm(2 * D, eps=1e-6).cuda(), SkipProjection(D).cuda().bfloat16()
    x, skip = (torch.randn(2, 64, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    c = torch.randn(2, D, device="cuda", dtype=torch.bfloat16)

    def run(x, skip, c):
        return block(x, c, fusion=(skip, norm, proj.linear))

    with torch.no_grad(), ops.use_backend("triton"):
        eager = run(x, skip, c)
        compiled = torch.compile(run, fullgraph=True)(x, skip, c)
    assert rel_err(compiled, eager) < 2e-2
