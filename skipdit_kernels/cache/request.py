"""Skip-Cache for step-by-step use: ``enable_skip_cache(model, SkipCache(...))`` makes the model's
forward one denoising step of a request, until the returned session is closed.

    with skipdit_kernels.enable_skip_cache(model, SkipCache(interval=2)) as request:
        for t in timesteps:                 # your own sampling loop
            eps = model(x, t, y)            # cached or full, as the schedule says
    # the model's forward is its own again

The session *is* the request: its cache state (schedule position, deep history) lives in it and
nowhere else. It is active in the context (thread, asyncio task) that opened it: a forward of the
same model from another thread, or after the session closed, runs the plain uncached forward and
never sees this request's features. Sessions opened in one context stack: the forward is a step of
the most recently opened one still open, whatever order they are closed in (closing an outer one
first, or from another thread, leaves the inner one serving every forward). Within the session a
forward that cannot continue the trajectory (a new latent shape, dtype or device, other
conditioning shapes, a rising timestep) starts a fresh one, and ``request.reset()`` starts one
explicitly. Two requests at once on one model are two sessions (one per thread), or ``sample()``
calls (each its own request).

A step changes the request's state (schedule position, deep history, counters, a fresh
trajectory) only when it completes: a forward that raises (an error in a block, out of memory, an
interrupt) leaves the request as the last completed step left it, so retrying the step runs it
again as it would have run.

The forward is replaced on the instance (an attribute), never on the class, and restored exactly
when the last session of the model closes.
"""

from __future__ import annotations

import contextvars
import threading
import weakref

import torch

from .forward import DeepCache, EagerWorkspace
from .protocol import as_skip_stack, run_units, skip_partners
from .schedule import SkipCache


class _Dispatcher:
    """The instance-level forward installed while a model has open sessions. ``active`` holds, per
    context, the sessions opened there (oldest first); a forward is a step of the last one still open."""

    def __init__(self, module: torch.nn.Module):
        self.active: contextvars.ContextVar = contextvars.ContextVar(f"skip_cache_{id(module)}", default=())
        self.sessions: "weakref.WeakSet[SkipCacheSession]" = weakref.WeakSet()
        self.original = module.__dict__.get("forward")  # an instance-level forward someone else set
        module_ref = weakref.ref(module)

        def forward(*args, **kwargs):
            session = self.current()
            if session is not None:
                return session.step(*args, **kwargs)
            module = module_ref()
            plain = self.original if self.original is not None else type(module).forward.__get__(module)
            return plain(*args, **kwargs)

        self.forward = forward
        module.forward = forward

    def current(self) -> "SkipCacheSession | None":
        for session in reversed(self.active.get()):
            if not session.closed:
                return session
        return None

    def open(self, session: "SkipCacheSession") -> None:
        self.active.set((*self.active.get(), session))

    def leave(self, session: "SkipCacheSession") -> None:
        """Forget ``session`` in this context (other contexts skip it: it is closed)."""
        opened = self.active.get()
        if session in opened:
            self.active.set(tuple(s for s in opened if s is not session))

    def detach(self, module: torch.nn.Module) -> None:
        if module.__dict__.get("forward") is self.forward:
            if self.original is None:
                del module.forward
            else:
                module.forward = self.original


_DISPATCHERS: "weakref.WeakKeyDictionary[torch.nn.Module, _Dispatcher]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class _Trajectory:
    """The state one trajectory of a session carries from step to step."""

    def __init__(self, cache: SkipCache, slots: int, residual: bool, signature: tuple, device: torch.device):
        self.cursor = cache.cursor()
        self.workspace = EagerWorkspace()
        self.deep = DeepCache(slots, residual, device)
        self.signature = signature
        self.last_t: float | None = None


class SkipCacheSession:
    """One request's Skip-Cache on a model's forward (see the module docstring). Counters:
    ``full_steps``, ``cached_steps`` (this session's completed steps), ``last_step_full``."""

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
        self._trajectory: _Trajectory | None = None
        with _LOCK:
            dispatcher = _DISPATCHERS.get(model)
            if dispatcher is None:
                dispatcher = _DISPATCHERS[model] = _Dispatcher(model)
            dispatcher.sessions.add(self)
        self._dispatcher = dispatcher
        dispatcher.open(self)

    def reset(self) -> None:
        """Start a new trajectory: the next step is full and nothing cached is kept."""
        self._trajectory = None

    @property
    def counter(self) -> int:
        return 0 if self._trajectory is None else self._trajectory.cursor.counter

    @torch.no_grad()
    def step(self, *args, **kwargs):
        """The model's forward as one step of this request (what the model's forward calls). The
        request's state changes only once the step completed."""
        stack = self.stack
        x, t, cond = stack.split_call(args, kwargs)
        t, cond = stack.check_inputs(x, t, cond)
        t_step = float(t.reshape(-1)[0])  # the schedule's timestep: the first sample's (as the official code)
        signature = (tuple(x.shape), x.dtype, x.device, cond.signature())
        trajectory = self._trajectory
        if (
            trajectory is None
            or signature != trajectory.signature
            or (trajectory.last_t is not None and t_step > trajectory.last_t)
        ):
            trajectory = _Trajectory(self.cache, self.slots, not self.partners, signature, x.device)
        planned = trajectory.cursor.peek(t_step)
        deep = trajectory.deep
        deep.discard()
        deep.slot.fill_(max(planned.slot, 0))
        deep.weights.copy_(torch.tensor(planned.weights, dtype=torch.float32))
        h, ctx = stack.embed(x, t, cond)
        h = run_units(stack, self.partners, h, ctx, trajectory.workspace, self.cache.shallow_blocks, planned.full, deep)
        result = stack.wrap_output(stack.finish(h, ctx), args, kwargs)
        # the step completed: commit what it changed
        deep.commit()
        trajectory.cursor.commit(planned, t_step)
        trajectory.last_t = t_step
        if not self.closed:  # closed from another thread meanwhile: keep nothing
            self._trajectory = trajectory
        self.last_step_full = planned.full
        if planned.full:
            self.full_steps += 1
        else:
            self.cached_steps += 1
        return result

    def close(self) -> None:
        """End the request; the model's forward is its own again once its last session closes."""
        if self.closed:
            return
        self.closed = True
        self._dispatcher.leave(self)
        self._trajectory = None
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
