"""Step-by-step Skip-Cache: ``enable_skip_cache(model, SkipCache)`` is one request whose state lives in
the returned session; the model's forward is its own again when the session closes."""

import threading

import pytest
import torch

import skipdit_kernels as sk

from ..models import reference_dit as ref
from ..models.conftest import TINY, randomize

TRAJECTORY = list(range(980, -1, -20))  # 50 steps, DDIM-50's original-scale timesteps


def count_block_calls(model):
    calls = []
    hooks = [b.register_forward_pre_hook(lambda mod, args, i=i: calls.append(i)) for i, b in enumerate(model.blocks)]
    return calls, hooks


def step_inputs(timesteps, batch=2, seed=0, channels=4, side=8):
    g = torch.Generator().manual_seed(seed)
    for t in timesteps:
        yield torch.randn(batch, channels, side, side, generator=g), torch.full((batch,), t), torch.arange(batch)


def run_steps(model, timesteps, batch=2, seed=0):
    with torch.no_grad():
        return [model(x, t, y) for x, t, y in step_inputs(timesteps, batch, seed)]


@pytest.mark.parametrize("interval", [2, 3])
def test_cached_run_matches_the_official_rules_step_by_step(interval):
    cfg = {**TINY, "depth": 8}
    model = randomize(sk.SkipDiT(**cfg))
    reference = ref.CachedReference(model.state_dict(), cfg, interval=interval, shallow=2)
    calls, _ = count_block_calls(model)
    worst = 0.0
    with sk.enable_skip_cache(model, sk.SkipCache(interval=interval, shallow_blocks=2)) as request:
        for t in TRAJECTORY:
            x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(t))
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
    assert request.full_steps == full == len(range(0, 49, interval)) + 1


def test_blocks_run_on_cached_steps_and_plain_dit_caches_the_middle_residual():
    for cls, cached_blocks in ((sk.SkipDiT, [0, 1, 2, 5, 6, 7]), (sk.DiT, [0, 1, 2, 5, 6, 7])):
        model = randomize(cls(**{**TINY, "depth": 8}))
        calls, _ = count_block_calls(model)
        with sk.enable_skip_cache(model, sk.SkipCache(interval=2, shallow_blocks=3)):
            outs = run_steps(model, [900, 880])
        assert calls == list(range(8)) + cached_blocks
        assert torch.isfinite(outs[1]).all()


def test_start_t_forces_full_steps_and_stop_t_resets():
    model = randomize(sk.SkipDiT(**TINY))
    with sk.enable_skip_cache(model, sk.SkipCache(interval=2, shallow_blocks=1, start_t=700)) as request:
        run_steps(model, [900, 800, 700, 600, 500])
    assert (request.full_steps, request.cached_steps) == (4, 1)
    with sk.enable_skip_cache(model, sk.SkipCache(interval=3, shallow_blocks=1, stop_t=50)) as request:
        run_steps(model, [100, 60, 40])
        assert request.counter == 0  # 40 <= stop_t
        run_steps(model, [30])
        assert request.last_step_full


def test_interval_one_and_a_closed_session_are_the_plain_forward_bit_for_bit():
    model = randomize(sk.SkipDiT(**TINY))
    plain = run_steps(model, TRAJECTORY[:6])
    with sk.enable_skip_cache(model, sk.SkipCache(interval=1, shallow_blocks=1)):
        assert "forward" in model.__dict__
        cached = run_steps(model, TRAJECTORY[:6])
    assert "forward" not in model.__dict__  # nothing left on the instance, nothing ever on the class
    after = run_steps(model, TRAJECTORY[:6])
    for a, b, c in zip(plain, cached, after):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("change", [lambda x: x[:1], lambda x: x.double()], ids=["batch", "dtype"])
def test_a_new_signature_starts_a_new_trajectory(change):
    model = randomize(sk.SkipDiT(**TINY))
    x = torch.randn(2, 4, 8, 8)
    with sk.enable_skip_cache(model, sk.SkipCache(interval=4, shallow_blocks=1)) as request, torch.no_grad():
        model(x, torch.full((2,), 900), torch.tensor([1, 2]))
        x2 = change(x)
        if x2.dtype == torch.float64:
            model.double()
        n = x2.shape[0]
        model(x2, torch.full((n,), 880), torch.arange(n))
    # A stale feature from the first signature would have made the second step a cached one.
    assert request.full_steps == 2 and request.cached_steps == 0


def test_a_rising_timestep_starts_a_new_trajectory():
    model = randomize(sk.SkipDiT(**TINY))
    with sk.enable_skip_cache(model, sk.SkipCache(interval=4, shallow_blocks=1)) as request:
        run_steps(model, [900, 880])  # an interrupted trajectory: one full, one cached step
        assert request.cached_steps == 1
        run_steps(model, [980])
        assert request.last_step_full and request.counter == 1
        request.reset()
        run_steps(model, [700])
        assert request.last_step_full


@pytest.mark.parametrize("first_t_of_b", [999, 600])
def test_an_abandoned_request_never_serves_the_next_one(first_t_of_b):
    """Request A runs a full and a cached step and is abandoned (never closed); request B on the same
    model starts at t=999 or at a lower timestep: B's first forward is the uncached forward of B."""
    model = randomize(sk.SkipDiT(**TINY))
    a = sk.enable_skip_cache(model, sk.SkipCache(interval=4, shallow_blocks=1))
    run_steps(model, [999, 980], seed=1)
    assert a.cached_steps == 1
    x, t, y = next(step_inputs([first_t_of_b], seed=2))
    with torch.no_grad():
        expected = type(model).forward(model, x, t, y)
        with sk.enable_skip_cache(model, sk.SkipCache(interval=4, shallow_blocks=1)):
            got = model(x, t, y)
    assert torch.equal(got, expected)
    sk.disable_skip_cache(model)
    assert "forward" not in model.__dict__ and a.closed


def test_a_session_is_invisible_to_other_threads():
    model = randomize(sk.SkipDiT(**TINY))
    x, t, y = next(step_inputs([880]))
    with torch.no_grad():
        expected = type(model).forward(model, x, t, y)
    got = {}
    with sk.enable_skip_cache(model, sk.SkipCache(interval=4, shallow_blocks=1)) as request:
        run_steps(model, [900])

        def other_thread():
            with torch.no_grad():
                got["out"] = model(x, t, y)

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert torch.equal(got["out"], expected) and request.full_steps == 1 and request.cached_steps == 0


def test_concurrent_step_by_step_requests_equal_sequential_ones():
    model = randomize(sk.SkipDiT(**TINY))
    schedules = [sk.SkipCache(interval=i, shallow_blocks=1, forecast=f) for i, f in ((2, 0), (3, 1), (4, 2), (2, 1))]

    def request(cache, seed):
        with sk.enable_skip_cache(model, cache):
            return run_steps(model, TRAJECTORY[:20], seed=seed)

    sequential = [request(c, s) for s, c in enumerate(schedules)]
    results = [None] * len(schedules)
    barrier = threading.Barrier(len(schedules))

    def work(k):
        barrier.wait()
        for _ in range(2):  # several requests per thread
            results[k] = request(schedules[k], k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(schedules))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for want, got in zip(sequential, results):
        assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert "forward" not in model.__dict__


def test_forward_with_cfg_inside_a_session_is_cached():
    model = randomize(sk.SkipDiT(**TINY))
    calls, _ = count_block_calls(model)
    x = torch.randn(2, 4, 8, 8)
    y = torch.tensor([1, 10])
    with sk.enable_skip_cache(model, sk.SkipCache(interval=2, shallow_blocks=1)), torch.no_grad():
        for t in (900, 880):
            model.forward_with_cfg(x, torch.full((2,), t), y, 4.0)
    assert calls == list(range(6)) + [0, 5]


@pytest.mark.parametrize("cls", [sk.SkipDiT, sk.DiT])
def test_forecast_runs_the_same_blocks_as_reuse_and_equals_it_with_one_point(cls):
    model = randomize(cls(**{**TINY, "depth": 6}))
    steps = TRAJECTORY[:8] + TRAJECTORY[-3:]  # through stop_t (20): a reset, then full again
    runs = {}
    for order in (0, 2):
        calls, hooks = count_block_calls(model)
        per_step = []
        with sk.enable_skip_cache(model, sk.SkipCache(interval=3, shallow_blocks=2, forecast=order)):
            outs = []
            for x, t, y in step_inputs(steps):
                before = len(calls)
                with torch.no_grad():
                    outs.append(model(x, t, y))
                per_step.append(calls[before:])
        for hk in hooks:
            hk.remove()
        runs[order] = outs, per_step
    (reuse, reuse_calls), (fore, fore_calls) = runs[0], runs[2]
    assert fore_calls == reuse_calls and reuse_calls[1] == [0, 1, 4, 5]
    for s in (0, 1, 2, 3):  # before the second full step's history is used: identical
        assert torch.equal(fore[s], reuse[s])
    assert not torch.equal(fore[4], reuse[4])  # step 4 extrapolates from steps 0 and 3


def test_bad_requests_are_refused_before_any_work():
    model = sk.SkipDiT(**TINY)
    with pytest.raises(ValueError, match="auto"):
        sk.enable_skip_cache(model, sk.SkipCache(shallow_blocks=1, forecast="auto"))
    with pytest.raises(ValueError, match=r"shallow_blocks must be in 1..3"):
        sk.enable_skip_cache(model, sk.SkipCache(shallow_blocks=4))
    with pytest.raises(TypeError, match="expects a SkipCache"):
        sk.enable_skip_cache(model, 2)
    with pytest.raises(TypeError, match="not a skip stack.*supported: skipdit_kernels.DiT"):
        sk.enable_skip_cache(torch.nn.Linear(2, 2), sk.SkipCache())
    assert "forward" not in model.__dict__
