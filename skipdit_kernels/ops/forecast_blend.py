"""forecast_blend: the weighted sum of K history tensors (Forecast Skip-Cache's extrapolation).

    forecast_blend(history, weights) = sum_k weights[k] * history[k]

``history``: K >= 1 tensors of one shape, dtype and device; ``weights``: K host floats (the module
path: no device sync) or a 1-D float tensor of K entries on the history's device (the graph path:
the host fills it before each replay). Accumulation is in fp32; the result has the history's dtype.

Backends: the torch path (one ``torch.lerp`` pass for K = 2, since Lagrange weights sum to one;
scaled adds otherwise) and a Triton kernel (one read of each input, one write; weights read from a
device tensor so the launch is graph-capturable). Triton is imported only when its kernel runs.
The op is memory-bound: K reads and one write of a deep state, negligible beside the shallow blocks
of a cached step (see bench/forecast_cost.py).
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _backend

MAX_HISTORY = 4  # forecast order <= 3


def _check(history: Sequence[torch.Tensor], weights) -> int:
    op = "forecast_blend"
    if isinstance(history, torch.Tensor) or not isinstance(history, (list, tuple)):
        raise ValueError(f"{op}: history must be a list or tuple of tensors, got {type(history).__name__}")
    k = len(history)
    if not 1 <= k <= MAX_HISTORY:
        raise ValueError(f"{op}: history must hold 1..{MAX_HISTORY} tensors, got {k}")
    first = history[0]
    for i, h in enumerate(history):
        if not isinstance(h, torch.Tensor):
            raise ValueError(f"{op}: history[{i}] must be a tensor, got {type(h).__name__}")
        if h.shape != first.shape or h.dtype != first.dtype or h.device != first.device:
            raise ValueError(
                f"{op}: history[{i}] is {tuple(h.shape)} {h.dtype} on {h.device}, "
                f"history[0] is {tuple(first.shape)} {first.dtype} on {first.device}"
            )
        if not h.is_floating_point():
            raise ValueError(f"{op}: history must be floating point, got {h.dtype}")
    if isinstance(weights, torch.Tensor):
        if weights.dim() != 1 or weights.numel() != k:
            raise ValueError(f"{op}: weights must be a 1-D tensor of {k} entries, got {tuple(weights.shape)}")
        if weights.device != first.device:
            raise ValueError(f"{op}: weights are on {weights.device}, history on {first.device}")
    elif len(weights) != k:
        raise ValueError(f"{op}: {k} history tensors but {len(weights)} weights")
    return k


def forecast_blend_reference(history: Sequence[torch.Tensor], weights) -> torch.Tensor:
    """The definition: fp32 accumulation of w_k * h_k in order, cast to the history's dtype."""
    if isinstance(weights, torch.Tensor):
        weights = weights.float()
        acc = history[0].float() * weights[0]
        for h, w in zip(history[1:], weights[1:]):
            acc = acc + h.float() * w
    else:
        acc = history[0].float() * float(weights[0])
        for h, w in zip(history[1:], weights[1:]):
            acc = acc + h.float() * float(w)
    return acc.to(history[0].dtype)


def _forecast_blend_torch(history: Sequence[torch.Tensor], weights) -> torch.Tensor:
    """Fewest passes in eager torch. Host weights only (a tensor goes to the reference)."""
    if len(history) == 1:
        w = float(weights[0])
        return history[0] if w == 1.0 else history[0] * w
    if len(history) == 2 and abs(float(weights[0]) + float(weights[1]) - 1.0) < 1e-12:
        # w0*h0 + w1*h1 with w0 + w1 = 1 is h0 + w1*(h1 - h0): one fused pass (fp32 opmath).
        return torch.lerp(history[0], history[1], float(weights[1]))
    if history[0].dtype != torch.float32:
        return forecast_blend_reference(history, weights)
    out = torch.mul(history[0], float(weights[0]))
    for h, w in zip(history[1:], weights[1:]):
        out.add_(h, alpha=float(w))
    return out


def forecast_blend(history: Sequence[torch.Tensor], weights) -> torch.Tensor:
    """sum_k weights[k] * history[k]; see the module docstring."""
    _check(history, weights)
    kernel = _backend.kernel_for("forecast_blend", history[0].device)
    if kernel is not None:
        return kernel(history, weights)
    if isinstance(weights, torch.Tensor):
        return forecast_blend_reference(history, weights)
    return _forecast_blend_torch(history, weights)


# -- Triton ------------------------------------------------------------------------------------

_TRITON_KERNEL = None


def _triton_kernel():
    global _TRITON_KERNEL
    if _TRITON_KERNEL is None:
        import triton
        import triton.language as tl

        @triton.jit
        def _forecast_blend_kernel(out_ptr, h0, h1, h2, h3, w_ptr, n, K: tl.constexpr, BLOCK: tl.constexpr):
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

        _TRITON_KERNEL = _forecast_blend_kernel
    return _TRITON_KERNEL


def forecast_blend_triton(history: Sequence[torch.Tensor], weights, out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel (``out`` may be a persistent buffer, for graph capture)."""
    k = _check(history, weights)
    first = history[0]
    if not isinstance(weights, torch.Tensor):
        weights = torch.tensor([float(w) for w in weights], dtype=torch.float32, device=first.device)
    weights = weights.to(torch.float32).contiguous()
    flat = [h.contiguous() for h in history]
    flat += [flat[0]] * (MAX_HISTORY - k)
    if out is None:
        out = torch.empty_like(flat[0])
    elif out.shape != first.shape or out.dtype != first.dtype or out.device != first.device or not out.is_contiguous():
        raise ValueError("forecast_blend_triton: out must be a contiguous tensor like history[0]")
    n = out.numel()
    if n == 0:
        return out
    block = 1024
    grid = ((n + block - 1) // block,)
    _triton_kernel()[grid](out, *flat, weights, n, K=k, BLOCK=block)
    return out


@_backend.register("forecast_blend", "triton")
def _forecast_blend_triton_backend(history, weights):
    return forecast_blend_triton(history, weights)
