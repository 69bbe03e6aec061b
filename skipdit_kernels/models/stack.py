"""The skip stack: what every model family here is, and the one traversal of its units.

A skip stack is an embedding, units 0..num_units-1 run in order (a unit is a block, or a group of
blocks such as Latte's (spatial, temporal) pair), and a final layer. Unit i may fuse its input with
the output of an earlier unit, its *skip partner* (Skip-DiT: unit i >= L/2 pairs with L-1-i;
Hunyuan-DiT: the middle units have no partner). ``run_units`` is the traversal: the models' own
forward runs it, and so does Skip-Cache (``skipdit_kernels.cache``), which hands it a boundary
(where a cached step takes the deep state instead of running the middle units); the models know
nothing of that boundary's use.

``Condition`` is what a stack is conditioned on for a batch of N samples: per-sample tensors (first
dimension N: class labels, text embeddings, masks) and a *static* part shared by every sample
(tables such as rotary embeddings, host flags), passed to the stack unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import torch


class Condition:
    """The conditioning of N samples. ``tensors``: name -> tensor whose first dimension is N;
    ``static``: name -> a value shared by every sample (a tensor, a tuple of tensors, or a hashable
    host value such as a flag); ``batch``: N (by default the first dimension of the first tensor; give it when there are
    no per-sample tensors). Entries are checked by the stack (``check_inputs``), not here.
    Read-only by convention: the methods return new conditions."""

    __slots__ = ("tensors", "static", "batch")

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None = None, static: Mapping[str, Any] | None = None,
                 batch: int | None = None):  # fmt: skip
        self.tensors = dict(tensors or {})
        self.static = dict(static or {})
        if batch is None:
            shape = getattr(next(iter(self.tensors.values()), None), "shape", None)
            batch = shape[0] if shape else None
        self.batch = None if batch is None else int(batch)

    # mapping access to the per-sample tensors
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str, default=None):
        return self.tensors.get(name, default)

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def keys(self):
        return self.tensors.keys()

    def items(self):
        return self.tensors.items()

    def __repr__(self) -> str:
        tensors = {k: tuple(v.shape) for k, v in self.tensors.items()}
        static = {k: _static_key(v) for k, v in self.static.items()}
        return f"Condition(batch={self.batch}, tensors={tensors}, static={static})"

    def _map(self, fn) -> "Condition":
        static = {k: _map_static(fn, v) for k, v in self.static.items()}
        return Condition({k: fn(v) for k, v in self.tensors.items()}, static, self.batch)

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor, per-sample and static (``static.<name>[.<index>]``), by name."""
        named = dict(self.tensors)

        def walk(prefix, value):
            if isinstance(value, torch.Tensor):
                named[prefix] = value
            elif isinstance(value, (tuple, list)):
                for k, v in enumerate(value):
                    walk(f"{prefix}.{k}", v)

        for name, value in self.static.items():
            walk(f"static.{name}", value)
        return named

    def to(self, device) -> "Condition":
        """Every tensor (per-sample and static) on ``device``."""
        return self._map(lambda v: v.to(device))

    def zeros_like(self) -> "Condition":
        """Zero tensors of the same shapes, dtypes and devices (persistent buffers); static host values kept."""
        return self._map(torch.zeros_like)

    def copy_(self, other: "Condition") -> "Condition":
        """Copy ``other``'s tensors into this condition's (same signature); returns self."""
        for name, value in self.tensors.items():
            value.copy_(other.tensors[name])
        for name, value in self.static.items():
            _map_static(lambda mine, theirs: mine.copy_(theirs), value, other.static[name])
        return self

    def cat(self, other: "Condition") -> "Condition":
        """The batch of ``self`` then ``other`` (classifier-free guidance's two halves); the static
        parts must agree. ValueError naming the difference."""
        if set(self.tensors) != set(other.tensors) or not _same_static(self.static, other.static):
            raise ValueError(f"cannot join conditions of different kinds: {self} and {other}")
        tensors = {k: torch.cat([v, other.tensors[k]]) for k, v in self.tensors.items()}
        return Condition(tensors, self.static, self.batch + other.batch)

    def signature(self) -> tuple:
        """Hashable: the batch, the per-sample tensors' names, shapes and dtypes, and the static
        part (tensors by shape and dtype, host values by value). Equal signatures fit one set of
        buffers and continue one trajectory."""
        tensors = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(self.tensors.items()))
        static = tuple((k, _static_key(v)) for k, v in sorted(self.static.items()))
        return (self.batch, tensors, static)


def _map_static(fn, value, *others):
    """``fn`` over the tensors of a static value (a tensor, or tuples and lists of them), the
    structure kept; host values pass unchanged."""
    if isinstance(value, torch.Tensor):
        return fn(value, *others)
    if isinstance(value, (tuple, list)):
        return type(value)(_map_static(fn, v, *(o[k] for o in others)) for k, v in enumerate(value))
    return value


def _static_key(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    if isinstance(value, (tuple, list)):
        return tuple(_static_key(v) for v in value)
    return value


def _same_static(a: Mapping, b: Mapping) -> bool:
    if a.keys() != b.keys() or any(_static_key(a[k]) != _static_key(b[k]) for k in a):
        return False
    same = []
    for k in a:
        _map_static(lambda v, w: same.append(v is w or torch.equal(v, w)), a[k], b[k])
    return all(same)


@runtime_checkable
class SkipStack(Protocol):
    """The traversal's part of the contract: what ``run_units`` and a step around it need.
    ``embed``, ``run_block`` and ``finish`` must be capture-safe on CUDA (no host reads of device
    tensors, no host-to-device copies per call) and must not modify their input tensors in place
    (a unit's output is kept as a skip and as the deep state while later units run)."""

    num_units: int

    def skip_partner(self, i: int) -> int | None:
        """The unit whose output unit ``i`` fuses (an earlier one), or None."""

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, Any]:
        """(hidden state entering unit 0, context passed unchanged to ``run_block`` and ``finish``)."""

    def run_block(self, i: int, h: torch.Tensor, ctx: Any, skip: torch.Tensor | None) -> torch.Tensor:
        """Unit i; ``skip`` is its partner's output when it has one."""

    def finish(self, h: torch.Tensor, ctx: Any) -> torch.Tensor:
        """The model output, (N, *output latent shape)."""


class Workspace(Protocol):
    def hold(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """``value`` as it will be read later in the step (a persistent copy, or itself)."""


class Boundary(Protocol):
    """What a cached traversal does at unit ``num_units - shallow`` (``cache.forward.DeepCache``)."""

    residual: bool  # the deep state is the middle units' residual (stacks without long skips)

    def store(self, ws: Workspace, h: torch.Tensor, shallow_out: torch.Tensor) -> None:
        """A full step reached the boundary with ``h``."""

    def restore(self, ws: Workspace, shallow_out: torch.Tensor) -> torch.Tensor:
        """A cached step's hidden state entering the boundary unit."""


def skip_partners(stack: SkipStack) -> dict[int, int]:
    """{unit: partner} for every unit that fuses a long skip; checked to point backwards."""
    partners = {}
    for i in range(stack.num_units):
        j = stack.skip_partner(i)
        if j is not None:
            if not 0 <= j < i:
                raise ValueError(f"skip partner of unit {i} must be an earlier unit, got {j}")
            partners[i] = j
    return partners


def units_to_run(num_units: int, shallow: int | None, full: bool) -> list[int]:
    """All units on a full step (or without a cache); the outer ``shallow`` on each side otherwise."""
    if full or shallow is None:
        return list(range(num_units))
    return [*range(shallow), *range(num_units - shallow, num_units)]


class _References:
    @staticmethod
    def hold(name: str, value: torch.Tensor) -> torch.Tensor:
        return value


def run_units(
    stack: SkipStack,
    partners: dict[int, int],
    h: torch.Tensor,
    ctx,
    ws: Workspace | None = None,
    shallow: int | None = None,
    full: bool = True,
    deep: Boundary | None = None,
) -> torch.Tensor:
    """Units 0..num_units-1 from the embedded ``h``; returns the hidden state entering the final
    layer. ``partners``: ``skip_partners(stack)``; ``ws``: where held tensors live (None: plain
    references). With ``shallow`` (and ``deep``, the boundary), a full step (``full``) runs every
    unit and hands the state entering unit ``num_units - shallow`` to ``deep.store``; a cached step
    runs only the outer ``shallow`` units on each side and takes that state from ``deep.restore``."""
    ws = _References if ws is None else ws
    num_units = stack.num_units
    pushed = set(partners.values())
    boundary = None if shallow is None else num_units - shallow
    residual = deep is not None and deep.residual
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
        if residual and i == shallow - 1:
            shallow_out = ws.hold("shallow", h)
    return h
