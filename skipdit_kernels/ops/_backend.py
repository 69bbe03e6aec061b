"""Backend registry: which implementation of each op runs.

Backends: ``torch`` (the reference, always present), ``triton`` and ``native`` (the compiled
extension from csrc/). The choice comes from, in order: the innermost ``use_backend`` context,
the ``SKIPDIT_BACKEND`` environment variable, and ``auto``. A backend registers its kernels with
``register(op, backend)``; an op with no kernel for the chosen backend runs the reference.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Callable, Iterator

import torch

BACKENDS = ("torch", "triton", "native")
_CHOICES = BACKENDS + ("auto",)

_kernels: dict[str, dict[str, Callable]] = {}
_availability_probes: dict[str, Callable[[], tuple[bool, str]]] = {}
_selected: contextvars.ContextVar[str | None] = contextvars.ContextVar("skipdit_backend", default=None)


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` implements ``op`` for ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def wrap(fn: Callable) -> Callable:
        _kernels.setdefault(op, {})[backend] = fn
        return fn

    return wrap


def register_probe(backend: str, probe: Callable[[], tuple[bool, str]]) -> None:
    """``probe()`` returns (usable, reason) for ``backend``; called lazily."""
    _availability_probes[backend] = probe


def backend_status() -> dict[str, tuple[bool, str]]:
    """For each backend: whether it can run here, and why not when it cannot."""
    status = {"torch": (True, "reference implementation")}
    for name in BACKENDS[1:]:
        probe = _availability_probes.get(name)
        status[name] = probe() if probe else (False, "not built into this installation")
    return status


def available_backends() -> list[str]:
    return [name for name, (ok, _) in backend_status().items() if ok]


def _validate_choice(name: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"unknown backend {name!r}; expected one of {_CHOICES}")
    return name


def current_backend() -> str:
    """The requested backend name (may be ``auto``)."""
    chosen = _selected.get()
    if chosen is not None:
        return chosen
    return _validate_choice(os.environ.get("SKIPDIT_BACKEND", "auto").strip().lower() or "auto")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the block on backend ``name`` (``torch``, ``triton``, ``native``, ``auto``)."""
    name = _validate_choice(name)
    if name != "auto":
        ok, why = backend_status()[name]
        if not ok:
            raise RuntimeError(f"backend {name!r} is not available: {why}")
    token = _selected.set(name)
    try:
        yield
    finally:
        _selected.reset(token)


def _auto_backend(op: str, device: torch.device) -> str:
    return "torch"


def kernel_for(op: str, device: torch.device) -> Callable | None:
    """The registered kernel of ``op`` for the current backend, or None for the reference."""
    name = current_backend()
    if name == "auto":
        name = _auto_backend(op, device)
    if name == "torch":
        return None
    return _kernels.get(op, {}).get(name)
