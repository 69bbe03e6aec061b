"""adaLN modulation: non-affine LayerNorm, then a per-sample shift and scale.

adaln_modulate(x, shift, scale) = LayerNorm(x) * (1 + scale[:, None]) + shift[:, None]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend
from ._checks import check_eps, check_same_device, check_same_dtype, check_shape, check_tensor, check_tokens
from .spec import OpSpec

OP = "adaln_modulate"


def adaln_modulate_reference(x, shift, scale, eps: float = 1e-6):
    normed = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def check_adaln_args(op: str, x, shift, scale) -> None:
    for name, t in (("x", x), ("shift", shift), ("scale", scale)):
        check_tensor(op, name, t)
    batch, _, hidden = check_tokens(op, "x", x)
    check_shape(op, "shift", shift, (batch, hidden))
    check_shape(op, "scale", scale, (batch, hidden))
    check_same_device(op, x=x, shift=shift, scale=scale)
    check_same_dtype(op, x=x, shift=shift, scale=scale)


def adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    check_adaln_args(OP, x, shift, scale)
    eps = check_eps(OP, eps)
    kernel = _backend.kernel_for(OP, x.device, x.dtype, _backend.needs_grad(x, shift, scale))
    if kernel is None:
        return adaln_modulate_reference(x, shift, scale, eps)
    return kernel(x, shift, scale, eps)


def sample_adaln(d, B, T, D, out, mean):
    return [d.act(B, T, D, mean=mean), d.vec(B, D), d.vec(B, D), 1e-6]


SPEC = OpSpec(OP, adaln_modulate, adaln_modulate_reference, sample_adaln, backends=("torch", "triton", "native"))
