"""The op layer on the torch backend: argument errors, torch.compile, folded weights, attention."""

import pytest
import torch
import torch.nn.functional as F

from skipdit_kernels import ops
from skipdit_kernels.ops import folding, spec


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


SPECS = spec.specs()


def _args(op, D=8, B=2, T=4):
    """The op's sample arguments by name (its spec's, fp32, GEMM width 3 * D)."""
    s = SPECS[op]
    return dict(zip(s.arg_names, s.sample_args((B, T, D), out=3 * D)))


def _call(op, a):
    return SPECS[op].op(**a)


# (op, argument to spoil, replacement builder, text the message must contain)
BAD_SHAPES = [
    ("adaln_modulate", "shift", lambda a: a["shift"][:, :5], "shift"),
    ("adaln_modulate", "x", lambda a: a["x"][0], "x"),
    ("gated_residual", "y", lambda a: a["y"][:, :3], "y"),
    ("gated_residual", "gate", lambda a: a["gate"][:1], "gate"),
    ("linear_gated_residual", "weight", lambda a: a["weight"][:, :5], "weight"),
    ("linear_gated_residual", "bias", lambda a: a["bias"][:3], "bias"),
    ("linear_gelu", "weight", lambda a: a["weight"][:, :7], "weight"),
    ("linear_gelu", "bias", lambda a: a["bias"][:5], "bias"),
    ("linear", "weight", lambda a: a["weight"][:, :7], "weight"),
    ("skip_fuse", "skip", lambda a: a["skip"][:, :2], "skip"),
    ("skip_fuse", "norm_weight", lambda a: a["norm_weight"][:8], "norm_weight"),
    ("skip_fuse", "weight", lambda a: a["weight"][:, :15], "weight"),
    ("skip_fuse_adaln", "weight", lambda a: torch.randn(5, 16), "bias must have shape \\(5\\)"),
    ("skip_fuse_adaln", "scale", lambda a: a["scale"][:, :3], "scale"),
]


@pytest.mark.parametrize("op, name, bad, text", BAD_SHAPES, ids=[f"{o}-{n}" for o, n, _, _ in BAD_SHAPES])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_shape_raises_value_error_naming_it(op, name, bad, text, backend):
    a = _args(op)
    a[name] = bad(a)
    with ops.use_backend(backend), pytest.raises(ValueError, match=text) as info:
        _call(op, a)
    assert "shape" in str(info.value)


# The ops with kernels whose first two arguments are tensors of one dtype: the second one spoilt.
SPOILABLE = [name for name, s in SPECS.items() if len(s.backends) > 1 and s.arg_names[1] != "weights"]


@pytest.mark.parametrize("op", SPOILABLE)
def test_bad_dtype_and_device_raise_value_error_naming_them(op):
    a = _args(op)
    key = SPECS[op].arg_names[1]
    spoilt = dict(a, **{key: a[key].double()})
    with pytest.raises(ValueError, match="float64") as info:
        _call(op, spoilt)
    assert "dtype" in str(info.value)
    spoilt = dict(a, **{key: a[key].to("meta")})
    with pytest.raises(ValueError, match="meta") as info:
        _call(op, spoilt)
    assert "device" in str(info.value)
    spoilt = dict(a, **{key: a[key].long()})
    with pytest.raises(ValueError, match="floating point"):
        _call(op, spoilt)


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
    for op in SPECS:
        if ops.auto_backend(op, torch.device("cpu"), torch.float32) != "torch":
            continue
        a = _args(op, D=16)
        with ops.use_backend("torch"):
            ref = _call(op, a)
        with ops.use_backend("auto"):
            got = _call(op, a)
        for g_, r_ in zip(spec.as_tuple(got), spec.as_tuple(ref)):
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mean", [0.0, 30.0, -300.0])
def test_folded_model_large_mean_rows(mean, dtype):
    """The torch model of the folded kernels (mean pivot; fp32 GEMMs read [x | skip] - row mean) against
    the contract in float64: within twice eager's error in that dtype (plus bf16's rounding of h)."""
    norm, lin = _skip_modules(D=64)
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 5, 64, generator=g) + mean).to(dtype)
    skip = (torch.randn(2, 5, 64, generator=g) * 0.5 + mean).to(dtype)
    lin.to(dtype)
    ref = skip_fuse_float64(x, skip, norm, lin)
    f = _fold(norm, lin)
    got = folding.skip_fuse_folded_torch(x, skip, f.weight, f.rowsum, f.bias, 1e-6)
    eager = ops.skip_fuse_reference(x, skip, norm.weight, norm.bias, lin.weight, lin.bias)
    atol = 0 if dtype == torch.float32 else 2**-8 * ref.abs().max().item()
    err = lambda a: (a.double() - ref).abs().max().item()  # noqa: E731
    assert err(got) <= 2 * err(eager) + 1e-6 + atol
