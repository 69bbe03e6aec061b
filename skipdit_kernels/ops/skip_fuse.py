"""Skip-DiT's long-skip fusion, optionally followed by the next block's adaLN modulation.

    skip_fuse(x, skip, ...)       = Linear(LayerNorm_fp32(cat([x, skip], -1)))
    skip_fuse_adaln(x, skip, ...) = (h, LayerNorm(h) * (1 + scale[:, None]) + shift[:, None]), h = skip_fuse(...)

The LayerNorm runs over 2*hidden with affine parameters, in fp32, and is cast back to x's dtype
before the Linear (the official FP32_Layernorm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend
from ._checks import check_eps, check_same_device, check_same_dtype, check_shape, check_tensor, check_tokens
from .adaln_modulate import adaln_modulate_reference, check_adaln_args
from .folding import skip_fuse_adaln_folded_torch, skip_fuse_folded_torch
from .spec import OpSpec


def skip_fuse_reference(x, skip, norm_weight, norm_bias, weight, bias, eps: float = 1e-6):
    cat = torch.cat([x, skip], dim=-1)
    normed = F.layer_norm(cat.float(), (cat.shape[-1],), norm_weight.float(), norm_bias.float(), eps)
    return F.linear(normed.to(x.dtype), weight, bias)


def skip_fuse_adaln_reference(x, skip, norm_weight, norm_bias, weight, bias, shift, scale, eps: float = 1e-6):
    h = skip_fuse_reference(x, skip, norm_weight, norm_bias, weight, bias, eps)
    return h, adaln_modulate_reference(h, shift, scale, eps)


def check_skip_fuse_args(op: str, x, skip, norm_weight, norm_bias, weight, bias) -> None:
    activations = {"x": x, "skip": skip, "weight": weight, "bias": bias}
    norm_params = {"norm_weight": norm_weight, "norm_bias": norm_bias}
    for name, t in {**activations, **norm_params}.items():
        check_tensor(op, name, t)
    batch, tokens, hidden = check_tokens(op, "x", x)
    check_shape(op, "skip", skip, (batch, tokens, hidden))
    check_shape(op, "norm_weight", norm_weight, (2 * hidden,))
    check_shape(op, "norm_bias", norm_bias, (2 * hidden,))
    check_shape(op, "weight", weight, (None, 2 * hidden))
    check_shape(op, "bias", bias, (weight.shape[0],))
    check_same_device(op, **activations, **norm_params)
    # The LayerNorm parameters may stay fp32 while activations run in half precision.
    check_same_dtype(op, **activations)


def skip_fuse(x, skip, norm_weight, norm_bias, weight, bias, eps: float = 1e-6) -> torch.Tensor:
    op = "skip_fuse"
    check_skip_fuse_args(op, x, skip, norm_weight, norm_bias, weight, bias)
    eps = check_eps(op, eps)
    kernel = _backend.kernel_for(
        op, x.device, x.dtype, _backend.needs_grad(x, skip, norm_weight, norm_bias, weight, bias)
    )
    if kernel is None:
        return skip_fuse_reference(x, skip, norm_weight, norm_bias, weight, bias, eps)
    return kernel(x, skip, norm_weight, norm_bias, weight, bias, eps)


def skip_fuse_adaln(
    x, skip, norm_weight, norm_bias, weight, bias, shift, scale, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    op = "skip_fuse_adaln"
    check_skip_fuse_args(op, x, skip, norm_weight, norm_bias, weight, bias)
    if weight.shape[0] != x.shape[-1]:
        raise ValueError(f"{op}: weight must project back to hidden {x.shape[-1]}, got shape {tuple(weight.shape)}")
    check_adaln_args(op, x, shift, scale)
    eps = check_eps(op, eps)
    kernel = _backend.kernel_for(
        op, x.device, x.dtype, _backend.needs_grad(x, skip, norm_weight, norm_bias, weight, bias, shift, scale)
    )
    if kernel is None:
        return skip_fuse_adaln_reference(x, skip, norm_weight, norm_bias, weight, bias, shift, scale, eps)
    return kernel(x, skip, norm_weight, norm_bias, weight, bias, shift, scale, eps)


def _float64(x, skip, norm_weight, norm_bias, weight, bias, eps=1e-6):
    """The contract in float64 (the reference's LayerNorm is fp32 by design)."""
    z = torch.cat([x, skip], dim=-1).double()
    normed = F.layer_norm(z, (z.shape[-1],), norm_weight.double(), norm_bias.double(), eps)
    return F.linear(normed, weight.double(), bias.double())


def _float64_adaln(x, skip, norm_weight, norm_bias, weight, bias, shift, scale, eps=1e-6):
    h = _float64(x, skip, norm_weight, norm_bias, weight, bias, eps)
    return h, adaln_modulate_reference(h, shift.double(), scale.double(), eps)


def _sample(d, B, T, D, out, mean):
    """x, skip (B, T, D) of one mean, LayerNorm(2D) parameters (fp32), Linear(2D -> out), eps."""
    return [
        d.act(B, T, D, mean=mean),
        d.act(B, T, D, scale=0.5, mean=mean),
        *d.norm(2 * D),
        d.weight(out, 2 * D),
        d.bias(out),
        1e-6,
    ]


def _sample_adaln(d, B, T, D, out, mean):
    return [*_sample(d, B, T, D, D, mean)[:-1], d.vec(B, D), d.vec(B, D), 1e-6]


_KERNELS = ("torch", "triton", "native")
SPEC = OpSpec(
    "skip_fuse",
    skip_fuse,
    skip_fuse_reference,
    _sample,
    backends=_KERNELS,
    native="skip_fuse_folded",
    gemm=(0, 4, 5),
    folds=True,
    kernel_reference=skip_fuse_folded_torch,
    exact=_float64,
)
ADALN_SPEC = OpSpec(
    "skip_fuse_adaln",
    skip_fuse_adaln,
    skip_fuse_adaln_reference,
    _sample_adaln,
    backends=_KERNELS,
    native="skip_fuse_adaln_folded",
    gemm=(0, 4, 5),
    folds=True,
    kernel_reference=skip_fuse_adaln_folded_torch,
    exact=_float64_adaln,
)
