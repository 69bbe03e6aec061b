"""The one cached forward through a skip stack's units, shared by the executor's step and by a
step-by-step request.

On a full step every unit runs and the hidden state entering unit ``num_units - shallow`` is stored
in the history slot the schedule names; on a cached step only the outer ``shallow`` units on each
side run and that state comes back from the history (reused, or blended by the forecast weights).
Stacks without long skips store the change the middle units make (the *residual*) instead, since
there the shallow units' output would otherwise be discarded on cached steps.

Where tensors live is the caller's ``Workspace``: the executor's persistent buffers (outputs copied
in place, so a captured graph reads and writes fixed memory), or plain references for eager use.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .. import ops
from .protocol import SkipStack, units_to_run


class Workspace(Protocol):
    def hold(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """``value`` as it will be read later in the step (a persistent copy, or itself)."""

    def zeros(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A tensor that persists across the steps of one trajectory, zero when first made."""


class EagerWorkspace:
    """References instead of copies; the deep history persists for the workspace's lifetime."""

    def __init__(self):
        self._persistent: dict[tuple, torch.Tensor] = {}

    def hold(self, name: str, value: torch.Tensor) -> torch.Tensor:
        return value

    def zeros(self, name, shape, dtype, device) -> torch.Tensor:
        key = (name, tuple(shape), dtype, torch.device(device))
        buf = self._persistent.get(key)
        if buf is None:
            buf = self._persistent[key] = torch.zeros(shape, dtype=dtype, device=device)
        return buf


class DeepCache:
    """The deep state of one trajectory: ``slots`` history tensors, the slot a full step writes
    (``slot``, a long tensor) and the blend weights of a cached step (``weights``), both filled by
    the owner from the schedule before each step (on the device, so a graph can read them)."""

    def __init__(self, slots: int, residual: bool, device: torch.device):
        self.slots = slots
        self.residual = residual
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.weights = torch.zeros(slots, dtype=torch.float32, device=device)

    def history(self, ws: Workspace, like: torch.Tensor) -> torch.Tensor:
        return ws.zeros("history", (self.slots, *like.shape), like.dtype, like.device)

    def store(self, ws: Workspace, h: torch.Tensor, shallow_out: torch.Tensor) -> None:
        deep = h - shallow_out if self.residual else h
        self.history(ws, h).index_copy_(0, self.slot, deep.unsqueeze(0))

    def restore(self, ws: Workspace, shallow_out: torch.Tensor) -> torch.Tensor:
        history = self.history(ws, shallow_out)
        deep = history[0] if self.slots == 1 else ops.forecast_blend(list(history.unbind(0)), self.weights)
        return shallow_out + deep if self.residual else deep


def run_units(
    stack: SkipStack,
    partners: dict[int, int],
    h: torch.Tensor,
    ctx,
    ws: Workspace,
    shallow: int | None = None,
    full: bool = True,
    deep: DeepCache | None = None,
) -> torch.Tensor:
    """Units 0..num_units-1 (all, or the outer ``shallow`` on each side when ``full`` is False) from
    the embedded ``h``; returns the hidden state entering the final layer. ``partners``:
    ``protocol.skip_partners(stack)``; ``deep`` is needed when ``shallow`` is given."""
    num_units = stack.num_units
    pushed = set(partners.values())
    boundary = None if shallow is None else num_units - shallow
    skips: dict[int, torch.Tensor] = {}
    shallow_out = h
    for i in units_to_run(num_units, shallow, full):
        if i == boundary:
            if full:
                deep.store(ws, h, shallow_out)
            else:
                h = deep.restore(ws, shallow_out)
        j = partners.get(i)
        out = stack.run_block(i, h, ctx, None if j is None else skips[j])
        h = ws.hold(f"skip{i}" if i in pushed else "h", out)
        if i in pushed:
            skips[i] = h
        if deep is not None and deep.residual and i == shallow - 1:
            shallow_out = ws.hold("shallow", h)
    return h
