"""Gated residuals of adaLN-Zero blocks.

    gated_residual(x, gate, y)                       = x + gate[:, None] * y
    linear_gated_residual(x, h, weight, bias, gate)  = x + gate[:, None] * (h @ weight.T + bias)

The second is the attention out-projection and the MLP's fc2 with the residual as the GEMM's epilogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend
from ._checks import check_same_device, check_same_dtype, check_shape, check_tensor, check_tokens
from .spec import OpSpec


def gated_residual_reference(x, gate, y):
    return x + gate.unsqueeze(1) * y


def linear_gated_residual_reference(x, h, weight, bias, gate):
    return x + gate.unsqueeze(1) * F.linear(h, weight, bias)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    op = "gated_residual"
    for name, t in (("x", x), ("gate", gate), ("y", y)):
        check_tensor(op, name, t)
    batch, tokens, hidden = check_tokens(op, "x", x)
    check_shape(op, "gate", gate, (batch, hidden))
    check_shape(op, "y", y, (batch, tokens, hidden))
    check_same_device(op, x=x, gate=gate, y=y)
    check_same_dtype(op, x=x, gate=gate, y=y)
    kernel = _backend.kernel_for(op, x.device, x.dtype, _backend.needs_grad(x, gate, y))
    if kernel is None:
        return gated_residual_reference(x, gate, y)
    return kernel(x, gate, y)


def linear_gated_residual(
    x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gate: torch.Tensor
) -> torch.Tensor:
    op = "linear_gated_residual"
    tensors = {"x": x, "h": h, "weight": weight, "gate": gate}
    if bias is not None:
        tensors["bias"] = bias
    for name, t in tensors.items():
        check_tensor(op, name, t)
    batch, tokens, hidden = check_tokens(op, "x", x)
    check_tokens(op, "h", h)
    check_shape(op, "h", h, (batch, tokens, None))
    check_shape(op, "weight", weight, (hidden, h.shape[-1]))
    if bias is not None:
        check_shape(op, "bias", bias, (hidden,))
    check_shape(op, "gate", gate, (batch, hidden))
    check_same_device(op, **tensors)
    check_same_dtype(op, **tensors)
    kernel = _backend.kernel_for(op, x.device, x.dtype, _backend.needs_grad(x, h, weight, bias, gate))
    if kernel is None:
        return linear_gated_residual_reference(x, h, weight, bias, gate)
    return kernel(x, h, weight, bias, gate)


SPEC = OpSpec(
    "gated_residual",
    gated_residual,
    gated_residual_reference,
    lambda d, B, T, D, out, mean: [d.act(B, T, D, mean=mean), d.vec(B, D), d.act(B, T, D)],
    backends=("torch", "triton", "native"),
)
LINEAR_SPEC = OpSpec(
    "linear_gated_residual",
    linear_gated_residual,
    linear_gated_residual_reference,
    lambda d, B, T, D, out, mean: [
        d.act(B, T, D, mean=mean),
        d.act(B, T, out, scale=0.5),
        d.weight(D, out),
        d.bias(D),
        d.vec(B, D),
    ],
    backends=("torch", "triton", "native"),
    gemm=(1, 2, 3),
    width=4,
)
