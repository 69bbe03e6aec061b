"""One Skip-Cache request on a diffusers transformer, run by the transformer's own forward.

While a transformer has open requests it carries two things, removed when the last one closes:

- a diffusers ``HookRegistry`` hook (``pre_forward``/``post_forward``) that makes each call of the
  transformer one step of the request active in the calling context: it reads the timestep, asks
  the schedule whether the step is full or cached, and commits the step's changes (schedule cursor,
  trajectory, counters) when the forward returns; a step that raises commits nothing. Other hooks
  on the transformer (diffusers' hooks, accelerate's offload) compose with it, in either order. A
  pipeline that calls the transformer once per guidance branch and names the calls with diffusers'
  ``transformer.cache_context("cond")`` gets one trajectory per name;
- its declared block lists iterate, during a step of a request in this context, to stand-ins: the
  outer ``shallow`` units run (through the family's fast block when the request asks for it and the
  block is plain), the middle ones return their input on a cached step without running, and the
  first block of unit ``num_units - shallow`` stores (full step) or restores (cached step) what the
  family keeps. Outside a request, and in other contexts, the lists iterate to the blocks.

The request's state lives in the request (a context variable names the active one), never on the
transformer, so two requests on one transformer (two pipelines sharing it, two threads) never see
each other's features or options.
"""

from __future__ import annotations

import contextvars
import copy
import inspect
import threading
import weakref
from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ...cache import ScheduleCursor, SkipCache
from ...cache.forward import DeepCache, EagerWorkspace
from .family import Family
from .offload import AddedHook

_HOOK = "skipdit_skip_cache"


class CallBinder:
    """A forward's arguments by name from (args, kwargs), cheaply (no ``inspect.bind`` per call)."""

    def __init__(self, function):
        params = list(inspect.signature(function).parameters.values())[1:]  # without self
        self.names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    def get(self, args: tuple, kwargs: dict, name: str, default=None):
        if name in kwargs:
            return kwargs[name]
        i = self.names.index(name) if name in self.names else len(args)
        return args[i] if i < len(args) else self.defaults.get(name, default)

    def set(self, args: tuple, kwargs: dict, name: str, value) -> tuple[tuple, dict]:
        i = self.names.index(name) if name in self.names else len(args)
        if i < len(args):
            return (*args[:i], value, *args[i + 1 :]), kwargs
        return args, {**kwargs, name: value}

    def all(self, args: tuple, kwargs: dict) -> dict:
        out = dict(self.defaults)
        out.update(zip(self.names, args))
        out.update(kwargs)
        return out


_BINDERS: dict[type, CallBinder] = {}


def binder(module_class: type) -> CallBinder:
    b = _BINDERS.get(module_class)
    if b is None:
        b = _BINDERS[module_class] = CallBinder(module_class.forward)
    return b


class _Trajectory:
    """The schedule position and deep history of one trajectory (a rising timestep or new input
    shapes start a new one). A request keeps one per pipeline denoising call: a pipeline that names
    its calls with diffusers' ``cache_context`` gets one per name; otherwise consecutive calls at one
    timestep on the same latents (true classifier-free guidance: the prompt's, then the negative
    prompt's) are branches 0, 1, ... of a step. Each has its own schedule and deep state, so one never
    serves another's features (a second-order solver's calls at a repeated timestep take new latents:
    steps, not branches). ``name``: (the call's name or None, the branch). The deep history is kept
    per segment of the middle units (``_Installation.segments``), keyed by the segment's first unit."""

    def __init__(self, cache: SkipCache, signature, name, residual: bool, alphas_cumprod=None):
        self.cursor = ScheduleCursor(cache, alphas_cumprod)
        self.signature, self.name = signature, name
        self.residual = residual
        self.slots = cache.slots
        self.last_t: float | None = None
        self.deep: dict[int, tuple[DeepCache, list[EagerWorkspace]]] = {}

    def deep_for(self, segment: int, state: tuple[torch.Tensor, ...], planned) -> tuple[DeepCache, list]:
        """The segment's history, its slot and weights set for the step ``planned``."""
        if segment not in self.deep:
            spaces = [EagerWorkspace() for _ in state]
            self.deep[segment] = (DeepCache(self.slots, self.residual, state[0].device), spaces)
        deep, spaces = self.deep[segment]
        deep.slot.fill_(max(planned.slot, 0))
        deep.weights.copy_(torch.tensor(planned.weights, dtype=torch.float32))
        return deep, spaces


class _Step:
    """One call of the transformer in a request: the plan and what the block stand-ins share."""

    def __init__(self, request: "SkipCacheRequest", trajectory: _Trajectory, cursor, planned, t: float, branch: int,
                 latents):  # fmt: skip
        self.request, self.trajectory, self.cursor, self.planned, self.t = request, trajectory, cursor, planned, t
        self.branch, self.latents = branch, latents
        self.full = planned.full
        self.shallow = request.cache.shallow_blocks
        self.boundary = request.num_units - self.shallow
        # (first unit, last unit) of each segment of the middle units; the last one may end at the boundary
        residual = trajectory.residual
        self.segments = request.installation.segments(self.shallow) if residual else [(self.shallow, None)]
        self.bases: dict[int, tuple[torch.Tensor, ...]] = {}  # segment start -> the state entering it
        self.calls = request.installation.step_calls(self)

    def _keep(self, segment: int, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The end of a segment: store ``state`` (full step) or return it restored (cached step)."""
        traj = self.trajectory
        deep, spaces = traj.deep_for(segment, state, self.planned)
        base = self.bases.get(segment) if traj.residual else state
        if base is None or len(base) != len(state):
            name = self.request.family.name
            raise RuntimeError(f"{name}: the segment of the middle units from unit {segment} ends in another state")
        if self.full:
            for ws, h, b in zip(spaces, state, base):
                deep.store(ws, h.detach(), b.detach())
            return state
        return tuple(deep.restore(ws, b) for ws, b in zip(spaces, base))

    def at_entry(self, unit: int, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Entering ``unit`` with ``state``: keep the state entering a segment; at the boundary end
        the last segment (store the state, or return the restored one)."""
        if self.trajectory.residual and any(unit == first for first, _ in self.segments):
            self.bases[unit] = state
        if unit != self.boundary:
            return state
        first, last = self.segments[-1]
        return state if last is not None else self._keep(first, state)

    def at_exit(self, unit: int, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Leaving ``unit``, the last of a segment that ends where its block list does: store the
        state it returns (full), or return the restored one in place of its input (cached)."""
        first = next(first for first, last in self.segments if last == unit)
        return self._keep(first, state)


class _BlockCall:
    """A block as the lists yield it during a step (attributes read through to the block)."""

    def __init__(self, step: _Step, unit: int, block: torch.nn.Module, io, entry: bool, skipped: bool, exit_: bool,
                 fast):  # fmt: skip
        self._step, self._unit, self._block, self._io = step, unit, block, io
        self._entry, self._skipped, self._exit, self._fast = entry, skipped, exit_, fast

    def __getattr__(self, name):
        return getattr(self._block, name)

    def __call__(self, *args, **kwargs):
        block, io = self._block, self._io
        bind = binder(type(block))
        if self._entry or self._skipped:
            state = tuple(bind.get(args, kwargs, name) for name in io.inputs)
            if self._entry:
                new = self._step.at_entry(self._unit, state)
                if new is not state:
                    for name, value in zip(io.inputs, new):
                        args, kwargs = bind.set(args, kwargs, name, value)
                    state = new
            if self._skipped:
                if self._exit:
                    state = self._step.at_exit(self._unit, state)
                return state[0] if io.outputs is None else tuple(state[io.inputs.index(n)] for n in io.outputs)
        out = self._run(block, bind, args, kwargs)
        if self._exit:  # a full step: the block ran
            state = (out,) if io.outputs is None else tuple(out[io.outputs.index(n)] for n in io.inputs)
            self._step.at_exit(self._unit, state)
        return out

    def _run(self, block, bind, args, kwargs):
        fast = self._fast
        if fast is not None and fast.is_plain(block):
            out = fast.run(block, bind.all(args, kwargs))
            if out is not None:
                return out
        return block(*args, **kwargs)


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class _RequestHook(ModelHook):
    """The transformer-level hook: each call is one step of the request active in this context.
    Stateful only to hear the name of the denoising call a pipeline announces with diffusers'
    ``transformer.cache_context("cond")`` (pipelines that call the transformer separately for the
    conditional and unconditional branch): each name is a trajectory of its own. The request's
    state is never kept here."""

    _is_stateful = True

    def __init__(self, installation: "_Installation"):
        super().__init__()
        self.installation = installation
        self.denoising_call = StateManager(_NoState)  # diffusers sets the pipeline's cache context on it

    def call_name(self):
        context = getattr(self.denoising_call, "_context", None)
        return getattr(context, "name", context)

    def reset_state(self, module):
        return module

    def pre_forward(self, module, *args, **kwargs):
        request = self.installation.active.get()
        if request is None or request.closed:
            return args, kwargs
        return request._begin(module, args, kwargs, self.call_name())

    def post_forward(self, module, output):
        request = self.installation.active.get()
        if request is not None and not request.closed:
            request._commit()
        return output


_LIST_OWNERS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[_Installation, str]]" = weakref.WeakKeyDictionary()
_LIST_CLASSES: dict[type, type] = {}


def _iterating_class(cls: type) -> type:
    """``cls`` (a ModuleList class) whose iteration yields the step's stand-ins during a step."""
    made = _LIST_CLASSES.get(cls)
    if made is None:

        def __iter__(self):
            owner = _LIST_OWNERS.get(self)
            calls = owner[0].calls_now(owner[1]) if owner is not None else None
            return iter(calls) if calls is not None else cls.__iter__(self)

        made = _LIST_CLASSES[cls] = type(cls.__name__, (cls,), {"__iter__": __iter__, "__module__": cls.__module__,
                                                                "__qualname__": cls.__qualname__})  # fmt: skip
    return made


class _Installation:
    """Skip-Cache's hooks on one transformer while it has open requests."""

    def __init__(self, transformer: torch.nn.Module, family: Family):
        self.family = family
        self.active: contextvars.ContextVar = contextvars.ContextVar(f"skip_cache_{id(transformer)}", default=None)
        self.requests: "weakref.WeakSet[SkipCacheRequest]" = weakref.WeakSet()
        self.units = family.units(transformer)
        self.lists = {name: getattr(transformer, name) for name in family.blocks}
        self.hook = AddedHook(transformer, _RequestHook(self), _HOOK)
        self.list_classes = {}
        for name, blocks in self.lists.items():
            self.list_classes[name] = type(blocks)
            _LIST_OWNERS[blocks] = (self, name)
            blocks.__class__ = _iterating_class(type(blocks))

    def remove(self, transformer: torch.nn.Module) -> None:
        self.hook.remove(transformer)
        for name, blocks in self.lists.items():
            blocks.__class__ = self.list_classes[name]
            _LIST_OWNERS.pop(blocks, None)

    def calls_now(self, list_name: str):
        request = self.active.get()
        step = None if request is None or request.closed else request._step
        return None if step is None else step.calls[list_name]

    def segments(self, shallow: int) -> list[tuple[int, int | None]]:
        """The middle units ``[shallow, num_units - shallow)`` cut where one block list ends and the
        next, which carries the state in other arguments, begins (FLUX.2, Chroma: dual-stream blocks
        take and return two streams, the forward joins them into the single-stream blocks' one):
        (first unit, last unit) per segment, the last unit None for the segment that reaches the
        boundary. A cached step restores each segment's residual where the segment ends; lists that
        carry the state alike (FLUX.1's) stay one segment."""
        boundary = len(self.units) - shallow
        io = [self.family.io_of(members[0][0]) for members in self.units]
        cuts = [u for u in range(shallow + 1, boundary + 1) if io[u] != io[u - 1]]  # first units of other lists
        starts = [shallow, *(u for u in cuts if u < boundary)]
        last = boundary - 1 if boundary in cuts else None  # the boundary's list carries the state otherwise
        return [(first, nxt - 1) for first, nxt in zip(starts, starts[1:])] + [(starts[-1], last)]

    def step_calls(self, step: _Step) -> dict[str, list]:
        request, family = step.request, self.family
        fast = family.fast_block if request.fast_blocks else None
        starts = {first for first, _ in step.segments} if step.trajectory.residual else set()
        exits = {last for _, last in step.segments if last is not None}
        calls: dict[str, list] = {name: [] for name in family.blocks}
        for unit, members in enumerate(self.units):
            for pos, (name, block) in enumerate(members):
                entry = pos == 0 and (unit == step.boundary or unit in starts)
                exit_ = pos == len(members) - 1 and unit in exits
                skipped = not step.full and step.shallow <= unit < step.boundary
                if entry or skipped or exit_ or fast is not None:
                    calls[name].append(_BlockCall(step, unit, block, family.io_of(name), entry, skipped, exit_, fast))
                else:
                    calls[name].append(block)
        return calls


_INSTALLATIONS: "weakref.WeakKeyDictionary[torch.nn.Module, _Installation]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _same_tensor(a, b) -> bool:
    """``a`` and ``b`` are one tensor (the same memory, shape and strides), or one object."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
    return a is b


def _signature(bind, args: tuple, kwargs: dict, timestep: str):
    """What must stay the same within a trajectory: every tensor argument's shape, dtype and device
    (also inside lists and tuples) and the flags (booleans, integers, strings); not the timestep."""

    def key(v):
        if isinstance(v, torch.Tensor):
            return (tuple(v.shape), v.dtype, v.device)
        if isinstance(v, (list, tuple)):
            return tuple(key(x) for x in v)
        return v if isinstance(v, (bool, int, str, type(None))) else type(v).__name__

    return tuple((name, key(v)) for name, v in sorted(bind.all(args, kwargs).items()) if name != timestep)


class SkipCacheRequest:
    """One Skip-Cache request on a diffusers transformer (see the module docstring): every call of
    the transformer in the context that opened it is one step, until ``close()``. ``cache``: the
    schedule (explicit forecast order); ``fast_blocks``: this request's choice. Counters:
    ``full_steps``, ``cached_steps``, ``last_step_full``. A context manager."""

    def __init__(
        self, transformer: torch.nn.Module, family: Family, cache: SkipCache, fast_blocks: bool, alphas_cumprod=None
    ):
        if cache.forecast_basis == "alpha-sigma" and alphas_cumprod is None:
            raise ValueError(
                "forecast_basis='alpha-sigma' needs the sampler's noise schedule: pass alphas_cumprod= "
                "(scheduler.alphas_cumprod), or apply_skip_cache to the pipeline"
            )
        self.alphas_cumprod = alphas_cumprod
        self.family = family
        self.num_units = len(family.units(transformer))
        cache.check_units(self.num_units, family.partners(self.num_units))
        cache.slots  # ValueError for forecast="auto"
        self.cache, self.fast_blocks = cache, bool(fast_blocks)
        self.closed = False
        self.full_steps = self.cached_steps = 0
        self.last_step_full: bool | None = None
        # One trajectory per denoising call (see _Trajectory); the last call's timestep and latents
        # (kept alive, so that an equal data pointer means the same tensor) tell a branch from a step.
        self._trajectories: dict[Any, _Trajectory] = {}
        self._branch, self._last_t, self._last_latents = 0, None, None
        self._step: _Step | None = None
        self._model = weakref.ref(transformer)
        with _LOCK:
            installation = _INSTALLATIONS.get(transformer)
            if installation is None:
                installation = _INSTALLATIONS[transformer] = _Installation(transformer, family)
            installation.requests.add(self)
        self.installation = installation
        self._token = installation.active.set(self)

    def reset(self) -> None:
        """Start a new trajectory: the next step is full and nothing cached is kept."""
        self._trajectories, self._branch, self._last_t, self._last_latents = {}, 0, None, None

    def _begin(self, module, args: tuple, kwargs: dict, call_name=None):
        bind = binder(type(module))
        timestep = self.family.timestep
        t = bind.get(args, kwargs, timestep.argument)
        if t is None:
            name = self.family.name
            raise ValueError(f"{name} under Skip-Cache needs its {timestep.argument} argument (the schedule reads it)")
        t_step = timestep.noise_level(float(torch.as_tensor(t).reshape(-1)[0]))  # the first sample's (official code)
        signature = _signature(bind, args, kwargs, timestep.argument)
        latents = bind.get(args, kwargs, bind.names[0])  # the forward's first argument: the noisy latents
        repeated = t_step == self._last_t and _same_tensor(latents, self._last_latents)
        branch = self._branch + 1 if call_name is None and repeated else 0
        traj = self._trajectories.get((call_name, branch))
        if traj is None or traj.signature != signature or (traj.last_t is not None and t_step > traj.last_t):
            traj = _Trajectory(
                self.cache, signature, (call_name, branch), self.family.long_skips is None, self.alphas_cumprod
            )
        for deep, _ in traj.deep.values():
            deep.discard()  # what a step that raised had staged
        cursor = copy.deepcopy(traj.cursor)
        self._step = _Step(self, traj, cursor, cursor.advance(t_step), t_step, branch, latents)
        for name in self.family.consumed_arguments:
            value = bind.get(args, kwargs, name)
            if isinstance(value, list):
                args, kwargs = bind.set(args, kwargs, name, list(value))
        return args, kwargs

    def _commit(self) -> None:
        step, self._step = self._step, None
        if step is None:
            return
        step.trajectory.cursor, step.trajectory.last_t = step.cursor, step.t
        for deep, _ in step.trajectory.deep.values():
            deep.commit()
        self._trajectories[step.trajectory.name] = step.trajectory
        self._branch, self._last_t, self._last_latents = step.branch, step.t, step.latents
        self.last_step_full = step.full
        if step.full:
            self.full_steps += 1
        else:
            self.cached_steps += 1

    def close(self) -> None:
        """End the request; the transformer loses Skip-Cache's hooks once its last request closes."""
        if self.closed:
            return
        self.closed = True
        self._step, self._trajectories, self._last_latents = None, {}, None
        installation = self.installation
        if installation.active.get() is self:  # closed out of order: a later request stays active
            try:
                installation.active.reset(self._token)
            except ValueError:  # closed from another context
                pass
        model = self._model()
        with _LOCK:
            installation.requests.discard(self)
            if not any(not r.closed for r in installation.requests):
                if model is not None and _INSTALLATIONS.get(model) is installation:
                    installation.remove(model)
                    del _INSTALLATIONS[model]

    def __enter__(self) -> "SkipCacheRequest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        counts = f"full={self.full_steps}, cached={self.cached_steps}"
        return f"SkipCacheRequest({self.family.name}, {self.cache}, {state}, {counts})"


def close_requests(transformer: torch.nn.Module) -> None:
    """Close every request on ``transformer`` (in any context)."""
    with _LOCK:
        installation = _INSTALLATIONS.get(transformer)
        requests = list(installation.requests) if installation is not None else []
    for request in requests:
        request.close()
