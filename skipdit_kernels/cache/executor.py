"""The cache-aware executor: a whole sampling trajectory from persistent buffers, optionally replayed
as two captured CUDA graphs (full step, cached step) per input signature.

For one ``Signature`` (samples, latent shape, dtype, device, CFG on/off) the executor allocates once
(``StepBuffers``): the sampler state ``x`` (fp32), the model input, the timestep and label tensors,
a small coefficient tensor, the noise, the hidden state, the skip stack, the deep-feature cache, the
model output and the guided output. A step writes into them in place (``copy_`` / ``out=``; an op
with no ``out=`` form has its result copied into the buffer: under a CUDA graph that temporary lives
in the graph's private memory pool, so replay allocates nothing). One step is

    model_in <- x (twice under CFG) -> embed -> blocks (all, or the outer ``shallow_blocks`` on each
    side with the deep cache in between) -> final layer -> CFG -> sampler update, written back to x

so the host only fills ``t``, the per-step coefficients and the noise, and picks the graph. Which
steps are full is decided on the host, before the trajectory, by ``SkipCache.plan`` (the schedule the
module-level ``SkipCacheState`` follows step by step), so there is no device-to-host sync per step.

On CPU (or with ``graphs=False``) the same step function runs eagerly; it performs the ops of
``forward_stack`` + ``forward_with_cfg`` + ``GaussianDiffusion.step`` in the same order, so its
trajectory is bit-identical to ``sample()``'s eager loop (tested). The DDPM/DDIM update reads its
coefficients from the static tensor ``coef`` (layout ``COEF_*`` below), filled per step from a
table computed on the host in float64 with the same formulas as ``GaussianDiffusion``; DDPM noise
comes from the seeded CPU generator (the draws of the eager loop, in its order) and is copied in.

Forecast Skip-Cache (``SkipCache(forecast=k)``): the deep cache becomes ``history``, k + 1 slots
(zeroed per trajectory). A full step writes its deep state into slot ``b.slot`` (a static long tensor
the host fills: ``history.index_copy_``); a cached step computes ``ops.forecast_blend(slots,
weights)`` with the weights in k + 1 extra columns of the coefficient row (``COEF_FORECAST``), filled
on the host by replaying the plan through ``forecast.lagrange_weights`` (a slot not in the current
history gets weight 0), so one graph serves every step. Only ``_store_deep`` / ``_restore_deep``
differ from reuse. Numerically the blend takes the weights from a tensor (fp32 accumulation), where
the module path uses host floats (``lerp`` for two points): equal to float rounding, not bitwise.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, NamedTuple

import numpy as np
import torch

from .. import ops
from .forecast import MAX_FORECAST_ORDER, lagrange_weights
from .schedule import SkipCache

# Columns of the per-step coefficient table (float32 on the device; computed in float64 on the host).
COEF_RECIP = 0  # sqrt(1 / acp_i)
COEF_RECIPM1 = 1  # sqrt(1 / acp_i - 1)
COEF_POST1 = 2  # posterior mean coefficient of x_0
COEF_POST2 = 3  # posterior mean coefficient of x_t
COEF_MIN_LOG = 4  # learned-range variance: log posterior variance (clipped)
COEF_MAX_LOG = 5  # learned-range variance: log beta
COEF_STD = 6  # fixed variance: exp(0.5 * log variance)
COEF_SQRT_ACP_PREV = 7  # DDIM
COEF_DIRECTION = 8  # DDIM: sqrt(1 - acp_prev - sigma^2)
COEF_SIGMA = 9  # DDIM noise scale
COEF_CFG = 10  # classifier-free guidance scale
COEF_FORECAST = 11  # Forecast Skip-Cache: the weights of the history slots (MAX_FORECAST_ORDER + 1)
NUM_COEF = COEF_FORECAST + MAX_FORECAST_ORDER + 1


class Signature(NamedTuple):
    """What the buffers (and graphs) of one executor slot are shaped for."""

    batch: int  # samples, before CFG doubles the model batch
    channels: int
    height: int
    width: int
    dtype: torch.dtype
    device: torch.device
    cfg: bool

    @property
    def model_batch(self) -> int:
        return 2 * self.batch if self.cfg else self.batch


class Program(NamedTuple):
    """What a step computes besides its signature's shapes; a captured graph belongs to one."""

    shallow: int | None  # Skip-Cache shallow_blocks, None without a cache
    residual: bool  # cache the middle's residual (stacks without long skips)
    method: str  # "ddpm" | "ddim"
    learn_sigma: bool
    noisy: bool  # the update consumes noise
    guided: int  # channels guided under CFG
    backend: str  # ops backend the graph was captured under
    forecast: int = 0  # Forecast Skip-Cache order (0: reuse the stored deep state)


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


def sampler_coefficients(diffusion, cfg_scale: float = 1.0) -> np.ndarray:
    """(num_steps, NUM_COEF) float64, row i for step index i, with GaussianDiffusion's formulas."""
    n = diffusion.num_steps
    table = np.zeros((n, NUM_COEF), dtype=np.float64)
    eta = float(getattr(diffusion, "eta", 0.0))
    table[:, COEF_FORECAST] = 1.0
    for i in range(n):
        acp, acp_prev = float(diffusion.alphas_cumprod[i]), float(diffusion.alphas_cumprod_prev[i])
        sigma = eta * math.sqrt((1 - acp_prev) / (1 - acp)) * math.sqrt(1 - acp / acp_prev)
        table[i] = [
            diffusion.sqrt_recip_alphas_cumprod[i],
            diffusion.sqrt_recipm1_alphas_cumprod[i],
            diffusion.posterior_mean_coef1[i],
            diffusion.posterior_mean_coef2[i],
            diffusion.posterior_log_variance_clipped[i],
            diffusion.log_betas[i],
            math.exp(0.5 * float(diffusion.fixed_large_log_variance[i])),
            math.sqrt(acp_prev),
            math.sqrt(max(0.0, 1 - acp_prev - sigma**2)),
            sigma,
            float(cfg_scale),
        ] + [1.0] + [0.0] * MAX_FORECAST_ORDER
    return table


def sampler_update(
    program: Program, x: torch.Tensor, model_output: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """x_{i-1} from fp32 ``x``, ``model_output`` and the coefficient row ``coef`` (a device tensor).

    The ops of ``GaussianDiffusion.ddpm_step`` / ``ddim_step`` in their order, with 0-dim views of
    ``coef`` where those take python floats (equal to the float32 rounding the scalar gets there).
    The last step (i == 0) gets zero noise instead of a branch, so one graph serves every step."""
    channels = x.shape[1]
    eps = model_output[:, :channels]
    pred_xstart = coef[COEF_RECIP] * x - coef[COEF_RECIPM1] * eps
    if program.method == "ddpm":
        mean = coef[COEF_POST1] * pred_xstart + coef[COEF_POST2] * x
        if program.learn_sigma:
            frac = (model_output[:, channels:] + 1) / 2
            log_var = frac * coef[COEF_MAX_LOG] + (1 - frac) * coef[COEF_MIN_LOG]
            std = torch.exp(0.5 * log_var)
        else:
            std = coef[COEF_STD]
        return mean + std * noise
    eps = (coef[COEF_RECIP] * x - pred_xstart) / coef[COEF_RECIPM1]
    sample = pred_xstart * coef[COEF_SQRT_ACP_PREV] + coef[COEF_DIRECTION] * eps
    if program.noisy:
        sample = sample + coef[COEF_SIGMA] * noise
    return sample


class _DiTEmbed:
    """DiT's ``embed`` without its per-call host checks and with the sinusoid frequencies on the
    device once (``TimestepEmbedder`` builds them on the CPU and copies them over each call: a
    synchronising copy that cannot be captured). Same ops otherwise; tested equal to ``stack.embed``.
    Holds no reference to the stack (the executor's registry must not keep a model alive)."""

    def __init__(self):
        self._freqs: dict[torch.device, torch.Tensor] = {}

    def prepare(self, stack, device: torch.device) -> None:
        if device not in self._freqs:
            dim = stack.t_embedder.frequency_embedding_size
            half, max_period = dim // 2, 10000
            exponent = torch.arange(half, dtype=torch.float32) * (-math.log(max_period) / half)
            self._freqs[device] = torch.exp(exponent).to(device)

    def release(self) -> None:
        self._freqs.clear()

    def __call__(self, stack, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = stack.x_embedder(x) + stack.pos_embed
        angles = t[:, None].float() * self._freqs[x.device][None]
        t_freq = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        if stack.t_embedder.frequency_embedding_size % 2:
            t_freq = torch.nn.functional.pad(t_freq, (0, 1))
        t_emb = stack.t_embedder.mlp(t_freq.to(stack.t_embedder.mlp[0].weight.dtype))
        c = t_emb + stack.y_embedder(y, False)
        return h, c.to(h.dtype)


class _StackEmbed:
    def __init__(self, method: str):
        self.method = method

    def prepare(self, stack, device) -> None:
        pass

    def release(self) -> None:
        pass

    def __call__(self, stack, x, t, y):
        return getattr(stack, self.method)(x, t, y)


def _embedder(stack):
    """A stack's own capture-safe ``graph_embed`` if it has one; DiT's embed rebuilt capture-safe;
    else ``stack.embed`` (which must then be capturable for the graph path)."""
    if hasattr(stack, "graph_embed"):
        return _StackEmbed("graph_embed")
    if all(hasattr(stack, name) for name in ("x_embedder", "t_embedder", "y_embedder", "pos_embed")):
        return _DiTEmbed()
    return _StackEmbed("embed")


class StepBuffers:
    """The persistent tensors of one signature. Shapes known up front are allocated here; those that
    depend on the stack (hidden state, skip stack, deep cache, output) on the first step that makes
    them (a warm-up step on the graph path), and reused by every later step."""

    def __init__(self, signature: Signature):
        s = signature
        self.signature = s
        dev = s.device
        self.x = torch.zeros(s.batch, s.channels, s.height, s.width, device=dev)  # sampler state, fp32
        self.model_in = torch.zeros(s.model_batch, s.channels, s.height, s.width, device=dev, dtype=s.dtype)
        self.t = torch.zeros(s.model_batch, dtype=torch.long, device=dev)
        self.y = torch.zeros(s.model_batch, dtype=torch.long, device=dev)
        self.coef = torch.zeros(NUM_COEF, device=dev)
        self.noise = torch.zeros(s.batch, s.channels, s.height, s.width, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)  # forecast: the history slot a full step writes
        self.lazy: dict[str, torch.Tensor] = {}

    def hold(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Copy ``value`` into the buffer ``name`` (allocated like it the first time); return the buffer."""
        buf = self.lazy.get(name)
        if buf is None:
            buf = self.lazy[name] = torch.empty(value.shape, dtype=value.dtype, device=value.device)
        elif buf.shape != value.shape or buf.dtype != value.dtype:
            raise RuntimeError(
                f"executor buffer {name!r} is {tuple(buf.shape)} {buf.dtype}, the step produced "
                f"{tuple(value.shape)} {value.dtype}: the stack's shapes changed under one signature"
            )
        buf.copy_(value)
        return buf

    def like(self, name: str, shape, dtype, device, zero: bool = False) -> torch.Tensor:
        buf = self.lazy.get(name)
        if buf is None:
            buf = self.lazy[name] = (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=device)
        return buf

    def tensors(self) -> dict[str, torch.Tensor]:
        fixed = dict(x=self.x, model_in=self.model_in, t=self.t, y=self.y, coef=self.coef, noise=self.noise,
                     slot=self.slot)
        return {**fixed, **self.lazy}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


class _Graphs(NamedTuple):
    full: "torch.cuda.CUDAGraph"
    cached: "torch.cuda.CUDAGraph | None"
    pool: object


class SkipStackExecutor:
    """Runs sampling trajectories of one skip stack (``cache.SkipStack``: DiT, SkipDiT, adapters)
    from persistent per-signature buffers; ``run(..., graphs=True)`` replays captured CUDA graphs.

    ``run`` is what ``sample()`` calls; ``prepare`` / ``step`` expose one step for tests and
    benchmarks. Buffers and graphs stay until ``release()`` (all) or ``release(signature)``."""

    def __init__(self, stack, warmup: int = 2, _weak: bool = False):
        self._stack = weakref.ref(stack) if _weak else (lambda s=stack: s)
        self.warmup = int(warmup)
        self._embed = _embedder(stack)
        self._buffers: dict[Signature, StepBuffers] = {}
        self._graphs: dict[tuple[Signature, Program], _Graphs] = {}
        self.captures = 0  # how many graph pairs were captured (a test hook)

    @property
    def stack(self):
        stack = self._stack()
        if stack is None:
            raise RuntimeError("the executor's model was garbage-collected")
        return stack

    # -- signatures and buffers -----------------------------------------------------------------

    def signature(self, x: torch.Tensor, dtype: torch.dtype, cfg: bool) -> Signature:
        n, c, h, w = x.shape
        return Signature(n, c, h, w, dtype, torch.device(x.device), bool(cfg))

    def buffers(self, signature: Signature) -> StepBuffers:
        """The signature's buffers, allocated on first use."""
        b = self._buffers.get(signature)
        if b is None:
            b = self._buffers[signature] = StepBuffers(signature)
            self._embed.prepare(self.stack, signature.device)
        return b

    @property
    def signatures(self) -> list[Signature]:
        return list(self._buffers)

    def release(self, signature: Signature | None = None) -> None:
        """Drop the buffers and graphs of ``signature`` (all of them when None); their memory goes back
        to torch's allocator (``torch.cuda.empty_cache()`` returns it to the driver)."""
        if signature is None:
            self._buffers.clear()
            self._graphs.clear()
            self._embed.release()
            return
        self._buffers.pop(signature, None)
        for key in [k for k in self._graphs if k[0] == signature]:
            del self._graphs[key]

    def program(self, diffusion, cache: SkipCache | None, cfg: bool, guide_all_channels: bool, channels: int) -> Program:
        stack = self.stack
        if cache is not None:
            cache.check_depth(stack.depth)
            if cache.forecast == "auto":
                raise ValueError("resolve SkipCache(forecast='auto') for the sampler first (sample() does)")
        return Program(
            shallow=None if cache is None else int(cache.shallow_blocks),
            residual=not stack.long_skips,
            method=diffusion.method,
            learn_sigma=bool(diffusion.learn_sigma),
            noisy=bool(diffusion.is_stochastic),
            guided=(channels if guide_all_channels else 3) if cfg else 0,
            backend=ops.current_backend(),
            forecast=0 if cache is None else int(cache.forecast),
        )

    # -- one step -------------------------------------------------------------------------------

    def _store_deep(self, b: StepBuffers, program: Program, h: torch.Tensor, shallow_out: torch.Tensor) -> None:
        """Full step: remember what enters block depth - shallow (``SkipCacheState.store``)."""
        if program.residual:
            deep = torch.sub(h, shallow_out, out=b.like("deep", h.shape, h.dtype, h.device))
        else:
            deep = h if program.forecast else b.hold("deep", h)
        if program.forecast:
            history = b.like("history", (program.forecast + 1, *h.shape), h.dtype, h.device, zero=True)
            history.index_copy_(0, b.slot, deep.unsqueeze(0))

    def _restore_deep(self, b: StepBuffers, program: Program, shallow_out: torch.Tensor) -> torch.Tensor:
        """Cached step: what enters block depth - shallow instead of the middle's output."""
        if program.forecast:
            k = program.forecast + 1
            deep = ops.forecast_blend(list(b.lazy["history"].unbind(0)), b.coef[COEF_FORECAST : COEF_FORECAST + k])
        else:
            deep = b.lazy["deep"]
        if program.residual:
            return torch.add(shallow_out, deep, out=b.like("h", deep.shape, deep.dtype, deep.device))
        return deep

    @torch.no_grad()
    def step(self, b: StepBuffers, program: Program, full: bool) -> None:
        """One sampler step on ``b``: reads x, t, y, coef, noise; writes x_{i-1} into ``b.x``. This is
        the function captured as the full / cached graph."""
        stack, sig = self.stack, b.signature
        n = sig.batch
        if sig.cfg:
            b.model_in[:n].copy_(b.x)
            b.model_in[n:].copy_(b.x)
        else:
            b.model_in.copy_(b.x)
        h, c = self._embed(stack, b.model_in, b.t, b.y)

        depth, half = stack.depth, stack.depth // 2
        k = program.shallow
        blocks = range(depth) if (full or k is None) else [*range(k), *range(depth - k, depth)]
        shallow_out = h
        for i in blocks:
            if k is not None and i == depth - k:
                if full:
                    self._store_deep(b, program, h, shallow_out)
                else:
                    h = self._restore_deep(b, program, shallow_out)
            skip = b.lazy[f"skip{depth - 1 - i}"] if stack.long_skips and i >= half else None
            out = stack.run_block(i, h, c, skip)
            h = b.hold(f"skip{i}" if stack.long_skips and i < half else "h", out)
            if k is not None and program.residual and i == k - 1:
                shallow_out = b.hold("shallow", h)
        out = b.hold("out", stack.finish(h, c))

        if sig.cfg:
            g = program.guided
            mo = b.like("model_output", (n, *out.shape[1:]), torch.float32, out.device)
            diff = b.like("guided", (n, g, *out.shape[2:]), out.dtype, out.device)
            cond, uncond = out[:n, :g], out[n:, :g]
            torch.sub(cond, uncond, out=diff)
            torch.mul(diff, b.coef[COEF_CFG], out=diff)
            torch.add(uncond, diff, out=diff)
            mo[:, :g].copy_(diff)
            mo[:, g:].copy_(out[:n, g:])
        else:
            mo = b.hold("model_output", out.float())
        b.x.copy_(sampler_update(program, b.x, mo, b.coef, b.noise))

    # -- graphs ---------------------------------------------------------------------------------

    def graphs(self, b: StepBuffers, program: Program) -> _Graphs:
        """The captured (full, cached) pair for this signature and program; captured on first use,
        after ``warmup`` eager rounds on a side stream. The buffers' contents are clobbered. A graph
        reads the parameters' memory (in-place updates are seen) but also what was derived from them
        at capture (e.g. the skip fusion's folded weights): after changing weights, ``release()``."""
        key = (b.signature, program)
        if key in self._graphs:
            return self._graphs[key]
        device = b.signature.device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the signature is on {device}")
        # One eager round on the current stream first, so the lazily made buffers belong to it (the
        # stream they are replayed on), then warm-up rounds on a side stream, as torch's docs do.
        self.step(b, program, True)
        if program.shallow is not None:
            self.step(b, program, False)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(max(1, self.warmup)):
                self.step(b, program, True)
                if program.shallow is not None:
                    self.step(b, program, False)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        pool = torch.cuda.graph_pool_handle()
        full = torch.cuda.CUDAGraph()
        with torch.cuda.graph(full, pool=pool):
            self.step(b, program, True)
        cached = None
        if program.shallow is not None:
            cached = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cached, pool=pool):
                self.step(b, program, False)
        self._graphs[key] = _Graphs(full, cached, pool)
        self.captures += 1
        return self._graphs[key]

    # -- a trajectory ---------------------------------------------------------------------------

    @torch.no_grad()
    def run(
        self,
        diffusion,
        x: torch.Tensor,
        y: torch.Tensor,
        dtype: torch.dtype,
        cache: SkipCache | None = None,
        cfg_scale: float = 1.0,
        guide_all_channels: bool = False,
        generator: torch.Generator | None = None,
        graphs: bool = False,
        callback: Callable[[int, bool], None] | None = None,
    ) -> tuple[torch.Tensor, list[bool]]:
        """Sample from ``x`` (x_T: (n, C, H, W), on the target device) with labels ``y`` ((2n,) with the
        null labels under CFG, i.e. when ``cfg_scale > 1``). DDPM / stochastic DDIM noise is drawn
        from the CPU ``generator`` step by step, as ``sample()`` does. Returns (x_0 in float32, the
        plan: True for each full step)."""
        cfg = cfg_scale > 1.0
        sig = self.signature(x, dtype, cfg)
        program = self.program(diffusion, cache, cfg, guide_all_channels, sig.channels)
        steps = diffusion.num_steps
        timesteps = diffusion.timesteps
        plan = cache.plan(timesteps) if cache is not None else [True] * steps
        b = self.buffers(sig)

        # Per-trajectory tables (host-made, uploaded once; pinned so per-step copies are async).
        coef_rows = sampler_coefficients(diffusion, cfg_scale)[::-1].copy()  # row k: step k of the trajectory
        slot_table = torch.zeros(steps, 1, dtype=torch.long)
        if program.forecast:
            forecast_tables(cache, timesteps, coef_rows, slot_table)
        coef_table = torch.from_numpy(coef_rows).to(torch.float32)
        t_table = torch.tensor(timesteps, dtype=torch.long)[:, None].expand(steps, sig.model_batch).contiguous()
        noise_table = None
        if program.noisy:
            if generator is None:
                raise ValueError("a stochastic sampler needs a generator")
            draws = [torch.randn(tuple(x.shape), generator=generator) for _ in range(steps)]
            draws[-1].zero_()  # the last step (i == 0) takes no noise
            noise_table = torch.stack(draws)
        if sig.device.type == "cuda":
            coef_table, t_table, slot_table = coef_table.pin_memory(), t_table.pin_memory(), slot_table.pin_memory()
            noise_table = noise_table.pin_memory() if noise_table is not None else None

        check = getattr(self.stack, "_check_inputs", None)
        if check is not None:  # the model's input checks, once per trajectory
            check(b.model_in, t_table[0].to(sig.device), y)
        b.y.copy_(y)
        if graphs:
            b.t.copy_(t_table[0])
            b.coef.copy_(coef_table[0])
            captured = self.graphs(b, program)
        b.x.copy_(x)
        if "history" in b.lazy:
            b.lazy["history"].zero_()  # unwritten slots weigh 0; keep them finite
        for k in range(steps):
            b.t.copy_(t_table[k], non_blocking=True)
            b.coef.copy_(coef_table[k], non_blocking=True)
            if program.forecast:
                b.slot.copy_(slot_table[k], non_blocking=True)
            if noise_table is not None:
                b.noise.copy_(noise_table[k], non_blocking=True)
            if graphs:
                (captured.full if plan[k] else captured.cached).replay()
            else:
                self.step(b, program, plan[k])
            if callback is not None:
                callback(k, plan[k])
        return b.x.clone(), plan


def forecast_tables(cache: SkipCache, timesteps, coef_rows: np.ndarray, slot_table: torch.Tensor) -> None:
    """Replay ``cache``'s schedule on the host (as ``SkipCacheState`` + ``ForecastHistory`` run it) and
    write, per trajectory step k, the history slot a full step stores into (``slot_table[k]``) and the
    weights a cached step blends the slots with (``coef_rows[k, COEF_FORECAST:]``)."""
    slots = int(cache.forecast) + 1
    plan = cache.plan(timesteps)
    entries: list[tuple[int, int]] = []  # (step counter, slot), oldest first
    counter, next_slot = 0, 0
    for k, (t, full) in enumerate(zip(timesteps, plan)):
        weights = [0.0] * (MAX_FORECAST_ORDER + 1)
        if full:
            if len(entries) == slots:
                entries.pop(0)  # the oldest entry holds next_slot: the ring overwrites it
            entries.append((counter, next_slot))
            slot_table[k, 0] = next_slot
            next_slot = (next_slot + 1) % slots
            weights[0] = 1.0  # unused on a full step
        else:
            for (_, slot), w in zip(entries, lagrange_weights([s for s, _ in entries], counter)):
                weights[slot] = w
        coef_rows[k, COEF_FORECAST:] = weights
        counter += 1
        if float(t) <= cache.stop_t:
            counter, entries, next_slot = 0, [], 0


_EXECUTORS: "weakref.WeakKeyDictionary[object, SkipStackExecutor]" = weakref.WeakKeyDictionary()


def executor_for(model) -> SkipStackExecutor:
    """The executor ``sample()`` uses for ``model`` (one per model, kept while the model lives, so its
    captured graphs are reused across calls). ``executor_for(model).release()`` frees its memory."""
    ex = _EXECUTORS.get(model)
    if ex is None:
        ex = _EXECUTORS[model] = SkipStackExecutor(model, _weak=True)
    return ex
