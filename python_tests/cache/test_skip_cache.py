import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.cache import SkipCacheState

from ..models import reference_dit as ref
from ..models.conftest import TINY, randomize

TRAJECTORY = list(range(980, -1, -20))  # 50 steps, DDIM-50's original-scale timesteps


def count_block_calls(model):
    calls = []
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda mod, args, i=i: calls.append(i))
    return calls


def run_steps(model, timesteps, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    outs = []
    for t in timesteps:
        x = torch.randn(batch, 4, 8, 8, generator=g)
        with torch.no_grad():
            outs.append(model(x, torch.full((batch,), t), torch.arange(batch)))
    return outs


@pytest.mark.parametrize("interval", [2, 3])
def test_cached_run_matches_reference_step_by_step(interval):
    cfg = {**TINY, "depth": 8}
    model = randomize(sk.SkipDiT(**cfg)).enable_skip_cache(sk.SkipCache(interval=interval, shallow_blocks=2))
    reference = ref.CachedReference(model.state_dict(), cfg, interval=interval, shallow=2)
    calls = count_block_calls(model)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for t in TRAJECTORY:
        x = torch.randn(2, 4, 8, 8, generator=g)
        tt, y = torch.full((2,), t), torch.tensor([3, 7])
        before = len(calls)
        with torch.no_grad():
            out = model(x, tt, y)
        expected = reference.step(x, tt, y)
        assert calls[before:] == reference.history[-1]
        worst = max(worst, ((out - expected).abs().max() / expected.abs().max()).item())
    assert worst < 2e-5
    # Steps 0, interval, 2*interval, ... are full, and so is the last: t=20 <= stop_t reset the cache.
    full = sum(1 for blocks in reference.history if len(blocks) == 8)
    assert model.skip_cache.full_steps == full == len(range(0, 49, interval)) + 1


def test_blocks_run_on_cached_steps():
    model = randomize(sk.SkipDiT(**{**TINY, "depth": 8})).enable_skip_cache(sk.SkipCache(interval=2, shallow_blocks=3))
    calls = count_block_calls(model)
    run_steps(model, [900])
    assert calls == list(range(8))
    calls.clear()
    run_steps(model, [880])
    assert calls == [0, 1, 2, 5, 6, 7]


def test_start_t_forces_full_steps():
    model = randomize(sk.SkipDiT(**TINY)).enable_skip_cache(sk.SkipCache(interval=2, shallow_blocks=1, start_t=700))
    run_steps(model, [900, 800, 700, 600, 500])
    assert (model.skip_cache.full_steps, model.skip_cache.cached_steps) == (4, 1)


def test_stop_t_resets_counter_and_cache():
    model = randomize(sk.SkipDiT(**TINY)).enable_skip_cache(sk.SkipCache(interval=3, shallow_blocks=1, stop_t=50))
    run_steps(model, [100, 60, 40])
    state = model.skip_cache
    assert state.counter == 0 and state.deep is None  # 40 <= stop_t


def test_cached_equals_full_when_interval_is_one():
    model = randomize(sk.SkipDiT(**TINY))
    full = run_steps(model, TRAJECTORY[:6])
    model.enable_skip_cache(sk.SkipCache(interval=1, shallow_blocks=1))
    cached = run_steps(model, TRAJECTORY[:6])
    for a, b in zip(full, cached):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "change",
    [
        lambda x: x[:1],  # batch size
        lambda x: x.double(),  # dtype
    ],
)
def test_cache_resets_when_the_input_signature_changes(change):
    model = randomize(sk.SkipDiT(**TINY)).enable_skip_cache(sk.SkipCache(interval=4, shallow_blocks=1))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        model(x, torch.full((2,), 900), torch.tensor([1, 2]))
        x2 = change(x)
        if x2.dtype == torch.float64:
            model.double()
        n = x2.shape[0]
        model(x2, torch.full((n,), 880), torch.arange(n))
    # A stale feature from the first signature would have made the second step a cached one.
    assert model.skip_cache.full_steps == 2 and model.skip_cache.cached_steps == 0


def test_resolution_change_is_a_new_signature():
    state = SkipCacheState(sk.SkipCache(interval=4, shallow_blocks=1), depth=4)
    assert state.begin_step(900, ((2, 4, 8, 8), torch.float32, torch.device("cpu")))
    state.deep = torch.zeros(1)
    state.end_step(900)
    assert state.begin_step(880, ((2, 4, 16, 16), torch.float32, torch.device("cpu")))


def test_rising_timestep_starts_a_new_trajectory():
    model = randomize(sk.SkipDiT(**TINY)).enable_skip_cache(sk.SkipCache(interval=4, shallow_blocks=1))
    run_steps(model, [900, 880])  # an interrupted request: one full, one cached step
    assert model.skip_cache.cached_steps == 1
    run_steps(model, [980])
    assert model.skip_cache.last_step_full and model.skip_cache.counter == 1


def test_reset_and_disable():
    model = randomize(sk.SkipDiT(**TINY)).enable_skip_cache(sk.SkipCache(interval=4, shallow_blocks=1))
    run_steps(model, [900])
    model.reset_skip_cache()
    assert model.skip_cache.deep is None and model.skip_cache.counter == 0
    model.disable_skip_cache()
    assert model.skip_cache is None


def test_plain_dit_caches_the_middle_residual():
    model = randomize(sk.DiT(**TINY)).enable_skip_cache(sk.SkipCache(interval=2, shallow_blocks=1))
    calls = count_block_calls(model)
    outs = run_steps(model, [900, 880])
    assert calls == list(range(6)) + [0, 5]
    assert torch.isfinite(outs[1]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(interval=0), "interval"),
        (dict(interval=1.5), "interval"),
        (dict(shallow_blocks=0), "shallow_blocks"),
        (dict(start_t="x"), "start_t"),
    ],
)
def test_bad_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sk.SkipCache(**kwargs)


def test_shallow_blocks_beyond_half_depth_is_refused():
    with pytest.raises(ValueError, match=r"shallow_blocks must be in 1..3"):
        sk.SkipDiT(**TINY).enable_skip_cache(sk.SkipCache(shallow_blocks=4))


def test_presets_and_plan():
    video = sk.SkipCache.preset("video")
    assert (video.interval, video.shallow_blocks, video.start_t, video.stop_t) == (2, 1, 700, 50)
    assert sk.SkipCache.preset("dit") == sk.SkipCache()
    plan = sk.SkipCache(interval=3).plan([980, 960, 940, 920, 20, 0])
    assert plan == [True, False, False, True, False, True]
    with pytest.raises(ValueError, match="unknown Skip-Cache preset"):
        sk.SkipCache.preset("nope")
