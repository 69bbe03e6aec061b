"""Input validation shared by the ops: every failure names the offending shape, dtype or device."""

from __future__ import annotations

import math

import torch


def describe(name: str, t: torch.Tensor) -> str:
    return f"{name}: shape {tuple(t.shape)}, {t.dtype}, {t.device}"


def check_tensor(op: str, name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{op}: {name} must be floating point ({describe(name, t)})")
    return t


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        listing = "; ".join(describe(k, v) for k, v in tensors.items())
        raise ValueError(f"{op}: all tensors must be on one device ({listing})")


def check_same_dtype(op: str, **tensors: torch.Tensor) -> None:
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) > 1:
        listing = "; ".join(describe(k, v) for k, v in tensors.items())
        raise ValueError(f"{op}: all tensors must share one dtype ({listing})")


def check_shape(op: str, name: str, t: torch.Tensor, expected: tuple) -> None:
    """``expected`` holds ints or None (any size)."""
    ok = t.dim() == len(expected) and all(e is None or s == e for s, e in zip(t.shape, expected))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{op}: {name} must have shape {want}, got {tuple(t.shape)}")


def check_tokens(op: str, name: str, x: torch.Tensor) -> tuple[int, int, int]:
    """A (batch, tokens, hidden) activation."""
    if x.dim() != 3:
        raise ValueError(f"{op}: {name} must be (batch, tokens, hidden), got shape {tuple(x.shape)}")
    return tuple(x.shape)  # type: ignore[return-value]


def check_eps(op: str, eps: object) -> float:
    """A LayerNorm epsilon: a finite number >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{op}: eps must be a number, got {type(eps).__name__}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps}")
    return float(eps)
