"""LayerNorm folded into the Linear that follows it (the skip fusion's weights, prepared once).

    Linear(LayerNorm(z)) = rstd * (z @ W'^T - mean * rowsum(W')) + (W @ beta + b),   W' = W * gamma

W' is computed in float64 and rounded once to the weight dtype; ``rowsum`` is taken from that
rounded W' (the one the GEMM reads), so the two terms of ``acc - mean * rowsum`` cancel
consistently. The folded tensors are cached per parameter set and rebuilt when any parameter is
replaced (``.to()``, a new tensor) or modified in place through autograd-visible ops
(``load_state_dict``, optimiser steps, ``torch.no_grad()`` updates). Writes through ``.data`` bypass
PyTorch's version counters: call ``clear_folded_cache()`` after them.
"""
from __future__ import annotations

import dataclasses

import torch
from torch.utils.weak import WeakIdKeyDictionary


@dataclasses.dataclass(frozen=True)
class FoldedSkipWeights:
    weight: torch.Tensor  # (out, 2*hidden), W * gamma rounded to the weight dtype, contiguous
    rowsum: torch.Tensor  # (out,) fp32, row sums of ``weight`` as stored
    bias: torch.Tensor  # (out,) fp32, W @ beta + b

    @property
    def weight_x(self) -> torch.Tensor:
        return self.weight[:, : self.weight.shape[1] // 2]

    @property
    def weight_skip(self) -> torch.Tensor:
        return self.weight[:, self.weight.shape[1] // 2 :]


def _fingerprint(tensors) -> tuple:
    return tuple((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors)


# Keyed by tensor identity: a plain WeakKeyDictionary would compare tensors with ==, elementwise.
_cache: WeakIdKeyDictionary = WeakIdKeyDictionary()


def fold_skip_weights_uncached(norm_weight, norm_bias, weight, bias) -> FoldedSkipWeights:
    """The folding arithmetic without the cache: differentiable (when the inputs require grad)
    and traceable by torch.compile (no data pointers)."""
    gamma, beta, w = norm_weight.double(), norm_bias.double(), weight.double()
    folded = (w * gamma).to(weight.dtype).contiguous()
    rowsum = folded.double().sum(dim=1).float()
    folded_bias = (w @ beta + bias.double()).float()
    return FoldedSkipWeights(folded, rowsum, folded_bias)


def fold_skip_weights(norm_weight, norm_bias, weight, bias) -> FoldedSkipWeights:
    """Folded weights for ``skip_fuse``; cached on ``weight`` and keyed on all four parameters."""
    params = (norm_weight, norm_bias, weight, bias)
    key = _fingerprint(params)
    hit = _cache.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        result = fold_skip_weights_uncached(*(p.detach() for p in params))
    _cache[weight] = (key, result)
    return result


def folded_weights_for(norm_weight, norm_bias, weight, bias) -> FoldedSkipWeights:
    """The folded weights a kernel should read: the cache in eager inference; a fresh,
    differentiable folding when gradients must reach the parameters, or while torch.compile traces
    (the cache keys on data pointers, which fake tensors do not have)."""
    params = (norm_weight, norm_bias, weight, bias)
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
        return fold_skip_weights_uncached(*params)
    return fold_skip_weights(*params)


def clear_folded_cache() -> None:
    _cache.clear()


def skip_fuse_folded_torch(x, skip, folded: FoldedSkipWeights, eps: float):
    """The folded formula in plain torch (what the kernels compute), for tests and as a fallback.

    acc - mean * rowsum cancels |mean| / std digits of acc; in fp32 the GEMM therefore reads z - p,
    p the row's first element, and the epilogue subtracts mean(z - p) * rowsum (computed from the
    differences: mean(z) - p would carry mean(z)'s rounding, ~|mean| * 2^-24).
    Half-precision inputs are used as they are (their products accumulate in fp32 exactly)."""
    z = torch.cat([x, skip], dim=-1)
    if z.dtype == torch.float32:
        shifted = z - z[..., :1]  # the statistics of z - p: no large mean to round away
        var, center = torch.var_mean(shifted, dim=-1, unbiased=False, keepdim=True)
        acc = shifted @ folded.weight.T
    else:
        var, center = torch.var_mean(z.float(), dim=-1, unbiased=False, keepdim=True)
        acc = (z @ folded.weight.T).float()
    return (torch.rsqrt(var + eps) * (acc - center * folded.rowsum) + folded.bias).to(x.dtype)
