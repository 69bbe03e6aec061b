"""The MLP's first projection with its activation: tanh-GELU(h @ weight.T + bias)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend
from .linear import check_linear_args, sample_linear
from .spec import OpSpec

OP = "linear_gelu"


def linear_gelu_reference(h, weight, bias):
    return F.gelu(F.linear(h, weight, bias), approximate="tanh")


def linear_gelu(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    check_linear_args(OP, h, weight, bias)
    kernel = _backend.kernel_for(OP, h.device, h.dtype, _backend.needs_grad(h, weight, bias))
    if kernel is None:
        return linear_gelu_reference(h, weight, bias)
    return kernel(h, weight, bias)


SPEC = OpSpec(
    OP,
    linear_gelu,
    linear_gelu_reference,
    sample_linear,
    backends=("torch", "triton", "native"),
    gemm=(0, 1, 2),
    width=4,
)
