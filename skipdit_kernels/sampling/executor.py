"""The cache-aware executor: a whole sampling trajectory of a skip stack from persistent buffers,
optionally replayed as two captured CUDA graphs (full step, cached step).

For one ``Signature`` (latent shape, conditioning shapes, dtype, device, CFG on/off) the executor
keeps sets of ``StepBuffers``: the sampler state ``x`` (fp32), the model input, the timestep and
condition tensors, the sampler's per-step coefficient row, the noise, the deep-cache slot and
weights, and (made on first use, keyed by name, shape and dtype) the hidden state, the skip outputs,
the deep history and the model output. A step writes into them in place, so the host only fills the
timestep, the coefficient row, the noise and the cache's slot/weights, then runs the step (eagerly)
or replays the graph of its kind. One step is

    model_in <- x (twice under CFG) -> stack.embed -> run_units -> stack.finish
    -> trajectory.model_output (guidance) -> trajectory.update, written back to x
    -> the full step's deep state committed to its history slot

The sampler arithmetic (coefficients, guidance, the DDPM/DDIM update) is the ``Trajectory``'s
(``trajectory.SamplerTrajectory``); the schedule is ``SkipCache.plan``. The executor knows no model family.

Requests: a run takes a free buffer set of its signature (or makes one) and gives it back at the
end, so concurrent runs on one executor (threads) never share buffers. A run that raises (an
error in the model, an interrupt) gives its buffer set back to no one: the next run starts from
fresh buffers, so nothing of an unfinished request is ever read again. Captured graphs belong to
the buffer set they were captured on and to what they read: a change of the model's parameter
storage, dtype or device (a swap, ``.to()``) re-captures them; in-place weight updates are read
live by the replay.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Callable, Hashable, NamedTuple, Protocol

import torch

from .. import ops
from ..cache.forward import DeepCache
from ..cache.protocol import Condition, SkipStack, as_skip_stack, run_units, skip_partners
from ..cache.schedule import PlannedStep, SkipCache


class Trajectory(Protocol):
    """What a sampler gives the executor (``sampling.SamplerTrajectory``). ``model_output`` and
    ``update`` must be capture-safe: they read their per-step numbers from ``coef`` (a device row
    the executor fills from ``coefficients()[k]``) and ``noise``."""

    key: Hashable  # what model_output/update compute, besides shapes (a captured graph belongs to one)
    timesteps: list[int]  # the model's timestep at each step, in sampling order
    cfg: bool  # the model batch is the conditional half then the unconditional half

    def coefficients(self) -> torch.Tensor:
        """(steps, K) float32 on the host."""

    def noise(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        """(steps, *shape) float32 on the host, or None for a deterministic sampler."""

    def model_output(self, out: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """The model output of the model batch -> the fp32 output the update reads (guided)."""

    def update(
        self, x: torch.Tensor, model_output: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """x_{i-1} from fp32 x."""


def resolve_cuda_graphs(cuda_graphs, device: torch.device | str) -> bool:
    """``"auto"``: graphs on a CUDA device, eager elsewhere; ``True`` without CUDA is an error."""
    device = torch.device(device)
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    if cuda_graphs == "auto":
        return on_cuda
    if cuda_graphs is True:
        if not on_cuda:
            raise ValueError(
                f"cuda_graphs=True needs a CUDA device, but sampling runs on {device}"
                + ("" if torch.cuda.is_available() else " and CUDA is not available")
                + "; use cuda_graphs='auto' (graphs on CUDA, eager elsewhere) or False"
            )
        return True
    if cuda_graphs is False or cuda_graphs is None:
        return False
    raise ValueError(f"cuda_graphs must be True, False or 'auto', got {cuda_graphs!r}")


class Signature(NamedTuple):
    """What one set of buffers (and its graphs) is shaped for."""

    latent: tuple[int, ...]  # (N, ...) of x, before CFG doubles the model batch
    condition: tuple  # Condition.signature() at the model batch
    dtype: torch.dtype
    device: torch.device
    cfg: bool

    @property
    def batch(self) -> int:
        return self.latent[0]

    @property
    def model_batch(self) -> int:
        return 2 * self.batch if self.cfg else self.batch


class Program(NamedTuple):
    """What a step computes besides its signature's shapes; a captured graph belongs to one."""

    shallow: int | None  # Skip-Cache shallow_blocks, None without a cache
    slots: int  # deep history slots (forecast order + 1)
    residual: bool  # cache the middle's residual (stacks without long skips)
    trajectory: Hashable  # Trajectory.key
    backend: str  # ops backend the graph was captured under


class StepBuffers:
    """The persistent tensors of one run at a time of one signature."""

    def __init__(self, signature: Signature, cond: Condition, num_coef: int, slots: int, residual: bool):
        s, dev = signature, signature.device
        self.signature = s
        self.x = torch.zeros(s.latent, device=dev)  # sampler state, fp32
        self.model_in = torch.zeros((s.model_batch, *s.latent[1:]), device=dev, dtype=s.dtype)
        self.t = torch.zeros(s.model_batch, dtype=torch.long, device=dev)
        self.cond = cond.to(dev).zeros_like()
        self.coef = torch.zeros(num_coef, device=dev)
        self.noise = torch.zeros(s.latent, device=dev)
        self.deep = DeepCache(slots, residual, dev)
        self.lazy: dict[tuple, torch.Tensor] = {}
        # Outputs are copied into fixed memory only for graphs; eager steps keep references.
        self.copy_outputs = True
        self.graphs: dict[Program, tuple[Hashable, "_Graphs"]] = {}

    def _get(self, name, shape, dtype, device, zero: bool) -> torch.Tensor:
        key = (name, tuple(shape), dtype)
        buf = self.lazy.get(key)
        if buf is None:
            buf = self.lazy[key] = (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=device)
        return buf

    def hold(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Copy ``value`` into the buffer ``name`` of its shape and dtype; return the buffer (``value``
        itself when ``copy_outputs`` is off)."""
        if not self.copy_outputs:
            return value
        return self._get(name, value.shape, value.dtype, value.device, zero=False).copy_(value)

    def zeros(self, name, shape, dtype, device) -> torch.Tensor:
        return self._get(name, shape, dtype, device, zero=True)

    def tensors(self) -> dict[str, torch.Tensor]:
        fixed = dict(
            x=self.x,
            model_in=self.model_in,
            t=self.t,
            coef=self.coef,
            noise=self.noise,
            slot=self.deep.slot,
            weights=self.deep.weights,
        )
        fixed.update({f"cond.{k}": v for k, v in self.cond.named_tensors().items()})
        return {**fixed, **{"/".join(map(str, k[:2])): v for k, v in self.lazy.items()}}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def begin_trajectory(self) -> None:
        """Unwritten history slots weigh 0: keep them finite."""
        for key, buf in self.lazy.items():
            if key[0] == "history":
                buf.zero_()


class _Graphs(NamedTuple):
    full: "torch.cuda.CUDAGraph"
    cached: "torch.cuda.CUDAGraph | None"
    pool: object


def weights_token(model: torch.nn.Module) -> tuple:
    """Where a captured graph reads the model: each parameter's and buffer's storage, dtype and
    device. In-place updates (``.data.copy_``, ``load_state_dict``, optimizer steps) keep the token:
    the graph reads the live memory, and the ops derive what they need from it inside the graph
    (nothing derived is cached), so replay sees them; a swap or a cast changes it: re-capture."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((p.data_ptr(), p.dtype, p.device) for p in tensors)


class SkipStackExecutor:
    """Runs sampling trajectories of one model (anything ``protocol.as_skip_stack`` accepts) from
    persistent per-signature buffers; ``run(..., graphs=True)`` replays captured CUDA graphs.

    Buffers and graphs stay until ``release()`` (all) or ``release(signature)``."""

    def __init__(self, model, warmup: int = 2, _weak: bool = False):
        as_skip_stack(model)  # TypeError now for a model that is not a skip stack
        self._model = weakref.ref(model) if _weak else (lambda m=model: m)
        self.warmup = int(warmup)
        self._free: dict[Signature, list[StepBuffers]] = {}
        self._lock = threading.Lock()
        self.captures = 0  # how many graph pairs were captured (a test hook)

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the executor's model was garbage-collected")
        return model

    @property
    def stack(self) -> SkipStack:
        return as_skip_stack(self.model)

    # -- signatures and buffers -----------------------------------------------------------------

    @staticmethod
    def signature(x: torch.Tensor, cond: Condition, dtype: torch.dtype, cfg: bool) -> Signature:
        return Signature(tuple(x.shape), cond.signature(), dtype, torch.device(x.device), bool(cfg))

    def program(self, cache: SkipCache | None, trajectory: Trajectory) -> Program:
        stack = self.stack
        partners = skip_partners(stack)
        if cache is not None:
            cache.check_units(stack.num_units, partners)
        return Program(
            shallow=None if cache is None else int(cache.shallow_blocks),
            slots=1 if cache is None else cache.slots,
            residual=not partners,
            trajectory=trajectory.key,
            backend=ops.current_backend(),
        )

    def acquire(self, signature: Signature, program: Program, num_coef: int, cond: Condition) -> StepBuffers:
        """A buffer set for one run (``cond``: a condition of ``signature``, the template of the
        condition buffers): an idle one that fits, or a new one; ``give_back`` it after a run that
        completed."""
        with self._lock:
            free = self._free.setdefault(signature, [])
            for k, b in enumerate(free):
                if b.coef.numel() == num_coef and b.deep.slots == program.slots and b.deep.residual == program.residual:
                    return free.pop(k)
        return StepBuffers(signature, cond, num_coef, program.slots, program.residual)

    def give_back(self, b: StepBuffers) -> None:
        with self._lock:
            self._free.setdefault(b.signature, []).append(b)

    @property
    def signatures(self) -> list[Signature]:
        with self._lock:
            return [s for s, free in self._free.items() if free]

    def buffer_sets(self, signature: Signature) -> list[StepBuffers]:
        """The idle buffer sets of ``signature`` (a test and memory-report hook)."""
        with self._lock:
            return list(self._free.get(signature, []))

    def release(self, signature: Signature | None = None) -> None:
        """Drop idle buffers and graphs of ``signature`` (all of them when None); their memory goes
        back to torch's allocator (``torch.cuda.empty_cache()`` returns it to the driver)."""
        with self._lock:
            if signature is None:
                self._free.clear()
            else:
                self._free.pop(signature, None)

    # -- one step -------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, b: StepBuffers, program: Program, trajectory: Trajectory, full: bool) -> None:
        """One sampler step on ``b``: reads x, t, cond, coef, noise, slot, weights; writes x_{i-1}
        into ``b.x`` and, on a full step, the deep state into its history slot (last, once the
        step's arithmetic is done). This is the function captured as the full / cached graph."""
        stack, sig = self.stack, b.signature
        n = sig.batch
        if sig.cfg:
            b.model_in[:n].copy_(b.x)
            b.model_in[n:].copy_(b.x)
        else:
            b.model_in.copy_(b.x)
        h, ctx = stack.embed(b.model_in, b.t, b.cond)
        deep = b.deep if program.shallow is not None else None
        if deep is not None:
            deep.discard()
        h = run_units(stack, skip_partners(stack), h, ctx, b, program.shallow, full, deep)
        out = b.hold("out", stack.finish(h, ctx))
        model_output = b.hold("model_output", trajectory.model_output(out, b.coef))
        b.x.copy_(trajectory.update(b.x, model_output, b.coef, b.noise))
        if deep is not None:
            deep.commit()

    # -- graphs ---------------------------------------------------------------------------------

    def graphs(self, b: StepBuffers, program: Program, trajectory: Trajectory) -> _Graphs:
        """The captured (full, cached) pair for these buffers and program, re-captured when the
        model's weights changed (``weights_token``); captured after ``warmup`` eager rounds on a
        side stream. The buffers' contents are clobbered."""
        token = weights_token(self.model)
        held = b.graphs.get(program)
        if held is not None and held[0] == token:
            return held[1]
        b.graphs.pop(program, None)  # stale: what it captured may be freed
        device = b.signature.device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the signature is on {device}")
        cached_too = program.shallow is not None
        with torch.cuda.device(device):
            # One eager round on the current stream first, so the lazily made buffers belong to it
            # (the stream they are replayed on), then warm-up rounds on a side stream (torch's docs).
            self.step(b, program, trajectory, True)
            if cached_too:
                self.step(b, program, trajectory, False)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(max(1, self.warmup)):
                    self.step(b, program, trajectory, True)
                    if cached_too:
                        self.step(b, program, trajectory, False)
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.synchronize(device)
            pool = torch.cuda.graph_pool_handle()
            full = torch.cuda.CUDAGraph()
            with torch.cuda.graph(full, pool=pool, capture_error_mode="thread_local"):
                self.step(b, program, trajectory, True)
            cached = None
            if cached_too:
                cached = torch.cuda.CUDAGraph()
                with torch.cuda.graph(cached, pool=pool, capture_error_mode="thread_local"):
                    self.step(b, program, trajectory, False)
        graphs = _Graphs(full, cached, pool)
        b.graphs[program] = (token, graphs)
        self.captures += 1
        return graphs

    # -- a trajectory ---------------------------------------------------------------------------

    @torch.no_grad()
    def run(
        self,
        trajectory: Trajectory,
        x: torch.Tensor,
        cond: Condition,
        dtype: torch.dtype,
        cache: SkipCache | None = None,
        graphs: bool = False,
        callback: Callable[[int, PlannedStep | None], None] | None = None,
    ) -> tuple[torch.Tensor, list[PlannedStep] | None]:
        """Sample from ``x`` (x_T, (N, *latent), on the target device) under ``cond`` (a
        ``Condition`` at the model batch: 2N under CFG, the unconditional half second). The inputs
        are checked by the stack once (``check_inputs``). Returns (x_0 in float32, the plan). A run
        that raises keeps nothing: its buffer set is dropped, not given back."""
        stack = self.stack
        sig = self.signature(x, cond, dtype, trajectory.cfg)
        program = self.program(cache, trajectory)
        steps = len(trajectory.timesteps)
        plan = cache.plan(trajectory.timesteps) if cache is not None else None

        coef_table = trajectory.coefficients()
        t_table = torch.tensor(trajectory.timesteps, dtype=torch.long)[:, None].expand(steps, sig.model_batch)
        t_table = t_table.contiguous()
        noise_table = trajectory.noise(sig.latent)
        slot_table = torch.tensor([[max(p.slot, 0)] for p in plan], dtype=torch.long) if plan else None
        weight_table = torch.tensor([p.weights for p in plan], dtype=torch.float32) if plan else None
        if sig.device.type == "cuda":
            coef_table, t_table = coef_table.pin_memory(), t_table.pin_memory()
            noise_table = noise_table.pin_memory() if noise_table is not None else None
            if plan:
                slot_table, weight_table = slot_table.pin_memory(), weight_table.pin_memory()

        probe = torch.empty((sig.model_batch, *sig.latent[1:]), dtype=dtype, device=sig.device)
        stack.check_inputs(probe, t_table[0].to(sig.device), cond)

        b = self.acquire(sig, program, coef_table.shape[1], cond)
        b.copy_outputs = graphs
        guard = torch.cuda.device(sig.device) if sig.device.type == "cuda" else contextlib.nullcontext()
        with guard:
            b.cond.copy_(cond)
            if graphs:
                b.t.copy_(t_table[0])
                b.coef.copy_(coef_table[0])
                captured = self.graphs(b, program, trajectory)
            b.x.copy_(x)
            b.begin_trajectory()
            for k in range(steps):
                b.t.copy_(t_table[k], non_blocking=True)
                b.coef.copy_(coef_table[k], non_blocking=True)
                if plan:
                    b.deep.slot.copy_(slot_table[k], non_blocking=True)
                    b.deep.weights.copy_(weight_table[k], non_blocking=True)
                if noise_table is not None:
                    b.noise.copy_(noise_table[k], non_blocking=True)
                full = plan[k].full if plan else True
                if graphs:
                    (captured.full if full else captured.cached).replay()
                else:
                    self.step(b, program, trajectory, full)
                if callback is not None:
                    callback(k, plan[k] if plan else None)
            result = b.x.clone()
        self.give_back(b)
        return result, plan


_EXECUTORS: "weakref.WeakKeyDictionary[Any, SkipStackExecutor]" = weakref.WeakKeyDictionary()
_EXECUTORS_LOCK = threading.Lock()


def executor_for(model) -> SkipStackExecutor:
    """The executor ``sample()`` uses for ``model`` (one per model, kept while the model lives, so
    its buffers and captured graphs are reused across calls). ``executor_for(model).release()``
    frees its memory."""
    with _EXECUTORS_LOCK:
        ex = _EXECUTORS.get(model)
        if ex is None:
            ex = _EXECUTORS[model] = SkipStackExecutor(model, _weak=True)
        return ex
