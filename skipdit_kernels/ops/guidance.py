"""classifier_free_guidance: uncond + scale * (cond - uncond), the one place guidance is computed.

The product is taken in fp32 (fp64 for fp64 inputs) whatever the inputs' dtype and then rounded once, which is what
``half_tensor * python_float`` does in PyTorch (its scalar path computes in fp32): so a scale held
in a 0-dim fp32 tensor (a captured graph reads it from device memory) gives exactly what the
official ``forward_with_cfg`` gives with a python float, instead of a scale rounded to the inputs'
dtype first (3.3 would become 3.296875 in bf16).
"""

from __future__ import annotations

import math

import torch

from .spec import OpSpec


def _check(cond: torch.Tensor, uncond: torch.Tensor, scale) -> None:
    op = "classifier_free_guidance"
    if not isinstance(cond, torch.Tensor) or not isinstance(uncond, torch.Tensor):
        raise TypeError(f"{op}: cond and uncond must be tensors, got {type(cond).__name__}, {type(uncond).__name__}")
    if cond.shape != uncond.shape or cond.dtype != uncond.dtype or cond.device != uncond.device:
        raise ValueError(
            f"{op}: cond is {tuple(cond.shape)} {cond.dtype} on {cond.device}, "
            f"uncond is {tuple(uncond.shape)} {uncond.dtype} on {uncond.device}"
        )
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1 or scale.dtype != torch.float32:
            raise ValueError(f"{op}: a tensor scale must be one fp32 value, got {tuple(scale.shape)} {scale.dtype}")
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{op}: scale must be a number or an fp32 tensor, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be finite, got {scale}")


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale) -> torch.Tensor:
    """Guided output from the conditional and unconditional outputs (same shape, dtype, device);
    ``scale``: a python number or a one-element fp32 tensor (on the inputs' device). Result in the
    inputs' dtype."""
    _check(cond, uncond, scale)
    diff = cond - uncond
    return uncond + (diff.to(torch.promote_types(diff.dtype, torch.float32)) * scale).to(diff.dtype)


def _reference(cond, uncond, scale):
    """The definition: the difference scaled in fp32 (fp64 for fp64 inputs), rounded once."""
    acc = torch.promote_types(cond.dtype, torch.float32)
    return uncond + ((cond - uncond).to(acc) * float(scale)).to(cond.dtype)


SPEC = OpSpec(
    "classifier_free_guidance",
    classifier_free_guidance,
    _reference,
    lambda d, B, T, D, out, mean: [d.act(B, T, D, mean=mean), d.act(B, T, D), 3.3],
)
