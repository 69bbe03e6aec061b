"""The skip-stack contract: what a model family provides so that Skip-Cache, the executor and
``sample()`` can run it without knowing the family. Three parts, one per caller:

- ``SkipStack`` (the traversal, ``skipdit_kernels.models.stack``): ``num_units``, ``skip_partner``,
  ``embed``, ``run_block``, ``finish``; what ``run_units`` and a step around it need.
- ``SamplerStack`` (the sampler, ``sample()`` and the executor): the latent of one sample
  (``latent_shape``, ``latent_shape_for``, ``channel_dim``, ``learn_sigma``), guidance
  (``guided_channels``, ``null_condition``), the user's conditioning (``condition``) and the
  once-per-request input checks (``check_inputs``).
- ``ForwardBinding`` (step-by-step sessions): the model's forward arguments as (x, t, condition)
  (``split_call``) and the output as the forward returns it (``wrap_output``).

Conditioning travels as a ``Condition``: per-sample tensors (first dimension the model batch) and a
static part shared by every sample (rotary tables, flags); the stack turns it into whatever its
blocks read (``embed``'s second result, the *context*).

Our models (``DiT``, ``SkipDiT``, ``LatteSkip``, ``LatteT2VSkip``) implement all three themselves;
other families (diffusers) get an adapter object, registered with ``register_skip_stack`` for their
model class. ``as_skip_stack(model)`` is how ``cache/`` and ``sampling/`` find it; every member of
every part is required (checked when the adapter is made, TypeError naming what is missing).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from ..models.stack import Condition, SkipStack, run_units, skip_partners

__all__ = [
    "Condition",
    "ForwardBinding",
    "SamplerStack",
    "SkipStack",
    "as_skip_stack",
    "register_skip_stack",
    "run_units",
    "skip_partners",
]


@runtime_checkable
class SamplerStack(Protocol):
    """The sampler's part: what ``sample()`` and the executor read besides the traversal."""

    #: the latent of one sample, e.g. (C, H, W) or (F, C, H, W): ``sample()`` draws x_T of this shape
    latent_shape: tuple[int, ...]
    #: the dimension of a batched latent that holds the channels (1 for (N, C, H, W), 2 for (N, F, C, H, W))
    channel_dim: int
    #: whether the output carries learned-variance channels after the epsilon channels
    learn_sigma: bool

    def latent_shape_for(self, image_size: int) -> tuple[int, ...]:
        """The latent of one sample for an image (or frame) side of ``image_size`` pixels;
        ValueError naming the sizes the model supports."""

    def guided_channels(self, guide_all_channels: bool) -> int:
        """How many leading output channels classifier-free guidance mixes (the rest, e.g. learned
        variance, are taken from the conditional branch)."""

    def condition(self, conditioning: Any) -> Condition:
        """The user's conditioning (class labels, a dict of text embeddings, a number of samples)
        as a checked ``Condition`` of N samples. ValueError/TypeError naming the problem."""

    def null_condition(self, cond: Condition) -> Condition:
        """The unconditional branch of ``cond`` for classifier-free guidance; ValueError if the model
        has none."""

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, Condition]:
        """Host-side checks of one request's inputs (once per request or step, may read the device);
        returns t as an (N,) tensor and the condition. ValueError naming the offending shape/dtype/value."""


@runtime_checkable
class ForwardBinding(Protocol):
    """The step-by-step session's part: the model's own forward signature."""

    def split_call(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any, Condition]:
        """The model's forward arguments as (x, t, cond)."""

    def wrap_output(self, out: torch.Tensor, args: tuple, kwargs: dict) -> Any:
        """``finish``'s output as the model's forward returns it."""


_PARTS = (SkipStack, SamplerStack, ForwardBinding)
_REGISTRY: dict[type, Callable[[torch.nn.Module], Any]] = {}
_ADAPTERS: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def register_skip_stack(model_class: type, factory: Callable[[torch.nn.Module], Any]) -> None:
    """Make ``as_skip_stack`` wrap instances of ``model_class`` (and subclasses) with ``factory(model)``,
    an object implementing ``SkipStack``, ``SamplerStack`` and ``ForwardBinding``."""
    with _LOCK:
        _REGISTRY[model_class] = factory


_MEMBERS = (
    "num_units", "skip_partner", "embed", "run_block", "finish",  # SkipStack
    "latent_shape", "channel_dim", "learn_sigma", "latent_shape_for", "guided_channels", "condition",
    "null_condition", "check_inputs",  # SamplerStack
    "split_call", "wrap_output",  # ForwardBinding
)  # fmt: skip


def _missing(obj) -> list[str]:
    return [m for m in _MEMBERS if not hasattr(obj, m)]


_IMPLEMENTS: "weakref.WeakKeyDictionary[type, bool]" = weakref.WeakKeyDictionary()


def _implements(obj) -> bool:
    """Whether ``obj``'s class implements every part (decided once per class: a protocol check
    costs tens of microseconds, and this runs at every executor step)."""
    known = _IMPLEMENTS.get(type(obj))
    if known is None:
        known = _IMPLEMENTS[type(obj)] = all(isinstance(obj, part) for part in _PARTS)
    return known


def as_skip_stack(model):
    """``model`` itself when it implements the contract, else its registered adapter (one per model,
    kept while the model lives). TypeError naming what is supported, or what an adapter lacks."""
    if _implements(model):
        return model
    with _LOCK:
        adapter = _ADAPTERS.get(model) if isinstance(model, torch.nn.Module) else None
        if adapter is not None:
            return adapter
        for cls in type(model).__mro__:
            factory = _REGISTRY.get(cls)
            if factory is not None:
                adapter = factory(model)
                if not _implements(adapter):
                    raise TypeError(
                        f"the skip-stack adapter {type(adapter).__name__} of {cls.__name__} lacks {_missing(adapter)}"
                    )
                _ADAPTERS[model] = adapter
                return adapter
    supported = ["skipdit_kernels.DiT", "skipdit_kernels.SkipDiT", "skipdit_kernels.LatteSkip"]
    supported += sorted(c.__name__ for c in _REGISTRY)
    lacks = _missing(model) if isinstance(model, torch.nn.Module) and isinstance(model, SkipStack) else []
    raise TypeError(
        f"{type(model).__name__} is not a skip stack Skip-Cache can run"
        + (f" (it lacks {lacks})" if lacks else "")
        + f"; supported: {', '.join(supported)} (diffusers transformers: skipdit_kernels.integrations.diffusers.apply_skip_cache / enable_skip_cache)"
    )
