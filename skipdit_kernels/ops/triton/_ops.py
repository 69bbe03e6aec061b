"""``skipdit_triton::*``: the Triton kernels as ``torch.library.triton_op``s, and the backend entry points.

``triton_op`` lets torch.compile see the kernels (it traces the launches through ``wrap_triton``),
and the body doubles as the fake (meta) implementation: with fake tensors it only allocates the
output. Backward has no kernels: ``register_autograd`` recomputes the op's torch formula and takes
its vector-Jacobian product (``torch.func.vjp``). Under TRITON_INTERPRET=1 a launch with fake
tensors would hand them to the numpy interpreter, so the body skips launches on fake inputs there
(only there: on a GPU the launch must stay in the traced graph).
"""

from __future__ import annotations

import torch
import triton
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

from ..adaln_modulate import adaln_modulate_reference
from ..folding import fold_skip_weights, skip_fuse_adaln_folded_torch, skip_fuse_folded_torch
from ..gated_residual import gated_residual_reference, linear_gated_residual_reference
from ..linear_gelu import linear_gelu_reference
from . import _kernels as K
from . import interpreting, on_device

_INTERPRET = interpreting()
Tensor = torch.Tensor


def _skip_launch(*tensors: Tensor) -> bool:
    return _INTERPRET and any(is_fake(t) for t in tensors)


def _launch(plain, tuned, kind: str, grid, *args, **meta) -> None:
    """Every launch goes through here, on the device of its first tensor (all are on one device)."""
    with on_device(args[0]):
        if _INTERPRET:
            wrap_triton(plain)[grid](*args, **meta, **K.INTERPRET_META[kind])
        else:
            wrap_triton(tuned)[grid](*args, **meta)


def _allow_tf32(dtype: torch.dtype) -> bool:
    return dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32


def _as3d(t: Tensor) -> Tensor:
    """(batch, tokens, features) view of an activation with >= 2 dims (a copy only if unviewable)."""
    if t.dim() == 2:
        return t.unsqueeze(0)
    if t.dim() == 3:
        return t
    return t.reshape(-1, t.shape[-2], t.shape[-1])


# ---- forward launchers ---------------------------------------------------------------------------
def _adaln_into(x: Tensor, shift: Tensor, scale: Tensor, eps: float, out: Tensor) -> None:
    B, T, D = x.shape
    M = B * T
    if M == 0:
        return
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)  # noqa: E731
    _launch(
        K.adaln_kernel,
        K.adaln_tuned,
        "row",
        grid,
        x,
        shift,
        scale,
        out,
        M,
        T,
        D,
        *x.stride(),
        *shift.stride(),
        *scale.stride(),
        eps,
        BLOCK_D=triton.next_power_of_2(D),
    )


def _linear_into(a: Tensor, weight: Tensor, bias, x, gate, out: Tensor, epilogue: int) -> None:
    a3 = _as3d(a)
    B, T, Kd = a3.shape
    M, N = B * T, weight.shape[0]
    if M == 0 or N == 0:
        return
    if epilogue == 2:
        x_strides, g_strides = x.stride(), gate.stride()
    else:
        x, gate, x_strides, g_strides = out, out, (0, 0, 0), (0, 0)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _launch(
        K.linear_kernel,
        K.linear_tuned,
        "gemm",
        grid,
        a3,
        weight,
        bias.contiguous() if bias is not None else weight,
        x,
        gate,
        out,  # the kernel reads bias[n]
        M,
        N,
        Kd,
        T,
        *a3.stride(),
        *weight.stride(),
        *x_strides,
        *g_strides,
        HAS_BIAS=bias is not None,
        EPILOGUE=epilogue,
        ALLOW_TF32=_allow_tf32(a.dtype),
    )


def _skip_fuse_into(x, skip, weight, rowsum, bias, eps, out) -> None:
    B, T, D = x.shape
    M, N = B * T, weight.shape[0]
    if M == 0 or N == 0:
        return
    # The pivot of ops.folding.skip_fuse_folded_torch: each row's mean of [x | skip] in fp32.
    pivot = (x.sum(-1, dtype=torch.float32) + skip.sum(-1, dtype=torch.float32)).div_(2 * D).reshape(M)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _launch(
        K.skip_fuse_kernel,
        K.skip_fuse_tuned,
        "gemm",
        grid,
        x,
        skip,
        weight,
        rowsum,
        bias,
        pivot,
        out,
        M,
        N,
        D,
        T,
        *x.stride(),
        *skip.stride(),
        *weight.stride(),
        eps,
        ALLOW_TF32=_allow_tf32(x.dtype),
        SHIFT_A=x.dtype == torch.float32,
    )


# ---- the ops -------------------------------------------------------------------------------------
@triton_op("skipdit_triton::adaln_modulate", mutates_args=())
def adaln_modulate_op(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if not _skip_launch(x):
        _adaln_into(x, shift, scale, eps, out)
    return out


@triton_op("skipdit_triton::gated_residual", mutates_args=())
def gated_residual_op(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    B, T, D = x.shape
    M = B * T
    if M and D and not _skip_launch(x):
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_D"]))  # noqa: E731
        _launch(
            K.gated_residual_kernel,
            K.gated_residual_tuned,
            "eltwise",
            grid,
            x,
            gate,
            y,
            out,
            M,
            T,
            D,
            *x.stride(),
            *gate.stride(),
            *y.stride(),
        )
    return out


@triton_op("skipdit_triton::linear_gelu", mutates_args=())
def linear_gelu_op(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    out = torch.empty((*h.shape[:-1], weight.shape[0]), dtype=h.dtype, device=h.device)
    if not _skip_launch(h):
        _linear_into(h, weight, bias, None, None, out, epilogue=1)
    return out


@triton_op("skipdit_triton::linear_gated_residual", mutates_args=())
def linear_gated_residual_op(x: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None, gate: Tensor) -> Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if not _skip_launch(x):
        _linear_into(h, weight, bias, x, gate, out, epilogue=2)
    return out


@triton_op("skipdit_triton::skip_fuse_folded", mutates_args=())
def skip_fuse_op(x: Tensor, skip: Tensor, weight: Tensor, rowsum: Tensor, bias: Tensor, eps: float) -> Tensor:
    out = torch.empty((*x.shape[:-1], weight.shape[0]), dtype=x.dtype, device=x.device)
    if not _skip_launch(x):
        _skip_fuse_into(x, skip, weight, rowsum, bias, eps, out)
    return out


@triton_op("skipdit_triton::skip_fuse_adaln_folded", mutates_args=())
def skip_fuse_adaln_op(
    x: Tensor, skip: Tensor, weight: Tensor, rowsum: Tensor, bias: Tensor, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """The folded GEMM writes h; a second, light row kernel reads h back (a full row is needed for
    its LayerNorm, wider than any GEMM tile at hidden 1152) and writes the modulated norm."""
    h = torch.empty((*x.shape[:-1], weight.shape[0]), dtype=x.dtype, device=x.device)
    mod = torch.empty_like(h)
    if not _skip_launch(x):
        _skip_fuse_into(x, skip, weight, rowsum, bias, eps, h)
        _adaln_into(h, shift, scale, eps, mod)
    return h, mod


# ---- autograd: vjp of the op's torch formula -----------------------------------------------------
def _register_vjp(op, formula, n_tensors: int) -> None:
    """Backward of ``op`` = vjp of ``formula`` over its first ``n_tensors`` inputs (the rest are
    non-differentiable scalars; None tensors such as a missing bias get no gradient)."""

    def setup_context(ctx, inputs, output):
        tensors = inputs[:n_tensors]
        ctx.present = tuple(t is not None for t in tensors)
        ctx.extra = inputs[n_tensors:]
        ctx.save_for_backward(*(t for t in tensors if t is not None))

    def backward(ctx, *grads):
        saved = iter(ctx.saved_tensors)
        tensors = [next(saved) if p else None for p in ctx.present]
        idx = [i for i, p in enumerate(ctx.present) if p]

        def f(*diff):
            args = list(tensors)
            for i, v in zip(idx, diff):
                args[i] = v
            return formula(*args, *ctx.extra)

        with torch.enable_grad():
            outs, vjp = torch.func.vjp(f, *(tensors[i] for i in idx))
        if isinstance(outs, tuple):
            cot = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outs, grads))
        else:
            cot = grads[0]
        got = vjp(cot)
        result = [None] * (n_tensors + len(ctx.extra))
        for i, gval in zip(idx, got):
            result[i] = gval
        return tuple(result)

    op.register_autograd(backward, setup_context=setup_context)


_register_vjp(adaln_modulate_op, adaln_modulate_reference, 3)
_register_vjp(gated_residual_op, gated_residual_reference, 3)
_register_vjp(linear_gelu_op, linear_gelu_reference, 3)
_register_vjp(linear_gated_residual_op, linear_gated_residual_reference, 5)
_register_vjp(skip_fuse_op, skip_fuse_folded_torch, 5)
_register_vjp(skip_fuse_adaln_op, skip_fuse_adaln_folded_torch, 7)


# ---- backend entry points (the public ops' signatures) -------------------------------------------
def adaln_modulate(x, shift, scale, eps=1e-6):
    return adaln_modulate_op(x, shift, scale, eps)


def gated_residual(x, gate, y):
    return gated_residual_op(x, gate, y)


def linear_gelu(h, weight, bias):
    return linear_gelu_op(h, weight, bias)


def linear_gated_residual(x, h, weight, bias, gate):
    return linear_gated_residual_op(x, h, weight, bias, gate)


def skip_fuse(x, skip, norm_weight, norm_bias, weight, bias, eps=1e-6):
    f = fold_skip_weights(norm_weight, norm_bias, weight, bias)
    return skip_fuse_op(x, skip, f.weight, f.rowsum, f.bias, eps)


def skip_fuse_adaln(x, skip, norm_weight, norm_bias, weight, bias, shift, scale, eps=1e-6):
    f = fold_skip_weights(norm_weight, norm_bias, weight, bias)
    return skip_fuse_adaln_op(x, skip, f.weight, f.rowsum, f.bias, shift, scale, eps)


def forecast_blend(history, weights):
    from ..forecast_blend import forecast_blend_triton

    return forecast_blend_triton(history, weights)
