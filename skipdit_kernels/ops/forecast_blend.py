"""forecast_blend: the weighted sum of K history tensors (Forecast Skip-Cache's extrapolation).

    forecast_blend(history, weights) = sum_k weights[k] * history[k]

``history``: K >= 1 tensors of one shape, dtype and device; ``weights``: K host floats (the module
path: no device sync) or a 1-D float tensor of K entries on the history's device (the graph path:
the host fills it before each replay). Accumulation is in fp32; the result has the history's dtype (fp64 history accumulates in fp64).

Backends: the torch path (one ``torch.lerp`` pass for K = 2, since Lagrange weights sum to one;
scaled adds otherwise) and a Triton kernel (one read of each input, one write; weights read from a
device tensor so the launch is graph-capturable). Triton is imported only when its kernel runs.
The op is memory-bound: K reads and one write of a deep state, negligible beside the shallow blocks
of a cached step (see bench/quality/forecast_cost.py).
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import _backend
from .spec import OpSpec

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
    """The definition: accumulation of w_k * h_k in order, in fp32 (fp64 for fp64 history), cast to
    the history's dtype."""
    acc_dtype = torch.promote_types(history[0].dtype, torch.float32)
    if isinstance(weights, torch.Tensor):
        weights = weights.to(acc_dtype)
        acc = history[0].to(acc_dtype) * weights[0]
        for h, w in zip(history[1:], weights[1:]):
            acc = acc + h.to(acc_dtype) * w
    else:
        acc = history[0].to(acc_dtype) * float(weights[0])
        for h, w in zip(history[1:], weights[1:]):
            acc = acc + h.to(acc_dtype) * float(w)
    return acc.to(history[0].dtype)


def _forecast_blend_torch(history: Sequence[torch.Tensor], weights) -> torch.Tensor:
    """Fewest passes in eager torch. Host weights only (a tensor goes to the reference)."""
    if len(history) == 1:
        w = float(weights[0])
        return history[0] if w == 1.0 else history[0] * w
    if len(history) == 2 and abs(float(weights[0]) + float(weights[1]) - 1.0) < 1e-12:
        # w0*h0 + w1*h1 with w0 + w1 = 1 is h0 + w1*(h1 - h0): one fused pass (fp32 opmath).
        return torch.lerp(history[0], history[1], float(weights[1]))
    if history[0].dtype not in (torch.float32, torch.float64):
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


# -- Triton (kernel in ops/triton/forecast_blend.py, imported on first use) -------------------


def _weights_tensor(weights, device: torch.device) -> torch.Tensor:
    if isinstance(weights, torch.Tensor):
        return weights.to(torch.float32).contiguous()
    return torch.tensor([float(w) for w in weights], dtype=torch.float32, device=device)


def forecast_blend_triton(history: Sequence[torch.Tensor], weights, out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel (``out`` may be a persistent buffer, for graph capture)."""
    _check(history, weights)
    from .triton import forecast_blend as kernels

    first = history[0]
    w = _weights_tensor(weights, first.device)
    if out is None:
        return kernels.forecast_blend(list(history), w)
    if out.shape != first.shape or out.dtype != first.dtype or out.device != first.device or not out.is_contiguous():
        raise ValueError("forecast_blend_triton: out must be a contiguous tensor like history[0]")
    return kernels.blend_into(list(history), w, out)


SPEC = OpSpec(
    "forecast_blend",
    forecast_blend,
    forecast_blend_reference,
    lambda d, B, T, D, out, mean: [[d.act(B, T, D, mean=mean) for _ in range(3)], d.fp32(3)],
    backends=("torch", "triton"),
)
