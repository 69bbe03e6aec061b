"""Skip-Cache on LatteSkip through the generic schedule, executor and sample(): the (spatial,
temporal) pair is the unit; results equal an independent float64 reference of the official
``Latte_skip_cache`` rules (reference_latte.CachedReference)."""

import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.models import LatteSkip
from skipdit_kernels.sampling import GaussianDiffusion, sample

from . import reference_latte as ref
from .conftest import randomize

# 4 pairs (6 for shallow 2), 3 frames of 4x4 patches
CFG = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=8, num_heads=2, num_frames=3,
           num_classes=6, extras=2)  # fmt: skip


def c2v_cache(interval: int, **overrides) -> sk.SkipCache:
    """The release's class-to-video schedule: shallow 1, full while t >= 900, reset after t < 50
    (stop_t=49: SkipCache resets at t <= stop_t, the official code at t < 50; same for integer t)."""
    return sk.SkipCache(interval=interval, shallow_blocks=1, start_t=900, stop_t=49, **overrides)


@pytest.fixture(scope="module")
def model():
    return randomize(LatteSkip(**CFG), std=0.1)


class PairLog:
    """Records which pairs the model runs, per model call (one embed per step)."""

    def __init__(self, model):
        self.steps = []
        embed, run_block = model.embed, model.run_block

        def logged_embed(*args):
            self.steps.append([])
            return embed(*args)

        def logged_run_block(i, *args):
            self.steps[-1].append(i)
            return run_block(i, *args)

        self.model = model
        model.embed, model.run_block = logged_embed, logged_run_block

    def close(self):
        del self.model.embed, self.model.run_block


def video_step(diffusion, out, x, i):
    """DiT's update on (N, F, C, H, W): the diffusion keeps channels at dim 1."""
    return diffusion.step(out.transpose(1, 2), x.transpose(1, 2), i).transpose(1, 2)


def reference_sample(model, labels, steps, cfg_scale, cached, seed=0, null=None):
    diffusion = GaussianDiffusion.create(steps, method="ddim", learn_sigma=True)
    n = len(labels) if labels is not None else 2
    x = torch.randn((n, *model.latent_shape), generator=torch.Generator().manual_seed(seed))
    y = None if labels is None else torch.tensor(labels)
    for i, t in zip(range(steps - 1, -1, -1), diffusion.timesteps):
        if cfg_scale > 1:
            out = cached.step(torch.cat([x, x]), torch.full((2 * n,), t), torch.cat([y, torch.full_like(y, null)]))
            cond, uncond = out[:n], out[n:]
            g = uncond[:, :, :4] + cfg_scale * (cond[:, :, :4] - uncond[:, :, :4])
            out = torch.cat([g, cond[:, :, 4:]], 2)
        else:
            out = cached.step(x, torch.full((n,), t), y)
        x = video_step(diffusion, out, x, i)
    return x


@pytest.mark.parametrize("interval, forecast", [(2, 0), (3, 1)])
def test_sample_with_cache_and_cfg_matches_reference(model, interval, forecast):
    # DDIM-20 visits 950, 900, ..., 50, 0: full while t >= 900, the reset rule at the end.
    cache = c2v_cache(interval, forecast=forecast)
    log = PairLog(model)
    try:
        got, info = sample(model, [1, 4], steps=20, method="ddim", cfg_scale=4.0, cache=cache, progress=False,
                           return_info=True)  # fmt: skip
    finally:
        log.close()
    cached = ref.CachedReference(model.state_dict(), CFG, interval, shallow=1, forecast=forecast)
    expected = reference_sample(model, [1, 4], 20, 4.0, cached, null=6)
    assert got.shape == (2, 3, 4, 8, 8)
    assert log.steps == cached.history  # which pairs ran on which step
    assert info.cached_steps == sum(len(h) < 4 for h in cached.history) > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_unconditional_sample_with_cache_matches_reference():
    cfg = {**CFG, "extras": 1, "depth": 12}
    model = randomize(LatteSkip(**cfg), std=0.1)
    cache = sk.SkipCache(interval=3, shallow_blocks=2, start_t=900, stop_t=49)
    got = sample(model, 2, steps=10, method="ddim", cfg_scale=1.0, cache=cache, progress=False)
    cached = ref.CachedReference(model.state_dict(), cfg, 3, shallow=2)
    expected = reference_sample(model, None, 10, 1.0, cached)
    assert [len(h) for h in cached.history].count(4) > 0  # shallow 2 of 6 pairs: 4 run on cached steps
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_step_by_step_request_matches_reference(model):
    timesteps = [999, 950, 900, 870, 800, 760, 700, 60, 50, 40, 30]
    cached = ref.CachedReference(model.state_dict(), CFG, 2, shallow=1)
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([2, 5])
    with sk.enable_skip_cache(model, c2v_cache(2)) as request:
        for t in timesteps:
            x = torch.randn(2, 3, 4, 8, 8, generator=g)
            out = model(x, torch.tensor([t, t]), y)
            expected = cached.step(x, torch.tensor([t, t]), y)
            assert request.last_step_full == (len(cached.history[-1]) == 4)
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert (request.full_steps, request.cached_steps) == (
        sum(len(h) == 4 for h in cached.history), sum(len(h) == 2 for h in cached.history),
    )  # fmt: skip
    assert "forward" not in model.__dict__  # the model's forward is its own again


@pytest.mark.parametrize("interval", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("steps, method", [(50, "ddim"), (250, "ddpm")])
def test_release_preset_schedule(interval, steps, method):
    """SkipCache(start_t=900, stop_t=50 or 49, shallow 1) is the release's schedule on its samplers
    (DDIM-50, DDPM-250 never visit t = 50); on a trajectory through t = 50, only stop_t=49 is."""
    timesteps = GaussianDiffusion.create(steps, method=method).timesteps
    official = ref.official_full_steps(timesteps, interval)
    for stop_t in (49, 50):
        cache = sk.SkipCache(interval=interval, shallow_blocks=1, start_t=900, stop_t=stop_t)
        assert cache.full_steps(timesteps) == official
    through_50 = GaussianDiffusion.create(20, method="ddim").timesteps
    assert 50 in through_50
    assert c2v_cache(interval).full_steps(through_50) == ref.official_full_steps(through_50, interval)


def test_cached_steps_skip_the_middle_pairs(model):
    """Shallow 1 of 4 pairs: a cached step runs pairs 0 and 3 only, and its output differs from
    the full forward's (the middle is the stored state, not recomputed)."""
    x = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([1])
    log = PairLog(model)
    try:
        with sk.enable_skip_cache(model, c2v_cache(2)):
            model(x, torch.tensor([800]), y)
            cached_out = model(x, torch.tensor([780]), y)
    finally:
        log.close()
    assert log.steps == [[0, 1, 2, 3], [0, 3]]
    with torch.no_grad():
        assert not torch.allclose(cached_out, model(x, torch.tensor([780]), y))


def test_sample_rejects_bad_requests(model):
    with pytest.raises(ValueError, match="class labels must be in 0..5"):
        sample(model, [9], steps=4, progress=False)
    with pytest.raises(ValueError, match="shallow_blocks must be in 1..2"):
        sample(model, [1], steps=4, progress=False, cache=sk.SkipCache(shallow_blocks=3))
    uncond = LatteSkip(**{**CFG, "extras": 1})
    with pytest.raises(ValueError, match="unconditional"):
        sample(uncond, 2, steps=4, progress=False, cfg_scale=4.0)
