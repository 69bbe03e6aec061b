"""The triton backend against the torch references.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by python_tests/conftest.py):
fp32, small shapes, within 1e-4 relative (the interpreter has no bf16). The half-precision tests and
the full opcheck/compile tests are marked ``gpu``: error against an fp32 reference at most twice the
eager op's error in that dtype, plus a small atol (flash-attn's LayerNorm criterion).
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skipdit_kernels import ops

pytestmark = pytest.mark.skipif(not ops.backend_status()["triton"][0], reason=ops.backend_status()["triton"][1])

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF = [torch.bfloat16, torch.float16]


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def close_half(actual, eager, ref32, atol):
    err = (actual.float() - ref32.float()).abs().max().item()
    err_eager = (eager.float() - ref32.float()).abs().max().item()
    assert err <= 2 * err_eager + atol, f"error {err:.3e} > 2 * eager {err_eager:.3e} + {atol}"


def make(B, T, D, N=None, dtype=torch.float32, seed=0, mean=0.0, transposed=False, device=DEVICE):
    """Inputs of every op; shift/scale/gate are chunk() views of one (B, 6D) tensor (strided), and
    with ``transposed`` x is a (T, B, D) tensor seen as (B, T, D)."""
    N = N or D
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g) * scale + shift).to(device=device, dtype=dtype)

    x = r(T, B, D).transpose(0, 1) if transposed else r(B, T, D)
    mod = r(B, 6 * D, scale=0.5).chunk(6, dim=1)
    return dict(
        x=x, y=r(B, T, D), skip=r(B, T, D, scale=0.5, shift=mean), x_big=x + mean, h=r(B, T, N, scale=0.5),
        shift=mod[0], scale=mod[1], gate=mod[2],
        w1=r(N, D, scale=D**-0.5), b1=r(N, scale=0.1), w2=r(D, N, scale=N**-0.5), b2=r(D, scale=0.1),
        nw=(1 + 0.2 * torch.randn(2 * D, generator=g)).to(device), nb=(0.1 * torch.randn(2 * D, generator=g)).to(device),
        ws=r(N, 2 * D, scale=(2 * D) ** -0.5), ws_sq=r(D, 2 * D, scale=(2 * D) ** -0.5), bs=r(N, scale=0.1), bs_sq=r(D, scale=0.1),
    )


CALLS = {
    "adaln_modulate": lambda t: ops.adaln_modulate(t["x"], t["shift"], t["scale"]),
    "gated_residual": lambda t: ops.gated_residual(t["x"], t["gate"], t["y"]),
    "linear_gelu": lambda t: ops.linear_gelu(t["x"], t["w1"], t["b1"]),
    "linear_gelu_nobias": lambda t: ops.linear_gelu(t["x"], t["w1"], None),
    "linear_gated_residual": lambda t: ops.linear_gated_residual(t["x"], t["h"], t["w2"], t["b2"], t["gate"]),
    "skip_fuse": lambda t: ops.skip_fuse(t["x_big"], t["skip"], t["nw"], t["nb"], t["ws"], t["bs"]),
    "skip_fuse_adaln": lambda t: ops.skip_fuse_adaln(
        t["x_big"], t["skip"], t["nw"], t["nb"], t["ws_sq"], t["bs_sq"], t["shift"], t["scale"]),
}


def both(call, t):
    with ops.use_backend("torch"):
        ref = call(t)
    with ops.use_backend("triton"):
        got = call(t)
    as_tuple = lambda v: v if isinstance(v, tuple) else (v,)  # noqa: E731
    return as_tuple(got), as_tuple(ref)


# (B, T, D, N): batch 1, token counts that fill no block (1, 7, 255), hidden sizes not powers of two.
SHAPES = [(1, 1, 64, 48), (2, 7, 200, 72), (1, 255, 24, 40)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", sorted(CALLS))
def test_fp32_matches_reference(op, shape):
    B, T, D, N = shape
    got, ref = both(CALLS[op], make(B, T, D, N, transposed=T > 1, mean=30.0 if T == 7 else 0.0))
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype and g.is_contiguous()
        assert rel_err(g, r) < 1e-4, op


@pytest.mark.parametrize("op", ["adaln_modulate", "gated_residual", "skip_fuse"])
def test_fp32_hidden_1152(op):
    """DiT-XL/2's hidden size (skip_fuse to a narrow output: the interpreter pays per tile)."""
    got, ref = both(CALLS[op], make(1, 3, 1152, 16, mean=30.0))
    assert rel_err(got[0], ref[0]) < 1e-4


@pytest.mark.parametrize("mean", [30.0, -300.0])
def test_skip_fuse_large_mean_rows_beat_fp32_eager(mean):
    """Rows with a large mean: the folded kernel against a float64 evaluation of the contract."""
    t = make(2, 5, 96, 32, mean=mean, seed=4)
    x, skip = t["x"] + mean, t["skip"]
    with ops.use_backend("triton"):
        got = ops.skip_fuse(x, skip, t["nw"], t["nb"], t["ws"], t["bs"])
    eager = ops.skip_fuse_reference(x, skip, t["nw"], t["nb"], t["ws"], t["bs"])
    z = torch.cat([x, skip], -1).double()
    ref = F.linear(F.layer_norm(z, (z.shape[-1],), t["nw"].double(), t["nb"].double(), 1e-6), t["ws"].double(), t["bs"].double())
    assert rel_err(got, ref) <= 2 * rel_err(eager, ref) + 1e-6


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(B=st.integers(1, 3), T=st.integers(1, 40), D=st.integers(1, 80), N=st.integers(1, 40), seed=st.integers(0, 99))
def test_property_shapes(B, T, D, N, seed):
    t = make(B, T, D, N, seed=seed, transposed=seed % 2 == 1)
    for op in ("adaln_modulate", "gated_residual", "linear_gelu", "linear_gated_residual", "skip_fuse_adaln"):
        got, ref = both(CALLS[op], t)
        for g, r in zip(got, ref):
            assert g.shape == r.shape
            tol = 1e-4 if D > 1 or op == "gated_residual" else 1e-3  # D == 1: LayerNorm of a constant row
            assert (g - r).abs().max().item() <= tol * max(1.0, r.abs().max().item()), (op, B, T, D, N)


def test_linear_gelu_leading_dims():
    t = make(1, 5, 16, 24)
    h2, h4 = t["x"][0], t["x"].reshape(1, 5, 1, 16).expand(2, 5, 1, 16)
    for h in (h2, h4):
        with ops.use_backend("triton"):
            got = ops.linear_gelu(h, t["w1"], t["b1"])
        assert rel_err(got, ops.linear_gelu_reference(h, t["w1"], t["b1"])) < 1e-4


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
    t = make(2, 3, 16, 8, seed=5)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items() if k in ("x", "y", "skip", "nw", "nb", "ws_sq", "bs_sq", "w1", "b1")}
    mod = t["shift"].detach().clone().requires_grad_()

    def loss(backend):
        with ops.use_backend(backend):
            h, m = ops.skip_fuse_adaln(leaves["x"], leaves["skip"], leaves["nw"], leaves["nb"], leaves["ws_sq"],
                                       leaves["bs_sq"], mod, t["scale"])
            out = ops.gated_residual(h, t["gate"], m) + ops.adaln_modulate(leaves["y"], mod, t["scale"])
            out = ops.linear_gated_residual(out, ops.linear_gelu(out, leaves["w1"], leaves["b1"]), t["w2"], None, t["gate"])
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1])).sum(), [*leaves.values(), mod])
        return grads

    for name, g, r in zip([*leaves, "shift"], loss("triton"), loss("torch")):
        assert rel_err(g, r) < 1e-4, name


def _opcheck_samples():
    t = make(2, 5, 16, 12, seed=7)
    from skipdit_kernels.ops.folding import fold_skip_weights

    f = fold_skip_weights(t["nw"], t["nb"], t["ws_sq"], t["bs_sq"])
    return {
        "adaln_modulate": (t["x"], t["shift"], t["scale"], 1e-6),
        "gated_residual": (t["x"], t["gate"], t["y"]),
        "linear_gelu": (t["x"], t["w1"], t["b1"]),
        "linear_gated_residual": (t["x"], t["h"], t["w2"], None, t["gate"]),
        "skip_fuse": (t["x"], t["skip"], f.weight, f.rowsum, f.bias, 1e-6),
        "skip_fuse_adaln": (t["x"], t["skip"], f.weight, f.rowsum, f.bias, t["shift"], t["scale"], 1e-6),
    }


@pytest.mark.parametrize("op", sorted(_opcheck_samples()))
def test_opcheck_schema_fake_autograd(op):
    """Under the interpreter: schema, fake tensors and the autograd registration (the AOT-dispatch
    checks need real launches inside a traced graph: GPU only, below)."""
    with ops.use_backend("triton"):
        fn = getattr(torch.ops.skipdit_triton, op).default
        torch.library.opcheck(fn, _opcheck_samples()[op], test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


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


# ---- GPU: half precision, full opcheck, torch.compile ----------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1152, 1152), (2, 255, 1152, 4608), (2, 256, 1152, 1152), (3, 7, 200, 72)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", sorted(CALLS))
def test_half_precision(op, shape, dtype):
    B, T, D, N = shape
    t32 = make(B, T, D, N, mean=30.0 if op.startswith("skip") else 0.0, transposed=True)
    th = {k: (v.to(dtype) if k not in ("nw", "nb") else v) for k, v in t32.items()}
    with ops.use_backend("torch"):
        ref32 = CALLS[op](t32)
        eager = CALLS[op](th)
    with ops.use_backend("triton"):
        got = CALLS[op](th)
    as_tuple = lambda v: v if isinstance(v, tuple) else (v,)  # noqa: E731
    for g, e, r in zip(as_tuple(got), as_tuple(eager), as_tuple(ref32)):
        assert g.dtype == dtype
        close_half(g, e, r, atol=2e-2 if dtype == torch.bfloat16 else 4e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("op", sorted(_opcheck_samples()))
def test_opcheck_full(op):
    torch.library.opcheck(getattr(torch.ops.skipdit_triton, op).default, _opcheck_samples()[op])


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
