"""Skip-Cache for step-by-step use: ``enable_skip_cache(model, SkipCache(...))`` makes the model's
forward one denoising step of a request, until the returned session is closed.

    with skipdit_kernels.enable_skip_cache(model, SkipCache(interval=2)) as request:
        for t in timesteps:                 # your own sampling loop
            eps = model(x, t, y)            # cached or full, as the schedule says
    # the model's forward is its own again

The session *is* the request: its cache state (schedule position, deep history) lives in it and
nowhere else. It is active in the context (thread, asyncio task) that opened it: a forward of the
same model from another thread, or after the session closed, runs the plain uncached forward and
never sees this request's features. Within the session a forward that cannot continue the
trajectory (a new latent shape, dtype or device, other conditioning shapes, a rising timestep)
starts a fresh one, and ``request.reset()`` starts one explicitly. Two requests at once on one
model are two sessions (one per thread), or ``sample()`` calls (each its own request).

The forward is replaced on the instance (an attribute), never on the class, and restored exactly
when the last session of the model closes.
"""
from __future__ import annotations

import contextvars
import threading
import weakref

import torch

from .forward import DeepCache, EagerWorkspace, run_units
from .protocol import as_skip_stack, skip_partners
from .schedule import SkipCache


class _Dispatcher:
    """The instance-level forward installed while a model has open sessions."""

    def __init__(self, module: torch.nn.Module):
        self.active: contextvars.ContextVar = contextvars.ContextVar(f"skip_cache_{id(module)}", default=None)
        self.sessions: "weakref.WeakSet[SkipCacheSession]" = weakref.WeakSet()
        self.original = module.__dict__.get("forward")  # an instance-level forward someone else set
        module_ref = weakref.ref(module)

        def forward(*args, **kwargs):
            session = self.active.get()
            if session is not None and not session.closed:
                return session.step(*args, **kwargs)
            module = module_ref()
            plain = self.original if self.original is not None else type(module).forward.__get__(module)
            return plain(*args, **kwargs)

        self.forward = forward
        module.forward = forward

    def detach(self, module: torch.nn.Module) -> None:
        if module.__dict__.get("forward") is self.forward:
            if self.original is None:
                del module.forward
            else:
                module.forward = self.original


_DISPATCHERS: "weakref.WeakKeyDictionary[torch.nn.Module, _Dispatcher]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class SkipCacheSession:
    """One request's Skip-Cache on a model's forward (see the module docstring). Counters:
    ``full_steps``, ``cached_steps`` (this session's), ``last_step_full``."""

    def __init__(self, model: torch.nn.Module, cache: SkipCache):
        if not isinstance(cache, SkipCache):
            raise TypeError(f"enable_skip_cache expects a SkipCache, got {type(cache).__name__}")
        self.stack = as_skip_stack(model)
        self.partners = skip_partners(self.stack)
        cache.check_units(self.stack.num_units, self.partners)
        self.slots = cache.slots  # ValueError for forecast="auto"
        self.cache = cache
        self.closed = False
        self.full_steps = 0
        self.cached_steps = 0
        self.last_step_full: bool | None = None
        self._model = weakref.ref(model)
        self.reset()
        with _LOCK:
            dispatcher = _DISPATCHERS.get(model)
            if dispatcher is None:
                dispatcher = _DISPATCHERS[model] = _Dispatcher(model)
            dispatcher.sessions.add(self)
        self._dispatcher = dispatcher
        self._token = dispatcher.active.set(self)

    def reset(self) -> None:
        """Start a new trajectory: the next step is full and nothing cached is kept."""
        self._cursor = self.cache.cursor()
        self._workspace = EagerWorkspace()
        self._deep: DeepCache | None = None
        self._signature = None
        self._last_t: float | None = None

    @property
    def counter(self) -> int:
        return self._cursor.counter

    @torch.no_grad()
    def step(self, *args, **kwargs):
        """The model's forward as one step of this request (what the model's forward calls)."""
        stack = self.stack
        x, t, cond = stack.split_call(args, kwargs)
        t, cond = stack.check_inputs(x, t, cond)
        t_step = float(t.reshape(-1)[0])  # the schedule's timestep: the first sample's (as the official code)
        signature = (tuple(x.shape), x.dtype, x.device, tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(cond.items())))
        if signature != self._signature or (self._last_t is not None and t_step > self._last_t):
            self.reset()
            self._signature = signature
            self._deep = DeepCache(self.slots, not self.partners, x.device)
        planned = self._cursor.advance(t_step)
        deep = self._deep
        deep.slot.fill_(max(planned.slot, 0))
        deep.weights.copy_(torch.tensor(planned.weights, dtype=torch.float32))
        h, ctx = stack.embed(x, t, cond)
        h = run_units(stack, self.partners, h, ctx, self._workspace, self.cache.shallow_blocks, planned.full, deep)
        out = stack.finish(h, ctx)
        self._last_t = t_step
        self.last_step_full = planned.full
        if planned.full:
            self.full_steps += 1
        else:
            self.cached_steps += 1
        return stack.wrap_output(out, args, kwargs)

    def close(self) -> None:
        """End the request; the model's forward is its own again once its last session closes."""
        if self.closed:
            return
        self.closed = True
        try:
            self._dispatcher.active.reset(self._token)
        except ValueError:  # closed from another context: that context's variable still names us, closed
            pass
        self._workspace = None
        model = self._model()
        with _LOCK:
            self._dispatcher.sessions.discard(self)
            if model is not None and not any(not s.closed for s in self._dispatcher.sessions):
                self._dispatcher.detach(model)
                _DISPATCHERS.pop(model, None)

    def __enter__(self) -> "SkipCacheSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"step {self.counter}"
        return f"SkipCacheSession({self.cache}, {state}, full={self.full_steps}, cached={self.cached_steps})"


def enable_skip_cache(model: torch.nn.Module, cache: SkipCache | None = None) -> SkipCacheSession:
    """Start a Skip-Cache request on ``model``'s forward in this context (default schedule: the
    official ``SkipCache()``). Returns the session; close it (or use it as a context manager) to
    end the request. TypeError for a model that is not a skip stack; ValueError for a schedule
    that does not fit it."""
    return SkipCacheSession(model, cache if cache is not None else SkipCache())


def disable_skip_cache(model: torch.nn.Module) -> None:
    """Close every session of ``model`` (in any context) and restore its forward."""
    with _LOCK:
        dispatcher = _DISPATCHERS.get(model)
        sessions = list(dispatcher.sessions) if dispatcher is not None else []
    for session in sessions:
        session.close()
