"""``skipdit_triton::forecast_blend``: the weighted sum of K <= 4 history tensors, one Triton kernel.

Imported only when the kernel first runs (``ops.forecast_blend`` registers a lazy entry point for
the ``triton`` backend), so importing the package never imports Triton. One read of each history
tensor, one write, fp32 accumulation; the weights are read from a device tensor, so a launch inside
a captured graph picks up whatever the host wrote into that tensor before the replay.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

from . import interpreting, on_device

MAX_HISTORY = 4
BLOCK = 1024
_INTERPRET = interpreting()


@triton.jit
def forecast_blend_kernel(out_ptr, h0, h1, h2, h3, w_ptr, n, K: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = tl.load(h0 + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(w_ptr)
    if K > 1:
        acc += tl.load(h1 + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(w_ptr + 1)
    if K > 2:
        acc += tl.load(h2 + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(w_ptr + 2)
    if K > 3:
        acc += tl.load(h3 + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(w_ptr + 3)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def blend_into(history: list[torch.Tensor], weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Launch into ``out`` (contiguous, like history[0]); ``weights``: fp32 device tensor of K."""
    k = len(history)
    flat = [h.contiguous() for h in history]
    flat += [flat[0]] * (MAX_HISTORY - k)
    n = out.numel()
    if n == 0 or (_INTERPRET and any(is_fake(t) for t in (out, *flat))):
        return out
    grid = (triton.cdiv(n, BLOCK),)
    with on_device(out):
        wrap_triton(forecast_blend_kernel)[grid](out, *flat, weights, n, K=k, BLOCK=BLOCK)
    return out


@triton_op("skipdit_triton::forecast_blend", mutates_args=())
def forecast_blend(history: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    out = torch.empty(history[0].shape, dtype=history[0].dtype, device=history[0].device)
    return blend_into(list(history), weights, out)
