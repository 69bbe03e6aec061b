"""The deep state of a cached trajectory, at the boundary of the one traversal (``run_units``, in
``skipdit_kernels.models.stack``), shared by the executor's step and by a step-by-step request.

On a full step every unit runs and the hidden state entering unit ``num_units - shallow`` is stored
in the history slot the schedule names; on a cached step only the outer ``shallow`` units on each
side run and that state comes back from the history (reused, or blended by the forecast weights).
Stacks without long skips store the change the middle units make (the *residual*) instead, since
there the shallow units' output would otherwise be discarded on cached steps.

A full step's store is *staged*: the history changes only when the step's owner calls ``commit()``
after the step completed, so a step that raises leaves the history as the last completed step left
it. Where tensors live is the caller's ``Workspace``: the executor's persistent buffers (outputs
copied in place, so a captured graph reads and writes fixed memory), or plain references for eager use.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .. import ops
from ..models.stack import Workspace as Holder
from ..models.stack import run_units

__all__ = ["DeepCache", "EagerWorkspace", "Workspace", "run_units"]


class Workspace(Holder, Protocol):
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
    the owner from the schedule before each step (on the device, so a graph can read them). A full
    step's state (one tensor per stream it carries) waits until ``commit()``; ``discard()`` drops it."""

    def __init__(self, slots: int, residual: bool, device: torch.device):
        self.slots = slots
        self.residual = residual
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.weights = torch.zeros(slots, dtype=torch.float32, device=device)
        self._pending: list[tuple[Workspace, torch.Tensor]] = []

    def history(self, ws: Workspace, like: torch.Tensor) -> torch.Tensor:
        return ws.zeros("history", (self.slots, *like.shape), like.dtype, like.device)

    def store(self, ws: Workspace, h: torch.Tensor, shallow_out: torch.Tensor) -> None:
        """Stage the state a full step reached the boundary with (written by ``commit``)."""
        deep = h - shallow_out if self.residual else h
        self._pending.append((ws, ws.hold(f"deep{len(self._pending)}", deep)))

    def commit(self) -> None:
        """Write the staged state into its history slot (after the step completed); a no-op after
        a cached step."""
        pending, self._pending = self._pending, []
        for ws, deep in pending:
            self.history(ws, deep).index_copy_(0, self.slot, deep.unsqueeze(0))

    def discard(self) -> None:
        self._pending = []

    def restore(self, ws: Workspace, shallow_out: torch.Tensor) -> torch.Tensor:
        history = self.history(ws, shallow_out)
        deep = history[0] if self.slots == 1 else ops.forecast_blend(list(history.unbind(0)), self.weights)
        return shallow_out + deep if self.residual else deep
