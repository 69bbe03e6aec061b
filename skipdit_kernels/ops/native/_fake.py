"""Fake (meta) implementations of torch.ops.skipdit.*: shapes and dtypes only, for torch.compile.

Each op's fake runs its spec's ``kernel_reference`` on the fake inputs (floating-point inputs in the
activation's dtype, as the kernels' fp32 GEMM weights may not be) and returns contiguous outputs of
those shapes and dtypes, as the drivers do.
"""

from __future__ import annotations

import torch

from .. import spec


def _fake_of(op: spec.OpSpec):
    def fake(*args):
        dtype = args[0].dtype
        cast = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        outs = tuple(
            torch.empty(o.shape, dtype=o.dtype, device=o.device) for o in spec.as_tuple(op.kernel_reference(*cast))
        )
        return outs if len(outs) > 1 else outs[0]

    return fake


def register_fakes() -> None:
    for op in spec.with_backend("native"):
        torch.library.register_fake(f"skipdit::{op.native}")(_fake_of(op))

    @torch.library.register_fake("skipdit::fold_skip_weights")
    def _(norm_weight, norm_bias, weight, bias):
        rows = weight.new_empty((weight.shape[0],), dtype=torch.float32)
        return weight.new_empty(weight.shape), rows, rows.new_empty(rows.shape)
