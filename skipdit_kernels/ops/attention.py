"""Multi-head attention over (batch, heads, tokens, head_dim) tensors.

flash-attn's kernel when the package imports and the inputs qualify (CUDA, fp16/bf16), otherwise
torch's scaled_dot_product_attention. q, k and v may be strided views of one qkv projection.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from ._checks import check_same_device, check_same_dtype, check_tensor
from .spec import OpSpec


def _find_flash_attn():
    """flash_attn_func, or None. Resolved once, at import (only when the package is installed):
    a lookup inside ``attention`` would be traced by torch.compile, which cannot trace an import."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn import flash_attn_func
    except Exception:  # a build that does not match this torch
        return None
    return flash_attn_func


_flash_attn_func = _find_flash_attn()


def flash_attn_available() -> bool:
    return _flash_attn_func is not None


def attention_reference(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _flash_qualifies(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    op = "attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, t)
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be (batch, heads, tokens, head_dim), got shape {tuple(t.shape)}")
    if q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"{op}: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    check_same_device(op, q=q, k=k, v=v)
    check_same_dtype(op, q=q, k=k, v=v)
    if _flash_attn_func is not None and _flash_qualifies(q):
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return attention_reference(q, k, v)


SPEC = OpSpec(
    "attention",
    attention,
    attention_reference,
    lambda d, B, T, D, out, mean: [d.act(B, 2, T, D, mean=mean) for _ in range(3)],
)
