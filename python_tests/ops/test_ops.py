"""The op layer on the torch backend: argument errors, torch.compile, folded weights, attention."""

import pytest
import torch
import torch.nn.functional as F

from skipdit_kernels import ops
from skipdit_kernels.ops import folding


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def _args(D=8, B=2, T=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return dict(x=r(B, T, D), y=r(B, T, D), h=r(B, T, 3 * D), shift=r(B, D), scale=r(B, D), gate=r(B, D),
                w=r(D, 3 * D), b=r(D), w1=r(3 * D, D), b1=r(3 * D), nw=r(2 * D), nb=r(2 * D), ws=r(D, 2 * D), bs=r(D))


CALLS = {
    "adaln_modulate": lambda a: ops.adaln_modulate(a["x"], a["shift"], a["scale"]),
    "gated_residual": lambda a: ops.gated_residual(a["x"], a["gate"], a["y"]),
    "linear_gated_residual": lambda a: ops.linear_gated_residual(a["x"], a["h"], a["w"], a["b"], a["gate"]),
    "linear_gelu": lambda a: ops.linear_gelu(a["x"], a["w1"], a["b1"]),
    "skip_fuse": lambda a: ops.skip_fuse(a["x"], a["y"], a["nw"], a["nb"], a["ws"], a["bs"]),
    "skip_fuse_adaln": lambda a: ops.skip_fuse_adaln(a["x"], a["y"], a["nw"], a["nb"], a["ws"], a["bs"], a["shift"], a["scale"]),
}

# (op, argument to spoil, replacement builder, text the message must contain)
BAD_SHAPES = [
    ("adaln_modulate", "shift", lambda a: a["shift"][:, :5], "shift"),
    ("adaln_modulate", "x", lambda a: a["x"][0], "x"),
    ("gated_residual", "y", lambda a: a["y"][:, :3], "y"),
    ("gated_residual", "gate", lambda a: a["gate"][:1], "gate"),
    ("linear_gated_residual", "w", lambda a: a["w"][:, :5], "weight"),
    ("linear_gated_residual", "b", lambda a: a["b"][:3], "bias"),
    ("linear_gelu", "w1", lambda a: a["w1"][:, :7], "weight"),
    ("linear_gelu", "b1", lambda a: a["b1"][:5], "bias"),
    ("skip_fuse", "y", lambda a: a["y"][:, :2], "skip"),
    ("skip_fuse", "nw", lambda a: a["nw"][:8], "norm_weight"),
    ("skip_fuse", "ws", lambda a: a["ws"][:, :15], "weight"),
    ("skip_fuse_adaln", "ws", lambda a: torch.randn(5, 16), "bias must have shape \\(5\\)"),
    ("skip_fuse_adaln", "scale", lambda a: a["scale"][:, :3], "scale"),
]


@pytest.mark.parametrize("op, name, bad, text", BAD_SHAPES, ids=[f"{o}-{n}" for o, n, _, _ in BAD_SHAPES])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_shape_raises_value_error_naming_it(op, name, bad, text, backend):
    a = _args()
    a[name] = bad(a)
    with ops.use_backend(backend), pytest.raises(ValueError, match=text) as info:
        CALLS[op](a)
    assert "shape" in str(info.value)


@pytest.mark.parametrize("op", sorted(CALLS))
def test_bad_dtype_and_device_raise_value_error_naming_them(op):
    a = _args()
    key = {"adaln_modulate": "scale", "gated_residual": "y", "linear_gated_residual": "h", "linear_gelu": "w1",
           "skip_fuse": "y", "skip_fuse_adaln": "y"}[op]
    spoilt = dict(a, **{key: a[key].double()})
    with pytest.raises(ValueError, match="float64") as info:
        CALLS[op](spoilt)
    assert "dtype" in str(info.value)
    spoilt = dict(a, **{key: a[key].to("meta")})
    with pytest.raises(ValueError, match="meta") as info:
        CALLS[op](spoilt)
    assert "device" in str(info.value)
    spoilt = dict(a, **{key: a[key].long()})
    with pytest.raises(ValueError, match="floating point"):
        CALLS[op](spoilt)


def test_attention_is_sdpa_on_cpu():
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(3, 2, 4, 7, 8, generator=g).unbind(0)
    for backend in ("torch", "triton"):
        with ops.use_backend(backend):
            assert torch.equal(ops.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    with pytest.raises(ValueError, match="shapes differ"):
        ops.attention(q, k[:, :, :3], v)


def test_compile_fullgraph_through_torch_backend():
    from skipdit_kernels.models.layers import DiTBlock, SkipProjection

    torch.manual_seed(0)
    D = 32
    block = DiTBlock(D, 4).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.05)
    norm, proj = torch.nn.LayerNorm(2 * D, eps=1e-6), SkipProjection(D)
    x, skip, c = torch.randn(2, 9, D), torch.randn(2, 9, D) + 3, torch.randn(2, D)

    def run(x, skip, c):
        return block(x, c, fusion=(skip, norm, proj.linear))

    with torch.no_grad(), ops.use_backend("torch"):
        eager = run(x, skip, c)
        torch._dynamo.reset()
        compiled = torch.compile(run, fullgraph=True, backend="aot_eager")(x, skip, c)
    assert rel_err(compiled, eager) < 1e-6


def test_auto_is_the_reference_bitwise_on_cpu_fp32():
    """What the models run by default must stay the official arithmetic unless a table entry says otherwise."""
    a = _args(D=16)
    for op, call in CALLS.items():
        if ops.auto_backend(op, torch.device("cpu"), torch.float32) != "torch":
            continue
        with ops.use_backend("torch"):
            ref = call(a)
        with ops.use_backend("auto"):
            got = call(a)
        for g_, r_ in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,)):
            assert torch.equal(g_, r_), op


# ---- folded skip weights --------------------------------------------------------------------------
def _skip_modules(D=16, seed=1):
    torch.manual_seed(seed)
    norm, lin = torch.nn.LayerNorm(2 * D, eps=1e-6), torch.nn.Linear(2 * D, D)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.1)
    return norm, lin


def _fold(norm, lin):
    return folding.fold_skip_weights(norm.weight, norm.bias, lin.weight, lin.bias)


def _fold_float64(norm, lin):
    """The folding evaluated in float64, rounded once (the definition the fp32 arithmetic meets)."""
    gamma, beta, w = norm.weight.double(), norm.bias.double(), lin.weight.double()
    folded = (w * gamma).to(lin.weight.dtype)
    return folded, folded.double().sum(1).float(), (w @ beta + lin.bias.double()).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fold_matches_float64_folding(dtype):
    norm, lin = _skip_modules(D=96)
    lin.to(dtype)
    f = _fold(norm, lin)
    weight, rowsum, bias = _fold_float64(norm, lin)
    assert f.weight.dtype == dtype and f.rowsum.dtype == f.bias.dtype == torch.float32
    if dtype == torch.float32:  # one fp32 rounding of an exact product: identical
        assert torch.equal(f.weight, weight)
    else:  # fp32 then half: at most one unit in the last place, rarely
        ulp = torch.finfo(dtype).eps * weight.float().abs()
        assert ((f.weight.float() - weight.float()).abs() <= ulp).all()
    assert torch.allclose(f.rowsum, f.weight.double().sum(1).float(), rtol=1e-6, atol=1e-6)
    assert torch.allclose(f.bias, bias, rtol=1e-6, atol=1e-6)


def test_fold_is_differentiable_when_training():
    norm, lin = _skip_modules()
    f = _fold(norm, lin)
    assert f.weight.requires_grad and f.bias.requires_grad
    with torch.no_grad():
        assert not _fold(norm, lin).weight.requires_grad


def skip_fuse_float64(x, skip, norm, lin):
    """The contract evaluated in float64 throughout (skip_fuse_reference's LayerNorm is fp32 by design)."""
    z = torch.cat([x, skip], dim=-1).double()
    normed = F.layer_norm(z, (z.shape[-1],), norm.weight.double(), norm.bias.double(), 1e-6)
    return F.linear(normed, lin.weight.double(), lin.bias.double())


@pytest.mark.parametrize("mean", [0.0, 30.0, -300.0])
def test_folded_formula_large_mean_rows(mean):
    norm, lin = _skip_modules(D=64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 64, generator=g) + mean
    skip = torch.randn(2, 5, 64, generator=g) * 0.5 + mean
    ref = skip_fuse_float64(x, skip, norm, lin)
    got = folding.skip_fuse_folded_torch(x, skip, _fold(norm, lin), 1e-6)
    eager = ops.skip_fuse_reference(x, skip, norm.weight, norm.bias, lin.weight, lin.bias)
    # the folded form cancels acc - mean * rowsum; within a few times fp32 eager's error
    assert rel_err(got, ref) <= 2 * rel_err(eager, ref) + 1e-6
