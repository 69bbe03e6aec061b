"""Fake (meta) implementations of torch.ops.skipdit.*: shapes and dtypes only, for torch.compile."""
from __future__ import annotations

import torch


def register_fakes() -> None:
    lib = torch.library

    @lib.register_fake("skipdit::adaln_modulate")
    def _(x, shift, scale, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @lib.register_fake("skipdit::gated_residual")
    def _(x, gate, y):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @lib.register_fake("skipdit::linear_gated_residual")
    def _(x, h, weight, bias, gate):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @lib.register_fake("skipdit::linear_gelu")
    def _(h, weight, bias):
        return h.new_empty((*h.shape[:-1], weight.shape[0]))

    @lib.register_fake("skipdit::linear")
    def _(h, weight, bias):
        return h.new_empty((*h.shape[:-1], weight.shape[0]))

    @lib.register_fake("skipdit::skip_fuse")
    def _(x, skip, weight, rowsum, bias, eps):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @lib.register_fake("skipdit::skip_fuse_adaln")
    def _(x, skip, weight, rowsum, bias, shift, scale, eps):
        return x.new_empty(x.shape), x.new_empty(x.shape)

    @lib.register_fake("skipdit::fold_skip_weights")
    def _(norm_weight, norm_bias, weight, bias):
        rows = weight.new_empty((weight.shape[0],), dtype=torch.float32)
        return weight.new_empty(weight.shape), rows, rows.new_empty(rows.shape)
