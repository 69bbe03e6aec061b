"""A plain projection, h @ weight.T + bias, through the op layer.

The model's other linears (attention qkv, adaLN modulation, final layer) use it so that a backend can
pick the GEMM: the native one runs half-precision activations as fp32 GEMMs on CPUs without bf16
units (vendor bf16 GEMMs crawl there), and native bf16 where the CPU has the units.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend
from ._checks import check_same_device, check_same_dtype, check_shape, check_tensor
from .spec import OpSpec

OP = "linear"


def linear_reference(h, weight, bias):
    return F.linear(h, weight, bias)


def check_linear_args(op: str, h, weight, bias) -> dict:
    """h (..., in), weight (out, in), bias (out,) or None: same device and dtype. Returns the tensors by name."""
    tensors = {"h": h, "weight": weight}
    if bias is not None:
        tensors["bias"] = bias
    for name, t in tensors.items():
        check_tensor(op, name, t)
    if h.dim() < 2:
        raise ValueError(f"{op}: h must have at least 2 dimensions, got shape {tuple(h.shape)}")
    check_shape(op, "weight", weight, (None, h.shape[-1]))
    if bias is not None:
        check_shape(op, "bias", bias, (weight.shape[0],))
    check_same_device(op, **tensors)
    check_same_dtype(op, **tensors)
    return tensors


def linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(..., in) -> (..., out), ``h``'s dtype; the reference is ``F.linear``. Raises ValueError /
    TypeError naming the argument on a bad shape, dtype or device."""
    check_linear_args(OP, h, weight, bias)
    kernel = _backend.kernel_for(OP, h.device, h.dtype, _backend.needs_grad(h, weight, bias))
    if kernel is None:
        return linear_reference(h, weight, bias)
    return kernel(h, weight, bias)


def sample_linear(d, B, T, D, out, mean):
    """h (B, T, D), weight (out, D), bias (out,)."""
    return [d.act(B, T, D, mean=mean), d.weight(out, D), d.bias(out)]


SPEC = OpSpec(OP, linear, linear_reference, sample_linear, backends=("torch", "native"), gemm=(0, 1, 2), width=3)
