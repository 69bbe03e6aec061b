"""Property-based tests of every public op in skipdit_kernels.ops, on every backend that runs here.

Each call either returns what the torch reference returns (within a tolerance scaled by the dtype:
at most twice the reference's own error in that dtype against float64, plus a small atol) or raises
ValueError / TypeError naming the op; never a crash, a bare AssertionError, an IndexError or a
RuntimeError from inside the library. Shapes are tiny (odd, empty and one-element sizes included),
layouts vary (contiguous, transposed, misaligned, strided); .ci/sanitize.sh also runs this file
under AddressSanitizer and UndefinedBehaviorSanitizer.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skipdit_kernels import ops

FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow]
)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float64: 1e-12}
LAYOUTS = ["contiguous", "transposed", "misaligned", "every_other"]
TOKEN_OPS = ["adaln_modulate", "gated_residual", "linear_gated_residual", "linear_gelu", "skip_fuse", "skip_fuse_adaln"]


def _backends():
    names = ["auto", "torch"]
    status = ops.backend_status()
    if status["native"][0]:
        names.append("native")
    return names


BACKENDS = _backends()


def _lay(t: torch.Tensor, layout: str) -> torch.Tensor:
    if t.dim() == 0 or layout == "contiguous":
        return t
    if layout == "misaligned":
        base = torch.empty(t.numel() + 1, dtype=t.dtype)
        return base[1:].view(t.shape).copy_(t)
    if layout == "every_other":
        return torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)[..., ::2].copy_(t)
    if t.dim() < 2:
        return t
    return t.transpose(0, 1).contiguous().transpose(0, 1)


def _tensor(shape, dtype, seed, scale=1.0, mean=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tuple(shape), generator=g) * scale + mean).to(dtype)


def _token_args(op, B, T, D, out, dtype, seed):
    """Valid arguments of ``op`` (activations and weights in ``dtype``; LayerNorm params fp32)."""
    r = lambda *s, **k: _tensor(s, dtype, seed + len(s) + sum(s), **k)  # noqa: E731
    x = r(B, T, D, mean=0.3)
    if op == "adaln_modulate":
        return [x, r(B, D, scale=0.5), r(B, D, scale=0.5) * 0.9, 1e-6]
    if op == "gated_residual":
        return [x, r(B, D, scale=0.5), _tensor((B, T, D), dtype, seed + 99)]
    if op == "linear_gated_residual":
        return [x, _tensor((B, T, out), dtype, seed + 98), r(D, out, scale=max(out, 1) ** -0.5), r(D, scale=0.1), r(B, D, scale=0.5)]
    if op == "linear_gelu":
        return [x, r(out, D, scale=D**-0.5), r(out, scale=0.1)]
    nw = 1 + 0.1 * _tensor((2 * D,), torch.float32, seed + 1)
    nb = 0.1 * _tensor((2 * D,), torch.float32, seed + 2)
    width = D if op == "skip_fuse_adaln" else out
    args = [x, _tensor((B, T, D), dtype, seed + 97), nw, nb, r(width, 2 * D, scale=(2 * D) ** -0.5), r(width, scale=0.1)]
    if op == "skip_fuse_adaln":
        args += [r(B, D, scale=0.5), _tensor((B, D), dtype, seed + 96, scale=0.5)]
    return args + [1e-6]


def _close(op, got, args, reference):
    """got vs the reference: error against float64 at most twice the reference's own, plus atol."""
    got = got if isinstance(got, tuple) else (got,)
    eager = reference(*args)
    eager = eager if isinstance(eager, tuple) else (eager,)
    exact = reference(*[a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args])
    exact = exact if isinstance(exact, tuple) else (exact,)
    for g, e, x in zip(got, eager, exact):
        assert g.shape == e.shape and g.dtype == e.dtype and g.device == e.device, (op, g.shape, e.shape, g.dtype, e.dtype)
        if x.numel() == 0:
            continue
        scale = 1.0 + x.abs().max().item()
        err = (g.double() - x).abs().max().item()
        err_eager = (e.double() - x).abs().max().item()
        assert err <= 2 * err_eager + ATOL[g.dtype] * scale, f"{op}: error {err:.3e} vs reference's {err_eager:.3e}"


REFERENCE = {
    "adaln_modulate": ops.adaln_modulate_reference,
    "gated_residual": ops.gated_residual_reference,
    "linear_gated_residual": ops.linear_gated_residual_reference,
    "linear_gelu": ops.linear_gelu_reference,
    "skip_fuse": ops.skip_fuse_reference,
    "skip_fuse_adaln": ops.skip_fuse_adaln_reference,
}


@FUZZ
@given(
    op=st.sampled_from(TOKEN_OPS),
    backend=st.sampled_from(BACKENDS),
    dtype=st.sampled_from(DTYPES + [torch.float64]),
    layout=st.sampled_from(LAYOUTS),
    B=st.integers(0, 3),
    T=st.integers(0, 6),
    D=st.integers(1, 40),
    out=st.integers(0, 24),
    rank=st.integers(2, 4),
    seed=st.integers(0, 2**16),
)
def test_token_ops_match_the_reference(op, backend, dtype, layout, B, T, D, out, rank, seed):
    args = _token_args(op, B, T, D, out, dtype, seed)
    if op == "linear_gelu":  # any number of leading dimensions
        args[0] = args[0].reshape(B * T, D) if rank == 2 else args[0].reshape((1,) * (rank - 3) + (B, T, D))
    laid = [_lay(a, layout) if isinstance(a, torch.Tensor) else a for a in args]
    with torch.no_grad(), ops.use_backend(backend):
        got = getattr(ops, op)(*laid)
    _close(op, got, args, REFERENCE[op])


def _bad_values():
    return st.sampled_from(
        ["int64", "float64", "bool", "none", "list", "int", "string", "extra_dim", "drop_dim", "wider", "meta", "scalar"]
    )


def _mutate(a, how):
    if how == "none":
        return None
    if how == "list":
        return a.tolist() if isinstance(a, torch.Tensor) else [a]
    if how == "int":
        return 3
    if how == "string":
        return "x"
    if not isinstance(a, torch.Tensor):
        return {"int64": -1.0, "float64": float("nan"), "bool": True, "meta": math.inf}.get(how, "eps")
    if how == "int64":
        return a.to(torch.int64)
    if how == "float64":
        return a.double()
    if how == "bool":
        return a > 0
    if how == "extra_dim":
        return a.unsqueeze(0)
    if how == "drop_dim":
        return a[0] if a.shape[0] else a.reshape(-1)
    if how == "wider":
        return torch.cat([a, a[..., :1]], dim=-1)
    if how == "meta":
        return a.to("meta")
    return a.sum()  # a 0-d tensor


@FUZZ
@given(
    op=st.sampled_from(TOKEN_OPS),
    backend=st.sampled_from(BACKENDS),
    dtype=st.sampled_from(DTYPES),
    B=st.integers(1, 3),
    T=st.integers(1, 5),
    D=st.integers(1, 24),
    out=st.integers(1, 12),
    which=st.integers(0, 8),
    how=_bad_values(),
    seed=st.integers(0, 2**16),
)
def test_token_ops_refuse_bad_arguments_by_name(op, backend, dtype, B, T, D, out, which, how, seed):
    args = _token_args(op, B, T, D, out, dtype, seed)
    i = which % len(args)
    args[i] = _mutate(args[i], how)
    try:
        with torch.no_grad(), ops.use_backend(backend):
            got = getattr(ops, op)(*args)
    except (ValueError, TypeError) as exc:
        assert op in str(exc), f"{type(exc).__name__} does not name the op: {exc}"
        return
    # Accepted: the mutation was a valid input (e.g. float64 everywhere, eps changed). Same as the reference.
    if any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args):
        return
    _close(op, got, args, REFERENCE[op])


@FUZZ
@given(
    backend=st.sampled_from(BACKENDS),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    B=st.integers(0, 2),
    H=st.integers(1, 3),
    T=st.integers(1, 9),
    Dh=st.integers(1, 20),
    how=st.one_of(st.none(), _bad_values()),
    which=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_attention(backend, dtype, layout, B, H, T, Dh, how, which, seed):
    args = [_tensor((B, H, T, Dh), dtype, seed + i) for i in range(3)]
    if how is not None:
        args[which] = _mutate(args[which], how)
    laid = [_lay(a, layout) if isinstance(a, torch.Tensor) else a for a in args]
    try:
        with torch.no_grad(), ops.use_backend(backend):
            got = ops.attention(*laid)
    except (ValueError, TypeError) as exc:
        assert how is not None, f"valid attention inputs refused: {exc}"
        assert "attention" in str(exc), exc
        return
    if how is None or all(isinstance(a, torch.Tensor) and a.device.type != "meta" for a in args):
        _close("attention", got, args, ops.attention_reference)


@FUZZ
@given(
    backend=st.sampled_from(BACKENDS),
    dtype=st.sampled_from(DTYPES + [torch.float64]),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    k=st.integers(0, 5),
    tensor_weights=st.booleans(),
    how=st.one_of(st.none(), _bad_values()),
    which=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_forecast_blend(backend, dtype, shape, k, tensor_weights, how, which, seed):
    history = [_tensor(tuple(shape), dtype, seed + i) for i in range(k)]
    weights = [float(w) for w in _tensor((k,), torch.float64, seed - 1)]
    if tensor_weights:
        weights = torch.tensor(weights)
    if how is not None and k:
        history[which % k] = _mutate(history[which % k], how)
    try:
        with torch.no_grad(), ops.use_backend(backend):
            got = ops.forecast_blend(history, weights)
    except (ValueError, TypeError) as exc:
        assert "forecast_blend" in str(exc), exc
        return
    assert how is None or how in ("float64", "extra_dim", "drop_dim", "wider", "scalar") and len(set(
        (h.shape, h.dtype) for h in history)) == 1
    if all(h.device.type != "meta" for h in history):
        _close("forecast_blend", got, [history, weights], _blend_reference)


@FUZZ
@given(
    backend=st.sampled_from(BACKENDS),
    dtype=st.sampled_from(DTYPES + [torch.float64]),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    scale=st.one_of(st.floats(-10, 10), st.integers(-3, 10), st.sampled_from(["tensor", math.nan, math.inf, None, "x"])),
    how=st.one_of(st.none(), _bad_values()),
    which=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_classifier_free_guidance(backend, dtype, shape, scale, how, which, seed):
    args = [_tensor(tuple(shape), dtype, seed + i) for i in range(2)]
    if scale == "tensor":
        scale = torch.tensor(2.5)
    if how is not None:
        args[which] = _mutate(args[which], how)
    try:
        with torch.no_grad(), ops.use_backend(backend):
            got = ops.classifier_free_guidance(*args, scale)
    except (ValueError, TypeError) as exc:
        assert "classifier_free_guidance" in str(exc), exc
        return
    cond, uncond = args
    assert isinstance(scale, (int, float, torch.Tensor)) and math.isfinite(float(scale)), f"accepted scale {scale!r}"
    assert cond.dtype.is_floating_point, f"accepted {cond.dtype}"
    if cond.device.type != "meta":
        _close("classifier_free_guidance", got, [cond, uncond, scale], _guidance_reference)


def _guidance_reference(cond, uncond, scale):
    s = float(scale)
    if cond.dtype == torch.float64:
        return uncond + s * (cond - uncond)
    return uncond + (cond - uncond).float().mul(s).to(cond.dtype)


def _blend_reference(history, weights):
    if isinstance(history[0], torch.Tensor) and history[0].dtype == torch.float64:
        weights = weights.double() if isinstance(weights, torch.Tensor) else weights
    return ops.forecast_blend_reference(history, weights)


FUZZED = TOKEN_OPS + ["attention", "forecast_blend", "classifier_free_guidance"]


def test_every_public_op_is_fuzzed():
    public = {n for n in ops.__all__ if not n.endswith("_reference") and callable(getattr(ops, n))}
    assert public - {"auto_backend", "available_backends", "backend_status", "current_backend", "use_backend"} == set(FUZZED)
