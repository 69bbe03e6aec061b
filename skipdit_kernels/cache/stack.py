"""A skip stack, and one forward pass through it with or without Skip-Cache.

Any model made of an embedding, blocks 0..depth-1 (the later half optionally fused with the output
of a partner block through a long skip) and a final layer can implement ``SkipStack``; Skip-Cache
then works on it with no model-specific code.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .schedule import SkipCacheState, input_signature


class SkipStack(Protocol):
    depth: int
    long_skips: bool  # block i >= depth // 2 fuses the output of block depth - 1 - i

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate the inputs; return (tokens, conditioning)."""

    def run_block(self, i: int, h: torch.Tensor, c: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """Block i; ``skip`` is its partner's output when block i fuses a long skip."""

    def finish(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Final layer and unpatchify."""


def first_timestep(t: torch.Tensor) -> float:
    """The schedule's timestep: the first sample's (one host sync, as in the official code)."""
    return float(t.reshape(-1)[0])


def forward_stack(
    stack: SkipStack, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cache: SkipCacheState | None = None
) -> torch.Tensor:
    h, c = stack.embed(x, t, y)
    depth, half = stack.depth, stack.depth // 2
    full, shallow, t_step = True, depth, 0.0
    if cache is not None:
        t_step = first_timestep(t)
        full = cache.begin_step(t_step, input_signature(x))
        shallow = cache.config.shallow_blocks

    blocks = range(depth) if full else [*range(shallow), *range(depth - shallow, depth)]
    skips: list[torch.Tensor] = []
    shallow_output = h
    for i in blocks:
        if cache is not None and i == depth - shallow:
            if full:
                cache.store(h, shallow_output)
            else:
                h = cache.restore(shallow_output)
        skip = skips.pop() if stack.long_skips and i >= half else None
        h = stack.run_block(i, h, c, skip)
        if i < half:
            skips.append(h)
        if i == shallow - 1:
            shallow_output = h

    if cache is not None:
        cache.end_step(t_step)
    return stack.finish(h, c)
