"""``sample()``: sampling from any skip stack (DiT, SkipDiT, registered adapters) on DiT's diffusion
conventions, one request per call, through the cache-aware executor."""

from __future__ import annotations

import dataclasses
import math
import numbers
import time

import torch

from ..cache import Condition, SkipCache, as_skip_stack
from .diffusion import GaussianDiffusion
from .executor import SkipStackExecutor, executor_for, resolve_cuda_graphs
from .trajectory import SamplerTrajectory


@dataclasses.dataclass
class SampleInfo:
    """What a sampling run did: steps, how many ran every block, wall time."""

    method: str
    steps: int
    full_steps: int
    cached_steps: int
    seconds: float
    cache: SkipCache | None
    forecast: int = 0  # the Skip-Cache forecast order used ("auto" resolved from the sampler)


def resolve_cache(cache: SkipCache | int | str | None, num_units: int) -> SkipCache | None:
    """``None``/0: no cache; an int: that interval with the official defaults (shallow_blocks
    capped at num_units/2 for small models); a preset name (``SkipCache.preset``); or a SkipCache."""
    if cache is None or cache is False or (isinstance(cache, int) and not isinstance(cache, bool) and cache == 0):
        return None
    if isinstance(cache, SkipCache):
        return cache
    if isinstance(cache, str):
        return SkipCache.preset(cache)
    if isinstance(cache, int) and not isinstance(cache, bool):
        return SkipCache(interval=cache, shallow_blocks=min(SkipCache.shallow_blocks, num_units // 2))
    raise ValueError(f"cache must be None, an interval (int), a preset name or a SkipCache, got {cache!r}")


def resolve_device(device) -> torch.device:
    """``device`` as a torch.device that exists here; ValueError naming the available ones."""
    available = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; available: {', '.join(available)}") from None
    if resolved.type == "cuda":
        index = resolved.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} is not available here; available: {', '.join(available)}")
    elif resolved.type not in ("cpu", "meta"):
        raise ValueError(f"device {device!r} is not supported; available: {', '.join(available)}")
    return resolved


def check_cfg_scale(cfg_scale) -> float:
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, numbers.Real) or not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite number >= 1 (1: no guidance), got {cfg_scale!r}")
    if cfg_scale < 1:
        raise ValueError(f"cfg_scale must be >= 1 (1: no guidance, the DiT paper uses 1.5-4), got {cfg_scale}")
    return float(cfg_scale)


@torch.no_grad()
def sample(
    model,
    class_labels,
    image_size: int | None = None,
    steps: int = 250,
    method: str = "ddpm",
    cfg_scale: float = 4.0,
    cache: SkipCache | int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    guide_all_channels: bool = False,
    eta: float = 0.0,
    return_info: bool = False,
    cuda_graphs: bool | str = "auto",
    executor: SkipStackExecutor | None = None,
):
    """Sample latents for ``class_labels`` (N integer labels; for other families, whatever the
    model's adapter takes as conditioning, e.g. a dict of text embeddings).

    ``steps`` respaces DiT's 1000-step process (DDPM "250" as in DiT's sample.py, or DDIM with
    ``eta``); ``cfg_scale > 1`` uses classifier-free guidance (the unconditional branch from the
    model's null condition; ``guide_all_channels`` as in ``forward_with_cfg``); ``cache`` turns on
    Skip-Cache for this call (an interval, or a ``SkipCache``; ``forecast="auto"`` resolves to the
    forecast for deterministic samplers and to reuse for stochastic ones). Noise comes from a CPU
    generator seeded with ``seed``, so a seed gives the same samples on every device. The model is
    moved to ``device`` / ``dtype`` in place when they differ from its own. Returns the latents
    (N, *latent shape) in float32, and a ``SampleInfo`` too with ``return_info=True``.

    Each call is one request: its cache state lives in the call, never on the model, so calls on
    one model may run concurrently from several threads (each takes its own executor buffers); a
    step-by-step session of the same model (``enable_skip_cache``) does not affect it.

    The trajectory runs through the cache-aware executor: eagerly, or with ``cuda_graphs`` as
    captured CUDA graphs (``"auto"``: on a CUDA device; ``True`` insists; ``False``: never), kept
    for later calls until ``sampling.executor_for(model).release()``. ``executor``: a
    ``SkipStackExecutor`` of this model to run through instead of the model's shared one.
    ValueError/TypeError naming the problem, before any work, for bad arguments.
    """
    request = prepare_request(model, class_labels, image_size, steps, method, cfg_scale, cache, dtype,
                              guide_all_channels, eta)  # fmt: skip
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    use_graphs = resolve_cuda_graphs(cuda_graphs, device)
    if executor is not None and executor.model is not model:
        raise ValueError("executor belongs to another model")
    cond = request.cond
    if request.cfg_scale > 1:
        cond = cond.cat(request.stack.null_condition(cond))
    x, trajectory = request.start(model, seed, device)
    cond = cond.to(device)
    diffusion, cache, dtype = request.diffusion, request.cache, request.dtype
    executor = executor if executor is not None else executor_for(model)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=diffusion.num_steps, desc=f"{diffusion.method} sampling", unit="step")
    counts = [0, 0]

    def advance(k: int, planned) -> None:
        counts[0 if planned is None or planned.full else 1] += 1
        if bar is not None:
            bar.update(1)
            if cache is not None:
                bar.set_postfix(full=counts[0], cached=counts[1])

    started = time.perf_counter()
    try:
        x, _ = executor.run(trajectory, x, cond, dtype, cache=cache, graphs=use_graphs, callback=advance)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    if return_info:
        forecast = int(cache.forecast) if cache is not None else 0
        return x, SampleInfo(diffusion.method, diffusion.num_steps, counts[0], counts[1], seconds, cache, forecast)
    return x


@dataclasses.dataclass
class SamplingRequest:
    """One sampling request, checked and resolved before any work (``prepare_request``): the stack,
    the condition of its N samples (without the unconditional half), the latent shape of one
    sample, the diffusion, the Skip-Cache resolved for the sampler, the dtype, the guidance."""

    stack: object
    cond: Condition
    latent: tuple[int, ...]
    diffusion: GaussianDiffusion
    cache: SkipCache | None
    dtype: torch.dtype
    cfg_scale: float
    guided: int

    @property
    def num_samples(self) -> int:
        return self.cond.batch

    def start(self, model, seed: int, device: torch.device) -> tuple[torch.Tensor, SamplerTrajectory]:
        """Move ``model`` to the device and dtype (in place, when they differ), and draw x_T from a CPU
        generator seeded with ``seed`` (then the sampler's noise, in that order): (x_T on ``device``,
        the trajectory for the executor)."""
        param = next(model.parameters())
        if param.device != device or param.dtype != self.dtype:
            model.to(device=device, dtype=self.dtype)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((self.num_samples, *self.latent), generator=generator).to(device)
        trajectory = SamplerTrajectory(self.diffusion, self.cfg_scale, self.guided, self.stack.channel_dim, generator)
        return x, trajectory


def prepare_request(
    model, conditioning, image_size=None, steps=250, method="ddpm", cfg_scale=4.0, cache=None, dtype=None,
    guide_all_channels=False, eta=0.0,
) -> SamplingRequest:  # fmt: skip
    """What ``sample()`` checks and resolves before any work (arguments as there); ValueError /
    TypeError naming the problem."""
    stack = as_skip_stack(model)
    dtype = dtype or next(model.parameters()).dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    cfg_scale = check_cfg_scale(cfg_scale)
    cond = stack.condition(conditioning)
    latent = tuple(stack.latent_shape if image_size is None else stack.latent_shape_for(image_size))
    diffusion = GaussianDiffusion.create(steps, method=method, learn_sigma=stack.learn_sigma, eta=eta)
    cache = resolve_cache(cache, stack.num_units)
    if cache is not None:
        cache = cache.for_sampler(diffusion.is_stochastic)
    if cfg_scale > 1:
        stack.null_condition(cond)  # ValueError now for a model without an unconditional branch
    return SamplingRequest(stack, cond, latent, diffusion, cache, dtype, cfg_scale,
                           stack.guided_channels(guide_all_channels))  # fmt: skip


def latent_size_for(model, image_size: int | None) -> int:
    """The latent side for an image side (the model's own when None)."""
    stack = as_skip_stack(model)
    shape = stack.latent_shape if image_size is None else stack.latent_shape_for(image_size)
    return shape[-1]
