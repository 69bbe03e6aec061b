"""Batched sampling of requests at different steps (continuous batching) with Skip-Cache per request.

A serving loop keeps one ``BatchedSampler`` per model, ``add``s requests as they arrive and calls
``step()`` in a loop; each call advances every in-flight request by one denoising step and returns
the requests that finished. Every request keeps its own x_t, conditioning, sampler (DDPM / DDIM,
step count, seed and noise), guidance scale, ``SkipCache`` schedule (a ``ScheduleCursor``) and deep
history (a ``DeepCache``); requests join and leave between steps.

One step groups the requests into model calls by what can share one: the latent shape, the
conditioning's per-sample shapes and static tensors, and the Skip-Cache boundary (``shallow_blocks``;
an uncached request joins a cached call of its class as a row that is full at every step). Guidance is per request and is not a call class: a CFG request
contributes its conditional and unconditional rows, a non-CFG request its rows, to the same call.
In a call every row runs the embedding and the outer ``shallow_blocks`` units on each side; the deep
units run only on the rows of requests whose step is full (gathered, run, scattered back at the
boundary), and each request on a cached step restores (or forecasts) its own deep state from its
own history. The traversal is ``run_units``, the same one ``sample()`` runs; the gather/scatter is a
view of the stack (``_RowSplitStack``) and a boundary (``_RowBoundary``) handed to it.

Right value: a request's result equals ``sample()`` of the same request alone, bit for bit where
the ops are batch-invariant (the torch backend on CPU: every op here computes a row from that row
only, with the same reduction order whatever the batch; tested), within fp32 rounding otherwise
(GEMM libraries may pick another kernel for another row count, e.g. cuBLAS on GPU).

Cost: a mixed step embeds the full rows twice (the stack's context is opaque, so the deep units get
an embedding of their own rows); the patch and condition embeddings are small next to the units.

CUDA graphs (not implemented here; this path is eager): a captured graph has fixed shapes, so the
full/cached partition would be captured per row-count bucket, e.g. powers of two for the rows of
the call and for the full rows (padding rows with a dummy request whose output is dropped), which
bounds the graphs to (log2 R + 1)^2 per call class for at most R rows.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time

import torch

from ..cache.forward import DeepCache, EagerWorkspace
from ..cache.protocol import Condition, run_units, skip_partners
from ..cache.schedule import PlannedStep
from .sample import SampleInfo, prepare_request, resolve_device


@dataclasses.dataclass
class BatchedResult:
    """A finished request: its id (``add``'s), the latents (N, *latent) float32, what the run did
    (``seconds``: from ``add`` to the step that finished it)."""

    request_id: int
    latents: torch.Tensor
    info: SampleInfo


@dataclasses.dataclass
class StepReport:
    """What one ``step()`` ran. Rows are model-batch rows (a CFG request counts both halves)."""

    requests: int  # in-flight requests stepped
    calls: int  # model calls (groups)
    rows: int  # rows through the embedding and the shallow units
    full_rows: int  # rows whose step is full (or uncached)
    deep_rows: int  # rows the deep units ran on, counted at the first deep unit (uncached groups: all units)
    finished: list[BatchedResult]


class _Request:
    """One in-flight request: the resolved ``SamplingRequest`` and its state between steps."""

    def __init__(self, request_id, request, x, trajectory, cond, device):
        self.id = request_id
        self.request = request
        self.trajectory = trajectory
        self.x = x  # fp32 (N, *latent)
        self.cond = cond  # at the model batch (2N under CFG, unconditional half second)
        self.rows = cond.batch
        self.coef = trajectory.coefficients().to(device)
        noise = trajectory.noise(tuple(x.shape))
        self.noise = None if noise is None else noise.to(device)
        cache = request.cache
        self.cursor = None if cache is None else cache.cursor()
        self.deep = None if cache is None else DeepCache(cache.slots, not skip_partners(request.stack), device)
        self.ws = EagerWorkspace()
        self.k = 0
        self.counts = [0, 0]
        self.started = time.perf_counter()

    @property
    def timestep(self) -> int:
        return self.trajectory.timesteps[self.k]

    def plan(self) -> PlannedStep | None:
        return None if self.cursor is None else self.cursor.peek(self.timestep)


def _hidden_per_row(h: torch.Tensor, rows: int) -> int:
    """Hidden-state rows per model row (1 for images; frames for video stacks whose hidden state is
    (N * F, tokens, D), sample-major). ValueError when the hidden state does not divide into rows."""
    if h.shape[0] % rows:
        raise ValueError(f"a hidden state of {h.shape[0]} rows does not split into {rows} model rows")
    return h.shape[0] // rows


def _expand(index: torch.Tensor, per_row: int) -> torch.Tensor:
    """Model-row indices as hidden-state row indices (each model row owns ``per_row`` consecutive rows)."""
    if per_row == 1:
        return index
    return (index[:, None] * per_row + torch.arange(per_row, device=index.device)).flatten()


def _rows(cond: Condition, index: torch.Tensor) -> Condition:
    """The rows ``index`` of ``cond`` (per-sample tensors indexed, the static part kept)."""
    return Condition({k: v.index_select(0, index) for k, v in cond.items()}, cond.static, int(index.numel()))


class _RowBoundary:
    """The boundary of one call: stages each full request's deep state into its own ``DeepCache``
    and restores each cached request's state from its own history; ``assembled`` is the hidden
    state of every row entering the boundary unit (full rows as computed, cached rows restored)."""

    def __init__(self, group: list[_Request], full: list[bool], residual: bool):
        self.group, self.full, self.residual = group, full, residual
        self.assembled = None

    def _parts(self, deep_h, shallow_out):
        per_row = _hidden_per_row(shallow_out, sum(r.rows for r in self.group))
        parts, at, at_full = [], 0, 0
        for r, full in zip(self.group, self.full):
            n = r.rows * per_row
            mine = shallow_out[at : at + n]
            if full:
                h = deep_h[at_full : at_full + n]
                if r.deep is not None:
                    r.deep.store(r.ws, h, mine)
                at_full += n
            else:
                h = r.deep.restore(r.ws, mine)
            parts.append(h)
            at += n
        return parts

    def store(self, ws, h, shallow_out) -> None:
        """``h``: the full rows only, in request order; ``shallow_out``: every row."""
        parts = self._parts(h, shallow_out)
        self.assembled = h if all(self.full) else torch.cat(parts)

    def restore(self, ws, shallow_out) -> torch.Tensor:
        return torch.cat(self._parts(None, shallow_out))


class _RowSplitStack:
    """The stack as ``run_units`` sees it on a mixed step: units ``shallow..num_units-shallow-1``
    (the deep units) run on the full rows only, with their own context; the boundary unit starts
    from the boundary's assembled rows. Counts the rows the deep units ran on."""

    def __init__(self, stack, shallow: int, rows: int, full_index: torch.Tensor, full_ctx, boundary: _RowBoundary):
        self.stack, self.shallow, self.num_units, self.rows = stack, shallow, stack.num_units, rows
        self.full_index, self.full_ctx, self.boundary = full_index, full_ctx, boundary
        self.hidden_index = full_index
        self.deep_rows = 0

    def _deep(self, i: int) -> bool:
        return self.shallow <= i < self.num_units - self.shallow

    def skip_partner(self, i: int):
        return self.stack.skip_partner(i)

    def run_block(self, i, h, ctx, skip):
        if i == self.num_units - self.shallow:
            h = self.boundary.assembled
        elif self._deep(i):
            if i == self.shallow:
                self.hidden_index = _expand(self.full_index, _hidden_per_row(h, self.rows))
                h = h.index_select(0, self.hidden_index)
                self.deep_rows = int(self.full_index.numel())
            j = self.stack.skip_partner(i)
            if skip is not None and j is not None and not self._deep(j):
                skip = skip.index_select(0, self.hidden_index)
            return self.stack.run_block(i, h, self.full_ctx, skip)
        return self.stack.run_block(i, h, ctx, skip)


class BatchedSampler:
    """In-flight sampling requests of one model, advanced together one step at a time.

    ``device`` / ``dtype``: where and in what the model runs (default: the model's own; the model is
    moved in place once). ``add`` takes a request with ``sample()``'s arguments and returns its id;
    ``cancel`` removes one; ``step()`` advances every in-flight request by one step and returns a
    ``StepReport`` whose ``finished`` holds the requests that completed. A step that raises changes
    no request (sampler state, schedule and deep history are written only after every call of the
    step completed), so the step can be retried or the failing request cancelled.

    Each request's result equals ``sample(model, ..., seed=seed)`` of that request alone (see the
    module docstring for where this is bit-identical)."""

    def __init__(self, model, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.model = model
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._requests)

    @property
    def in_flight(self) -> list[int]:
        """Ids of the requests not finished yet, in arrival order."""
        return list(self._requests)

    @torch.no_grad()
    def add(self, conditioning, image_size: int | None = None, steps: int = 250, method: str = "ddpm",
            cfg_scale: float = 4.0, cache=None, seed: int = 0, guide_all_channels: bool = False,
            eta: float = 0.0) -> int:  # fmt: skip
        """Queue a request (arguments as ``sample()``'s); it joins at the next ``step()``. Returns its
        id. ValueError/TypeError naming the problem before any work."""
        request = prepare_request(self.model, conditioning, image_size, steps, method, cfg_scale, cache, self.dtype,
                                  guide_all_channels, eta)  # fmt: skip
        if request.cache is not None:
            request.cache.check_units(request.stack.num_units, skip_partners(request.stack))
        cond = request.cond
        if request.cfg_scale > 1:
            cond = cond.cat(request.stack.null_condition(cond))
        x, trajectory = request.start(self.model, seed, self.device)
        cond = cond.to(self.device)
        probe = torch.empty((cond.batch, *request.latent), dtype=self.dtype, device=self.device)
        t = torch.full((cond.batch,), trajectory.timesteps[0], dtype=torch.long, device=self.device)
        request.stack.check_inputs(probe, t, cond)
        request_id = next(self._ids)
        self._requests[request_id] = _Request(request_id, request, x, trajectory, cond, self.device)
        return request_id

    def cancel(self, request_id: int) -> None:
        """Remove a request (it leaves before the next step). KeyError for an unknown id."""
        del self._requests[request_id]

    @staticmethod
    def _call_class(r: _Request) -> tuple:
        cond = r.cond
        tensors = tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in sorted(cond.items()))
        return (r.request.latent, tensors, tuple((k, _identity(v)) for k, v in sorted(cond.static.items())))

    def _groups(self) -> dict[tuple, list[_Request]]:
        """{(shallow_blocks or None, call class): requests in arrival order}. An uncached request runs
        every unit at every step, so it joins a cached call of its class (as a full row that stores
        nothing) when there is one."""
        groups: dict[tuple, list[_Request]] = {}
        uncached = []
        for r in self._requests.values():
            if r.request.cache is None:
                uncached.append(r)
            else:
                groups.setdefault((int(r.request.cache.shallow_blocks), self._call_class(r)), []).append(r)
        for r in uncached:
            cls = self._call_class(r)
            key = next((k for k in groups if k[1] == cls), (None, cls))
            groups.setdefault(key, []).append(r)
        return groups

    @torch.no_grad()
    def step(self) -> StepReport:
        """One denoising step of every in-flight request; see the class docstring."""
        groups = self._groups()
        outcome, rows, full_rows, deep_rows = {}, 0, 0, 0
        try:
            for (shallow, *_), group in groups.items():
                plans = [r.plan() for r in group]
                got = self._run_group(group, plans, shallow)
                outcome.update(zip((r.id for r in group), zip(got[0], plans)))
                rows += sum(r.rows for r in group)
                full_rows += sum(r.rows for r, p in zip(group, plans) if p is None or p.full)
                deep_rows += got[1]
        except BaseException:
            for r in self._requests.values():
                if r.deep is not None:
                    r.deep.discard()
            raise
        finished = []
        for request_id, (x, plan) in outcome.items():
            r = self._requests[request_id]
            r.x = x
            if plan is not None:
                r.deep.commit()
                r.cursor.commit(plan, r.timestep)
            r.counts[0 if plan is None or plan.full else 1] += 1
            r.k += 1
            if r.k == len(r.trajectory.timesteps):
                del self._requests[request_id]
                finished.append(self._result(r))
        return StepReport(len(outcome), len(groups), rows, full_rows, deep_rows, finished)

    def drain(self) -> list[BatchedResult]:
        """Step until no request is in flight; the results in finishing order."""
        done = []
        while self._requests:
            done += self.step().finished
        return done

    def _run_group(self, group: list[_Request], plans: list, shallow: int | None):
        """One model call for ``group``: (the next x of each request, the rows the deep units ran on)."""
        stack = group[0].request.stack
        partners = skip_partners(stack)
        model_in = torch.cat([r.x.to(self.dtype).repeat(r.rows // r.x.shape[0], *[1] * (r.x.dim() - 1)) for r in group])
        t = torch.cat([torch.full((r.rows,), r.timestep, dtype=torch.long, device=self.device) for r in group])
        cond = functools.reduce(Condition.cat, (r.cond for r in group))
        h, ctx = stack.embed(model_in, t, cond)
        if shallow is None:
            h, deep_rows = run_units(stack, partners, h, ctx), model_in.shape[0]
        else:
            full = [p is None or p.full for p in plans]
            for r, p in zip(group, plans):
                if p is None:  # an uncached request in a cached call
                    continue
                r.deep.discard()
                r.deep.slot.fill_(max(p.slot, 0))
                r.deep.weights.copy_(torch.tensor(p.weights, dtype=torch.float32))
            boundary = _RowBoundary(group, full, residual=not partners)
            if all(full) or not any(full):
                h = run_units(stack, partners, h, ctx, None, shallow, all(full), boundary)
                deep_rows = model_in.shape[0] if all(full) else 0
            else:
                index = torch.cat([torch.arange(o, o + r.rows) for r, o, f in zip(group, _offsets(group), full) if f])
                index = index.to(self.device)
                _, full_ctx = stack.embed(model_in.index_select(0, index), t.index_select(0, index), _rows(cond, index))
                split = _RowSplitStack(stack, shallow, model_in.shape[0], index, full_ctx, boundary)
                h = run_units(split, partners, h, ctx, None, shallow, True, boundary)
                deep_rows = split.deep_rows
        out = stack.finish(h, ctx)
        xs = []
        for r, o in zip(group, _offsets(group)):
            coef = r.coef[r.k]
            noise = r.noise[r.k] if r.noise is not None else None  # read by stochastic samplers only
            model_output = r.trajectory.model_output(out[o : o + r.rows], coef)
            xs.append(r.trajectory.update(r.x, model_output, coef, noise))
        return xs, deep_rows

    def _result(self, r: _Request) -> BatchedResult:
        request, cache = r.request, r.request.cache
        info = SampleInfo(request.diffusion.method, request.diffusion.num_steps, r.counts[0], r.counts[1],
                          time.perf_counter() - r.started, cache, int(cache.forecast) if cache is not None else 0)  # fmt: skip
        return BatchedResult(r.id, r.x, info)


def _identity(value):
    """A static condition value as a call-class key: tensors by identity (a call's rows share the
    very tensor), tuples and lists element by element, host values by value."""
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value))
    if isinstance(value, (tuple, list)):
        return tuple(_identity(v) for v in value)
    return value


def _offsets(group: list[_Request]) -> list[int]:
    return list(itertools.accumulate((r.rows for r in group), initial=0))[:-1]
