"""LayerNorm folded into the Linear that follows it (the skip fusion's weights).

    Linear(LayerNorm(z)) = rstd * (z @ W'^T - mean * rowsum(W')) + (W @ beta + b),   W' = W * gamma

W' is rounded once to the weight dtype and ``rowsum`` is taken from that rounded W' (the one the
GEMM reads), so the two terms of ``acc - mean * rowsum`` cancel consistently.

The folded weights are recomputed on every call, never cached: a cache cannot see writes through
``.data`` (they bypass version counters), and detecting them means reading the weights, which is
what the folding costs. Recomputing keeps every way of updating weights right (``.data.copy_``,
``load_state_dict``, optimiser steps, swapped parameters) and keeps the folding inside captured
CUDA graphs and compiled graphs, where it reads the live parameters. Measured on CPU (AMD EPYC,
AVX-512 with bf16 units, 1 thread, load average ~1.7 on 2 cores), batch 4 x 256 tokens:
hidden 768 / 1152: folding 0.18 / 0.78 ms against 22 / 50 ms for the fp32 skip_fuse op (< 2 %);
0.56 / 1.6 ms against 5.5 / 12 ms for the bf16 op (10-14 % of that op, about 1 % of a cached step).

The arithmetic is fp32 (the weights' own rounding): for fp32 weights ``W * gamma`` rounded once in
fp32 equals the float64 product rounded to fp32 (the product of two fp32 numbers is exact in
float64); for bf16/fp16 weights the fp32 product is rounded again to the weight dtype, which
differs from one rounding by one unit in the last place in roughly 1 entry in 2**16 (bf16) or 2**13
(fp16). The row sums and W @ beta accumulate in fp32 (pairwise / blocked), as the kernels' GEMMs do.
"""

from __future__ import annotations

import dataclasses

import torch

from .adaln_modulate import adaln_modulate_reference


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


def fold_skip_weights(norm_weight, norm_bias, weight, bias) -> FoldedSkipWeights:
    """W * gamma (weight dtype), its fp32 row sums and W @ beta + b (fp32), from the current values
    of the parameters. Differentiable when the inputs require grad; traceable by torch.compile."""
    acc = torch.promote_types(weight.dtype, torch.float32)
    folded = (weight * norm_weight.to(acc)).to(weight.dtype).contiguous()
    rowsum = folded.sum(dim=1, dtype=acc).float()
    folded_bias = torch.addmv(bias.to(acc), weight.to(acc), norm_bias.to(acc)).float()
    return FoldedSkipWeights(folded, rowsum, folded_bias)


def skip_fuse_folded_torch(x, skip, weight, rowsum, bias, eps: float):
    """What the folded skip-fusion kernels compute (``skipdit::skip_fuse_folded``, the Triton op), in
    torch: ``weight, rowsum, bias`` as ``fold_skip_weights`` returns them. The one model of the
    kernels: the Triton op's backward is its vector-Jacobian product, the fakes take its shapes, the
    tests hold the kernels to it.

        h = rstd * (z' @ weight.T - mean(z') * rowsum) + bias,   z' = [x | skip] - p

    Why the shift (the pivot's rationale, for every kernel): ``acc - mean * rowsum`` cancels
    |mean| / std digits of acc, and TF32 rounds a GEMM's inputs to 11 bits: rows of mean 300 and
    std 1 would keep almost none. So an fp32 GEMM (fp32 folded weights, whatever the activations'
    dtype: bf16 activations on CPUs without bf16 units run fp32 GEMMs) reads z - p, p the row's mean
    in fp32 (it need not be exact), and the epilogue subtracts mean(z - p) * rowsum, where nothing
    large cancels; the statistics come from z - p too (its variance is z's). The mean rather than
    one element of the row (say z[0]): then |mean(z - p)| is of the order of the std, and under TF32
    the GEMM's rounding of z - p and of W' (which rowsum does not see) leaves 2-3x the error of
    LayerNorm-then-GEMM (simulated); with the mean, about 1x. Half-precision GEMMs read z unshifted:
    z - p would be rounded to the half type again, while the products of exact half inputs
    accumulate in fp32 anyway; the accumulator stays fp32 (rounding it to the half type before the
    epilogue would cancel |mean| / std digits again)."""
    z = torch.cat([x, skip], dim=-1).float()
    if weight.dtype == torch.float32:
        z = z - z.mean(dim=-1, keepdim=True)
    var, mean = torch.var_mean(z, dim=-1, unbiased=False, keepdim=True)
    acc = z @ weight.float().T  # products of half inputs are exact in fp32
    return (torch.rsqrt(var + eps) * (acc - mean * rowsum) + bias).to(x.dtype)


def skip_fuse_adaln_folded_torch(x, skip, weight, rowsum, bias, shift, scale, eps: float):
    """``skip_fuse_folded_torch`` followed by the adaLN modulation of its output: (h, modulated)."""
    h = skip_fuse_folded_torch(x, skip, weight, rowsum, bias, eps)
    return h, adaln_modulate_reference(h, shift, scale, eps)
