"""Backend registry: which implementation of each op runs.

Backends: ``torch`` (the reference, always present), ``triton`` and ``native`` (the compiled
extension from csrc/). The choice comes from, in order: the innermost ``use_backend`` context,
the ``SKIPDIT_BACKEND`` environment variable, and ``auto``. A backend registers its kernels with
``register(op, backend)``; an op with no kernel for the chosen backend runs the reference.

``auto`` looks the op up in a small table shipped with the package (``auto_backends.json``), keyed
by device kind, op and dtype (``"cuda/skip_fuse/bfloat16"``), filled from benchmark results in
bench/results/; ``*`` stands for any dtype or any op (the most specific key wins: op and dtype, op,
dtype, neither). An op without a kernel on the backend found runs its reference. A missing entry, or an entry naming a backend that cannot run here, means
``torch``. ``auto`` never picks ``triton`` on a CPU: there Triton only runs in its numpy interpreter,
a test tool.

A backend may register a loader (``register_loader``): heavy imports (Triton) happen the first time
the backend is selected, never when the package is imported.

Resolution is memoised: ``kernel_for`` resolves each (requested backend, op, device, dtype, grad)
once and afterwards costs a context-variable read, an environment read and one dict lookup per op
call (about 1 us instead of 5). Every registry mutator below forgets the memo; code that edits the
private tables directly (tests) calls ``forget_resolutions()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from typing import Callable, Iterator

import torch

BACKENDS = ("torch", "triton", "native")
_CHOICES = BACKENDS + ("auto",)
AUTO_TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "auto_backends.json")

_kernels: dict[str, dict[str, Callable]] = {}
_availability_probes: dict[str, Callable[[], tuple[bool, str]]] = {}
_loaders: dict[str, Callable[[], None]] = {}
_loaded: set[str] = set()
_autograd: set[str] = {"torch"}  # backends whose kernels have a backward
_dtypes: dict[str, frozenset] = {}  # backend -> the dtypes its kernels take (absent: any)
_usable: dict[str, bool] = {}  # probe results cached for ``auto`` (probes are not free per op call)
_selected: contextvars.ContextVar[str | None] = contextvars.ContextVar("skipdit_backend", default=None)
_resolved: dict[tuple, Callable | None] = {}  # (requested, op, device, dtype, grad) -> kernel or None
_env_choices: dict[str, str] = {}  # raw SKIPDIT_BACKEND value -> validated choice


def forget_resolutions() -> None:
    """Drop memoised ``kernel_for`` results (after any change to what is registered or usable)."""
    _resolved.clear()


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` implements ``op`` for ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def wrap(fn: Callable) -> Callable:
        _kernels.setdefault(op, {})[backend] = fn
        forget_resolutions()
        return fn

    return wrap


def register_probe(backend: str, probe: Callable[[], tuple[bool, str]]) -> None:
    """``probe()`` returns (usable, reason) for ``backend``; called lazily."""
    _availability_probes[backend] = probe
    _usable.pop(backend, None)
    forget_resolutions()


def register_loader(backend: str, loader: Callable[[], None]) -> None:
    """``loader()`` imports and registers ``backend``'s kernels; run once, when first selected."""
    _loaders[backend] = loader
    _loaded.discard(backend)
    forget_resolutions()


def declare_autograd(backend: str, supported: bool = True) -> None:
    """``backend``'s kernels have a backward; ``auto`` avoids backends without one when an input
    requires grad (a training step keeps working under the default backend)."""
    (_autograd.add if supported else _autograd.discard)(backend)
    forget_resolutions()


def declare_dtypes(backend: str, dtypes) -> None:
    """``backend``'s kernels take only these dtypes; other dtypes run the reference."""
    _dtypes[backend] = frozenset(dtypes)
    forget_resolutions()


def needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def ensure_loaded(backend: str) -> None:
    if backend in _loaded:
        return
    loader = _loaders.get(backend)
    if loader is not None:
        loader()
    _loaded.add(backend)
    forget_resolutions()


def _status(name: str) -> tuple[bool, str]:
    if name == "torch":
        return True, "reference implementation"
    probe = _availability_probes.get(name)
    if probe is None:
        return False, "not built into this installation"
    try:
        return probe()
    except Exception as exc:  # a probe must never take the status report down
        return False, f"probe failed: {type(exc).__name__}: {exc}"


_confirmed: dict[str, Callable] = {}  # backend -> the probe that last found it usable


def _selectable(name: str) -> tuple[bool, str]:
    """``_status(name)``, answered without probing again once the backend's current probe has found it
    usable (a usable backend stays usable: its library is loaded; the native probe formats a status
    line and costs ~9 us, more than a fused op's own Python layer)."""
    probe = _availability_probes.get(name)
    if probe is not None and _confirmed.get(name) is probe:
        return True, ""
    ok, why = _status(name)
    if ok and probe is not None:
        _confirmed[name] = probe
    return ok, why


def backend_status() -> dict[str, tuple[bool, str]]:
    """For each backend: whether it can run here, and why not when it cannot."""
    return {name: _status(name) for name in BACKENDS}


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
    raw = os.environ.get("SKIPDIT_BACKEND", "auto")
    choice = _env_choices.get(raw)
    if choice is None:  # a bad value raises on every call, it is never memoised
        choice = _env_choices[raw] = _validate_choice(raw.strip().lower() or "auto")
    return choice


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the block on backend ``name`` (``torch``, ``triton``, ``native``, ``auto``).
    Where an input requires grad, ops of a backend without a backward (``native``) run the torch
    reference: run inference under ``torch.no_grad()`` / ``torch.inference_mode()``. So do inputs
    of a dtype the backend has no kernels for (float64 on ``native``)."""
    name = _validate_choice(name)
    if name != "auto":
        ok, why = _selectable(name)  # this backend's probe only (the triton probe alone costs ~30 us)
        if not ok:
            raise RuntimeError(f"backend {name!r} is not available: {why}")
        ensure_loaded(name)
    token = _selected.set(name)
    try:
        yield
    finally:
        _selected.reset(token)


# ---- auto ----------------------------------------------------------------------------------------
def load_auto_table(path: str = AUTO_TABLE_PATH) -> dict[str, str]:
    """``{"<device kind>/<op>/<dtype>": backend}`` from the shipped JSON (``{"table": {...}}``)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    table = data.get("table", {}) if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in table.items() if v in BACKENDS}


# Read once at import (a few hundred bytes): a lookup inside torch.compile must not do file I/O.
_auto_table: dict[str, str] = load_auto_table()


def set_auto_table(table: dict[str, str] | None) -> None:
    """Replace the auto table (``None``: reload the shipped file). For tests and experiments."""
    global _auto_table
    _auto_table = load_auto_table() if table is None else dict(table)
    forget_resolutions()


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "*"


def _backend_usable(name: str) -> bool:
    hit = _usable.get(name)
    if hit is None:
        if torch.compiler.is_compiling():  # never probe while tracing; decide again eagerly later
            return False
        hit = _status(name)[0]
        _usable[name] = hit
        forget_resolutions()
    return hit


def auto_backend(op: str, device: torch.device, dtype: torch.dtype | None = None, grad: bool = False) -> str:
    """The backend ``auto`` picks for ``op`` on ``device`` (and ``dtype``): the table, else torch.
    With ``grad`` (an input requires grad) only backends with a backward qualify."""
    kind, dt = torch.device(device).type, _dtype_name(dtype)
    name = next(
        (
            _auto_table[k]
            for k in (f"{kind}/{op}/{dt}", f"{kind}/{op}/*", f"{kind}/*/{dt}", f"{kind}/*/*")
            if k in _auto_table
        ),
        None,
    )
    if name is None or name == "torch":
        return "torch"
    if name == "triton" and kind != "cuda":
        return "torch"
    if grad and name not in _autograd:
        return "torch"
    if not _backend_usable(name):
        return "torch"
    return name


def kernel_for(op: str, device: torch.device, dtype: torch.dtype | None = None, grad: bool = False) -> Callable | None:
    """The registered kernel of ``op`` for the current backend, or None for the reference.
    ``grad``: some input requires grad (``needs_grad``); a backend without a backward then runs the
    reference instead (a result gradients can flow through), whether chosen or picked by ``auto``.
    Likewise a dtype the backend has no kernels for (``declare_dtypes``) runs the reference."""
    name = current_backend()
    if name == "torch":
        return None
    if torch.compiler.is_compiling():  # no memo while tracing: a global dict would become a guard
        return _resolve(name, op, device, dtype, grad)
    key = (name, op, device, dtype, grad)
    try:
        return _resolved[key]
    except KeyError:
        kernel = _resolved[key] = _resolve(name, op, device, dtype, grad)
        return kernel


def _resolve(name: str, op: str, device: torch.device, dtype: torch.dtype | None, grad: bool) -> Callable | None:
    if name == "auto":
        name = auto_backend(op, device, dtype, grad)
    if name == "torch" or (grad and name not in _autograd):
        return None
    if dtype is not None and name in _dtypes and dtype not in _dtypes[name]:
        return None
    if name not in _loaded:
        ensure_loaded(name)
    return _kernels.get(op, {}).get(name)
