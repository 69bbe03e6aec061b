"""``sample()``: class-conditional sampling from a DiT / Skip-DiT on DiT's diffusion conventions."""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import torch

from ..cache import SkipCache
from ..cache.executor import executor_for, resolve_cuda_graphs
from .diffusion import GaussianDiffusion


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


def resolve_cache(cache: SkipCache | int | None, depth: int) -> SkipCache | None:
    """``None``/0: no cache; an int: that interval with the official defaults (shallow_blocks
    capped at depth/2 for small models); or a SkipCache."""
    if cache is None or cache is False or cache == 0:
        return None
    if isinstance(cache, SkipCache):
        return cache
    if isinstance(cache, int) and not isinstance(cache, bool):
        return SkipCache(interval=cache, shallow_blocks=min(SkipCache.shallow_blocks, depth // 2))
    raise ValueError(f"cache must be None, an interval (int) or a SkipCache, got {cache!r}")


def latent_size_for(model, image_size: int | None) -> int:
    """Latent side for an image side: DiT's VAE downsamples 4-channel latents 8x; pixel models 1x."""
    if image_size is None:
        return model.input_size
    factor = 8 if model.in_channels == 4 else 1
    if image_size % factor or image_size // factor != model.input_size:
        raise ValueError(
            f"image_size {image_size} gives latents of side {image_size / factor:g}, but the model's "
            f"input_size is {model.input_size} (image_size {model.input_size * factor})"
        )
    return image_size // factor


def _labels_tensor(model, class_labels) -> torch.Tensor:
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 0:
        raise ValueError("class_labels is empty")
    if int(labels.min()) < 0 or int(labels.max()) >= model.num_classes:
        raise ValueError(
            f"class labels must be in 0..{model.num_classes - 1}, got min {int(labels.min())} max {int(labels.max())}"
        )
    return labels


@torch.no_grad()
def sample(
    model,
    class_labels: Sequence[int] | torch.Tensor,
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
    executor=None,
):
    """Sample latents for ``class_labels``.

    ``steps`` respaces DiT's 1000-step process (DDPM "250" as in DiT's sample.py, or DDIM with
    ``eta``); ``cfg_scale > 1`` uses classifier-free guidance through ``forward_with_cfg``;
    ``cache`` turns on Skip-Cache for this run only (an interval, or a ``SkipCache``). Noise comes
    from a CPU generator seeded with ``seed``, so a seed gives the same samples on every device.
    The model is moved to ``device`` / ``dtype`` in place when they are given. Returns the latents
    (N, C, H, W) in float32, and a ``SampleInfo`` too with ``return_info=True``.

    ``cuda_graphs``: ``"auto"`` (default) runs the trajectory through the cache-aware executor as
    captured CUDA graphs (one full-step and one cached-step graph per input signature, kept for later
    calls; ``cache.executor.executor_for(model).release()`` frees them) when sampling on a CUDA
    device, and the eager module loop elsewhere; ``True`` insists (an error without CUDA); ``False``
    is always eager. ``executor``: a ``SkipStackExecutor`` of this model to run through (eagerly
    unless graphs are on; its buffers persist across calls).
    """
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    dtype = dtype or param.dtype
    model.to(device=device, dtype=dtype)
    was_training = model.training
    model.eval()

    labels = _labels_tensor(model, class_labels)
    n = labels.numel()
    side = latent_size_for(model, image_size)
    use_cfg = cfg_scale > 1.0
    if use_cfg and not model.y_embedder.has_null_class:
        raise ValueError("classifier-free guidance needs a model trained with class dropout (a null class)")
    diffusion = GaussianDiffusion.create(steps, method=method, learn_sigma=model.learn_sigma, eta=eta)
    cache = resolve_cache(cache, model.depth)
    if cache is not None and cache.forecast == "auto":
        from ..cache.forecast import resolve_forecast

        cache = cache.with_forecast(resolve_forecast("auto", stochastic=diffusion.is_stochastic))

    use_graphs = resolve_cuda_graphs(cuda_graphs, device)
    run_cache = cache if cache is not None else (model.skip_cache.config if model.skip_cache is not None else None)
    if executor is not None and executor.stack is not model:
        raise ValueError("executor belongs to another model")

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.in_channels, side, side, generator=generator).to(device)
    y = labels.to(device)
    if use_cfg:
        y = torch.cat([y, torch.full_like(y, model.num_classes)])

    if use_graphs or executor is not None:
        return _sample_with_executor(
            model, executor, diffusion, x, y, dtype, run_cache, cfg_scale, guide_all_channels, generator,
            use_graphs, progress, return_info, was_training,
        )

    previous_cache = model.skip_cache
    if cache is not None:
        model.enable_skip_cache(cache)
    state = model.skip_cache
    if state is not None:
        state.reset()
        start_full, start_cached = state.full_steps, state.cached_steps

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=diffusion.num_steps, desc=f"{diffusion.method} sampling", unit="step")
    started = time.perf_counter()
    try:
        for i, t in zip(range(diffusion.num_steps - 1, -1, -1), diffusion.timesteps):
            model_in = torch.cat([x, x]) if use_cfg else x
            t_batch = torch.full((model_in.shape[0],), int(t), device=device, dtype=torch.long)
            if use_cfg:
                out = model.forward_with_cfg(
                    model_in.to(dtype), t_batch, y, cfg_scale, guide_all_channels=guide_all_channels
                )[:n]
            else:
                out = model(model_in.to(dtype), t_batch, y)
            noise = None
            if diffusion.is_stochastic:
                noise = torch.randn(x.shape, generator=generator).to(device)
            x = diffusion.step(out.float(), x, i, noise)
            if bar is not None:
                bar.update(1)
                if state is not None:
                    bar.set_postfix(full=state.full_steps - start_full, cached=state.cached_steps - start_cached)
    finally:
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - started
        full = state.full_steps - start_full if state is not None else diffusion.num_steps
        cached = state.cached_steps - start_cached if state is not None else 0
        if cache is not None:
            model._skip_cache = previous_cache
        model.train(was_training)

    if return_info:
        forecast = int(cache.forecast) if cache is not None else 0
        return x, SampleInfo(diffusion.method, diffusion.num_steps, full, cached, seconds, cache, forecast)
    return x


def _sample_with_executor(
    model, executor, diffusion, x, y, dtype, cache, cfg_scale, guide_all_channels, generator, use_graphs,
    progress, return_info, was_training,
):
    executor = executor if executor is not None else executor_for(model)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=diffusion.num_steps, desc=f"{diffusion.method} sampling", unit="step")
    counts = [0, 0]

    def advance(k: int, full: bool) -> None:
        counts[0 if full else 1] += 1
        if bar is not None:
            bar.update(1)
            if cache is not None:
                bar.set_postfix(full=counts[0], cached=counts[1])

    started = time.perf_counter()
    try:
        x, _ = executor.run(
            diffusion, x, y, dtype, cache=cache, cfg_scale=cfg_scale, guide_all_channels=guide_all_channels,
            generator=generator, graphs=use_graphs, callback=advance,
        )
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
    finally:
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - started
        model.train(was_training)
    if return_info:
        return x, SampleInfo(diffusion.method, diffusion.num_steps, counts[0], counts[1], seconds, cache,
                             int(cache.forecast) if cache is not None else 0)
    return x
