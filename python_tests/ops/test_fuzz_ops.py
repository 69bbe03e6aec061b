"""Property-based tests of every public op in skipdit_kernels.ops, on every backend that runs here.

Each call either returns what the op's reference returns (within its spec's tolerance,
``ops.spec.check_close``: at most twice the reference's own error in that dtype against float64, plus
a small atol) or raises
ValueError / TypeError naming the op; never a crash, a bare AssertionError, an IndexError or a
RuntimeError from inside the library. Shapes are tiny (odd, empty and one-element sizes included),
layouts vary (contiguous, transposed, misaligned, strided), inputs are the specs' samples; every op
has a spec (test_contract.py); .ci/sanitize.sh also runs this file
under AddressSanitizer and UndefinedBehaviorSanitizer.
"""

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skipdit_kernels import ops
from skipdit_kernels.ops import spec

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
SPECS = spec.specs()
DTYPES = list(spec.DTYPES)
LAYOUTS = list(spec.LAYOUTS)
TOKEN_OPS = [s.name for s in spec.with_backend("native")]  # (batch, tokens, hidden) ops with compiled kernels


def _backends():
    names = ["auto", "torch"]
    status = ops.backend_status()
    if status["native"][0]:
        names.append("native")
    return names


BACKENDS = _backends()


def _tensor(shape, dtype, seed, scale=1.0, mean=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tuple(shape), generator=g) * scale + mean).to(dtype)


def _close(op, got, args):
    """got vs the op's reference (ops.spec.check_close: error against float64 at most twice the
    reference's own, plus atol)."""
    err, bound = spec.check_close(SPECS[op], got, args)
    assert err <= bound, f"{op}: error {err:.3e} > bound {bound:.3e}"


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
    args = SPECS[op].sample_args((B, T, D), out=out, dtype=dtype, seed=seed, mean=0.3)
    if op in ("linear", "linear_gelu"):  # any number of leading dimensions
        args[0] = args[0].reshape(B * T, D) if rank == 2 else args[0].reshape((1,) * (rank - 3) + (B, T, D))
    laid = spec.lay(args, layout)
    with torch.no_grad(), ops.use_backend(backend):
        got = getattr(ops, op)(*laid)
    _close(op, got, args)


def _bad_values():
    return st.sampled_from(
        [
            "int64",
            "float64",
            "bool",
            "none",
            "list",
            "int",
            "string",
            "extra_dim",
            "drop_dim",
            "wider",
            "meta",
            "scalar",
        ]
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
    args = SPECS[op].sample_args((B, T, D), out=out, dtype=dtype, seed=seed, mean=0.3)
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
    _close(op, got, args)


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
    laid = spec.lay(args, layout)
    try:
        with torch.no_grad(), ops.use_backend(backend):
            got = ops.attention(*laid)
    except (ValueError, TypeError) as exc:
        assert how is not None, f"valid attention inputs refused: {exc}"
        assert "attention" in str(exc), exc
        return
    if how is None or all(isinstance(a, torch.Tensor) and a.device.type != "meta" for a in args):
        _close("attention", got, args)


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
    assert (
        how is None
        or how in ("float64", "extra_dim", "drop_dim", "wider", "scalar")
        and len(set((h.shape, h.dtype) for h in history)) == 1
    )
    if all(h.device.type != "meta" for h in history):
        _close("forecast_blend", got, [history, weights])


@FUZZ
@given(
    backend=st.sampled_from(BACKENDS),
    dtype=st.sampled_from(DTYPES + [torch.float64]),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    scale=st.one_of(
        st.floats(-10, 10), st.integers(-3, 10), st.sampled_from(["tensor", math.nan, math.inf, None, "x"])
    ),
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
        _close("classifier_free_guidance", got, [cond, uncond, scale])
