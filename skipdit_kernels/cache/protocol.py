"""The skip-stack contract: what a model family provides so that Skip-Cache, the executor and
``sample()`` can run it without knowing the family.

A skip stack is an embedding, units 0..num_units-1 run in order (a unit is a block, or a group of
blocks such as Latte's (spatial, temporal) pair), and a final layer. Unit i may fuse its input with
the output of an earlier unit, its *skip partner* (Skip-DiT: unit i >= L/2 pairs with L-1-i;
Hunyuan-DiT: the middle units have no partner). The executor keeps the output of every unit that is
some unit's partner.

Our ``DiT`` / ``SkipDiT`` implement the contract themselves (structurally: they do not import this
module); other families (diffusers, video) get an adapter object, registered with
``register_skip_stack`` for their model class. ``as_skip_stack(model)`` is how ``cache/`` and
``sampling/`` find it.

Conditioning travels as a ``dict`` of tensors whose first dimension is the model batch (class labels
``{"y": (N,)}``, or text embeddings, masks and pooled vectors); the stack turns it into whatever its
blocks read (``embed``'s second result, the *context*, passed back unchanged to ``run_block`` and
``finish``).
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Protocol, runtime_checkable

import torch

Condition = dict  # name -> tensor, first dimension the model batch


@runtime_checkable
class SkipStack(Protocol):
    """The contract. ``embed``, ``run_block``, ``finish`` must be capture-safe on CUDA: no host reads
    of device tensors, no host-to-device copies per call (the rest runs on the host, once per
    request or per call)."""

    num_units: int
    #: the latent of one sample, e.g. (C, H, W) or (F, C, H, W): ``sample()`` draws x_T of this shape
    latent_shape: tuple[int, ...]
    #: the dimension of a batched latent that holds the channels (1 for (N, C, H, W), 2 for (N, F, C, H, W))
    channel_dim: int
    #: whether the output carries learned-variance channels after the epsilon channels
    learn_sigma: bool

    def skip_partner(self, i: int) -> int | None:
        """The unit whose output unit ``i`` fuses (an earlier one), or None."""

    def condition(self, conditioning: Any) -> Condition:
        """The user's conditioning (class labels, a dict of text embeddings, ...) as a checked
        condition dict for N samples. ValueError/TypeError naming the problem."""

    def null_condition(self, cond: Condition) -> Condition:
        """The unconditional branch of ``cond`` for classifier-free guidance; ValueError if the model
        has none."""

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, Condition]:
        """Host-side checks of one request's inputs (once per request, may read the device); returns
        t as an (N,) tensor and the condition. ValueError naming the offending shape/dtype/value."""

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, Any]:
        """(hidden state entering unit 0, context for the units and the final layer)."""

    def run_block(self, i: int, h: torch.Tensor, ctx: Any, skip: torch.Tensor | None) -> torch.Tensor:
        """Unit i; ``skip`` is its partner's output when it has one."""

    def finish(self, h: torch.Tensor, ctx: Any) -> torch.Tensor:
        """The model output, (N, *output latent shape)."""

    def guided_channels(self, guide_all_channels: bool) -> int:
        """How many leading output channels classifier-free guidance mixes (the rest, e.g. learned
        variance, are taken from the conditional branch)."""

    def split_call(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, Condition]:
        """The model's forward arguments as (x, t, cond) (for step-by-step requests)."""

    def wrap_output(self, out: torch.Tensor, args: tuple, kwargs: dict) -> Any:
        """``finish``'s output as the model's forward returns it."""


_REGISTRY: dict[type, Callable[[torch.nn.Module], SkipStack]] = {}
_ADAPTERS: "weakref.WeakKeyDictionary[torch.nn.Module, SkipStack]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def register_skip_stack(model_class: type, factory: Callable[[torch.nn.Module], SkipStack]) -> None:
    """Make ``as_skip_stack`` wrap instances of ``model_class`` (and subclasses) with ``factory(model)``."""
    with _LOCK:
        _REGISTRY[model_class] = factory


def as_skip_stack(model) -> SkipStack:
    """``model`` itself when it implements the contract, else its registered adapter (one per model,
    kept while the model lives). TypeError naming what is supported otherwise."""
    if isinstance(model, SkipStack):
        return model
    with _LOCK:
        adapter = _ADAPTERS.get(model) if isinstance(model, torch.nn.Module) else None
        if adapter is not None:
            return adapter
        for cls in type(model).__mro__:
            factory = _REGISTRY.get(cls)
            if factory is not None:
                adapter = _ADAPTERS[model] = factory(model)
                return adapter
    supported = ["skipdit_kernels.DiT", "skipdit_kernels.SkipDiT"] + sorted(c.__name__ for c in _REGISTRY)
    raise TypeError(
        f"{type(model).__name__} is not a skip stack Skip-Cache can run; supported: {', '.join(supported)} "
        "(diffusers models after `import skipdit_kernels.integrations.diffusers`)"
    )


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
