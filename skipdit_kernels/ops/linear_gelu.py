"""The MLP's first projection with its activation: tanh-GELU(h @ weight.T + bias)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend
from ._checks import check_same_device, check_same_dtype, check_shape, check_tensor

OP = "linear_gelu"


def linear_gelu_reference(h, weight, bias):
    return F.gelu(F.linear(h, weight, bias), approximate="tanh")


def linear_gelu(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    tensors = {"h": h, "weight": weight}
    if bias is not None:
        tensors["bias"] = bias
    for name, t in tensors.items():
        check_tensor(OP, name, t)
    if h.dim() < 2:
        raise ValueError(f"{OP}: h must have at least 2 dimensions, got shape {tuple(h.shape)}")
    check_shape(OP, "weight", weight, (None, h.shape[-1]))
    if bias is not None:
        check_shape(OP, "bias", bias, (weight.shape[0],))
    check_same_device(OP, **tensors)
    check_same_dtype(OP, **tensors)
    kernel = _backend.kernel_for(OP, h.device, h.dtype, _backend.needs_grad(h, weight, bias))
    if kernel is None:
        return linear_gelu_reference(h, weight, bias)
    return kernel(h, weight, bias)
