"""The Skip-Cache schedule: one cursor decides every step (full or cached, history slot, forecast
weights); ``plan`` is that cursor over a trajectory."""

import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.cache import ScheduleCursor
from skipdit_kernels.cache.forecast import AUTO_DETERMINISTIC_ORDER, lagrange_weights, resolve_forecast


def official_full_steps(timesteps, interval, start_t=1000, stop_t=20):
    """DiT_cache's rule, written out: full when counter % interval == 0, nothing cached, or t >= start_t;
    the counter advances per step and resets (with the cache) after a step with t <= stop_t."""
    out, counter, have = [], 0, False
    for t in timesteps:
        full = counter % interval == 0 or not have or t >= start_t
        out.append(full)
        have = have or full
        counter += 1
        if t <= stop_t:
            counter, have = 0, False
    return out


@pytest.mark.parametrize("interval, start_t, stop_t", [(2, 1000, 20), (3, 1000, 20), (2, 700, 50), (4, 900, 0)])
def test_full_steps_follow_the_official_rule(interval, start_t, stop_t):
    timesteps = list(range(980, -1, -20))
    cache = sk.SkipCache(interval=interval, shallow_blocks=1, start_t=start_t, stop_t=stop_t)
    assert cache.full_steps(timesteps) == official_full_steps(timesteps, interval, start_t, stop_t)


def test_presets_and_plan():
    video = sk.SkipCache.preset("video")
    assert (video.interval, video.shallow_blocks, video.start_t, video.stop_t) == (2, 1, 700, 50)
    assert sk.SkipCache.preset("dit") == sk.SkipCache()
    assert sk.SkipCache(interval=3).full_steps([980, 960, 940, 920, 20, 0]) == [True, False, False, True, False, True]
    with pytest.raises(ValueError, match="unknown Skip-Cache preset"):
        sk.SkipCache.preset("nope")


def test_forecast_slots_and_weights_follow_the_history():
    cache = sk.SkipCache(interval=2, shallow_blocks=1, forecast=2, stop_t=30)
    plan = cache.plan([90, 80, 70, 60, 50, 40, 30, 20, 10])  # resets after t=30
    assert [p.full for p in plan] == [True, False, True, False, True, False, True, True, True]
    assert [p.slot for p in plan if p.full] == [0, 1, 2, 0, 0, 0]  # t=30 overwrites the oldest; resets restart
    assert plan[1].weights == (1.0, 0.0, 0.0)  # one point: reuse
    assert plan[3].weights == (-0.5, 1.5, 0.0)  # through steps 0, 2 at step 3
    assert plan[5].weights == pytest.approx((0.375, -1.25, 1.875))  # through 0, 2, 4 at 5
    assert [p.counter for p in plan] == [0, 1, 2, 3, 4, 5, 6, 0, 0]


def test_reuse_has_one_slot_and_auto_must_be_resolved():
    assert sk.SkipCache().slots == 1 and sk.SkipCache(forecast=3).slots == 4
    with pytest.raises(ValueError, match="auto"):
        sk.SkipCache(forecast="auto").plan([900])
    assert resolve_forecast("auto", stochastic=False) == AUTO_DETERMINISTIC_ORDER
    assert resolve_forecast("auto", stochastic=True) == 0
    assert sk.SkipCache(forecast="auto").with_forecast(2).forecast == 2


def test_a_cursor_is_the_plan_step_by_step():
    cache = sk.SkipCache(interval=3, shallow_blocks=1, forecast=1, start_t=900)
    timesteps = list(range(980, -1, -40))
    cursor = ScheduleCursor(cache)
    assert [cursor.advance(t) for t in timesteps] == cache.plan(timesteps)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(interval=0), "interval"),
        (dict(interval=1.5), "interval"),
        (dict(shallow_blocks=0), "shallow_blocks"),
        (dict(start_t="x"), "start_t"),
        (dict(stop_t=True), "stop_t"),
        (dict(forecast=4), "forecast"),
        (dict(forecast="fast"), "forecast"),
    ],
)
def test_bad_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sk.SkipCache(**kwargs)


def test_units_must_fit_the_stack():
    with pytest.raises(ValueError, match=r"shallow_blocks must be in 1..3"):
        sk.SkipCache(shallow_blocks=4).check_units(6)
    # the last unit runs on cached steps but would fuse a unit of the skipped middle
    with pytest.raises(ValueError, match="unit 5 runs on cached steps but fuses the output of unit 2"):
        sk.SkipCache(shallow_blocks=1).check_units(6, {5: 2})
    sk.SkipCache(shallow_blocks=1).check_units(6, {5: 0, 4: 1})


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_extrapolation_is_exact_on_polynomials_up_to_the_order(order):
    nodes = [0, 3, 6, 9][: order + 1]
    coeffs = torch.randn(order + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(order))

    def f(s):
        return sum(float(c) * float(s) ** p for p, c in enumerate(coeffs))

    for at in (nodes[-1] + 1, nodes[-1] + 2, nodes[-1] + 5):
        got = sum(w * f(s) for w, s in zip(lagrange_weights(nodes, at), nodes))
        assert got == pytest.approx(f(at), rel=1e-9, abs=1e-9)


def test_weights_sum_to_one_and_nodes_must_be_distinct():
    for nodes, at in (([0, 2], 3), ([0, 3, 6], 8), ([0, 1, 2, 3], 7), ([1.5, 2.5], 4.0)):
        assert abs(sum(lagrange_weights(nodes, at)) - 1.0) < 1e-12
    assert lagrange_weights([0, 2], 3) == pytest.approx((-0.5, 1.5))
    with pytest.raises(ValueError, match="distinct"):
        lagrange_weights([1, 1], 2)


def test_the_fast_preset_resolves_per_sampler():
    fast = sk.SkipCache.preset("fast")
    assert (fast.interval, fast.shallow_blocks, fast.start_t, fast.stop_t, fast.forecast) == (4, 1, 950, 20, "auto")
    deterministic = fast.for_sampler(stochastic=False)
    assert deterministic == sk.SkipCache(interval=4, shallow_blocks=1, start_t=950, forecast=AUTO_DETERMINISTIC_ORDER)
    # a stochastic sampler gets the paper's reuse schedule (extrapolation amplifies injected noise)
    assert fast.for_sampler(stochastic=True) == sk.SkipCache(interval=2, shallow_blocks=1, forecast=0)
    assert sk.SkipCache(interval=3, forecast="auto").for_sampler(stochastic=True).forecast == 0
    assert sk.SkipCache(interval=3, forecast=2).for_sampler(stochastic=False).forecast == 2
    # DDIM-50 on the bundled model: 2.11x FLOP bound (measured 2.11x, bench/results/quality-sweep-*)
    from skipdit_kernels.sampling import GaussianDiffusion

    timesteps = GaussianDiffusion.create(50, method="ddim").timesteps
    assert 1 / deterministic.block_fraction(timesteps, 8) == pytest.approx(2.105, abs=0.01)
    full = deterministic.full_steps(timesteps)
    assert full[:2] == [True, True] and full[2:6] == [False, False, True, False]  # t=999, 979 >= 950


# -- the alpha-sigma forecast basis and the turbo preset ------------------------------------------


def _alpha_sigma_reference(t):
    """alpha_t, sigma_t of DDPM's linear betas (1e-4..0.02, 1000 steps), linear in alphas_cumprod
    between integer timesteps; written independently of the library (torch, float64)."""
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    lo = int(t)
    a = ab[lo] + (ab[min(lo + 1, 999)] - ab[lo]) * (t - lo)
    return float(a.sqrt()), float((1 - a).sqrt())


@pytest.mark.parametrize("nodes, at", [((980, 960), 940), ((500, 400), 310), ((999, 500), 0), ((200.5, 120.25), 50.75)])
def test_alpha_sigma_weights_are_exact_on_its_basis(nodes, at):
    from skipdit_kernels.cache.forecast import alpha_sigma_weights

    a, b = 0.7, -1.3

    def f(t):
        alpha, sigma = _alpha_sigma_reference(t)
        return a * alpha + b * sigma

    w = alpha_sigma_weights(nodes, at)
    assert sum(wj * f(t) for wj, t in zip(w, nodes)) == pytest.approx(f(at), rel=1e-9, abs=1e-12)
    assert alpha_sigma_weights([nodes[1]], at) == (1.0,)  # one full step: reuse
    assert alpha_sigma_weights([100, *nodes], at) == pytest.approx((0.0, *w))  # the last two only


def test_alpha_sigma_plan_and_errors():
    from skipdit_kernels.cache.forecast import alpha_sigma_weights

    cache = sk.SkipCache(interval=3, shallow_blocks=1, forecast=1, forecast_basis="alpha-sigma")
    assert cache.slots == 2
    timesteps = [980, 960, 940, 920, 900, 880, 860, 840]
    plan = cache.plan(timesteps)
    assert [p.full for p in plan] == [True, False, False, True, False, False, True, False]
    assert plan[1].weights == (1.0, 0.0)  # one point: reuse
    assert plan[4].weights == pytest.approx(alpha_sigma_weights([980, 920], 900))  # slots 0, 1
    assert plan[7].weights == pytest.approx(tuple(reversed(alpha_sigma_weights([920, 860], 840))))  # 860 in slot 0
    # an explicit noise schedule: the cursor reads it
    cursor = ScheduleCursor(cache, alphas_cumprod=[1.0 - 0.001 * i for i in range(1000)])
    steps = [cursor.advance(t) for t in timesteps[:5]]
    assert steps[4].weights != pytest.approx(plan[4].weights)
    with pytest.raises(ValueError, match="forecast_basis must be one of"):
        sk.SkipCache(forecast=1, forecast_basis="dmd")
    with pytest.raises(ValueError, match="fits two full steps"):
        sk.SkipCache(forecast=2, forecast_basis="alpha-sigma")
    with pytest.raises(ValueError, match="timestep 1000.5 outside"):
        alpha_sigma_weights([999, 998], 1000.5)
    assert sk.SkipCache(forecast="auto", forecast_basis="alpha-sigma").for_sampler(stochastic=True).forecast == 0


def test_the_turbo_preset_has_a_flop_bound_of_three():
    from skipdit_kernels.sampling import GaussianDiffusion

    turbo = sk.SkipCache.preset("turbo")
    assert (turbo.interval, turbo.shallow_blocks, turbo.forecast) == (10, 1, "auto")
    assert turbo.for_sampler(stochastic=False).forecast == AUTO_DETERMINISTIC_ORDER
    assert turbo.for_sampler(stochastic=True).forecast == 0
    for steps, method in ((50, "ddim"), (20, "ddim"), (250, "ddpm")):  # the bundled SkipDiT: 8 units
        timesteps = GaussianDiffusion.create(steps, method=method).timesteps
        assert 1 / turbo.block_fraction(timesteps, 8) >= 3.0


def test_the_cli_takes_turbo_as_it_takes_fast():
    import argparse

    from skipdit_kernels.commands._common import add_cache_options, cache_from_args

    parser = argparse.ArgumentParser()
    add_cache_options(parser)
    for name in ("fast", "turbo"):
        assert cache_from_args(parser.parse_args(["--cache", name]), model=None) == name  # sample() resolves presets
    with pytest.raises(SystemExit):
        parser.parse_args(["--cache", "warp"])


def test_the_alpha_sigma_default_schedule_is_the_samplers():
    import numpy as np

    from skipdit_kernels.cache.forecast import linear_alphas_cumprod
    from skipdit_kernels.sampling.diffusion import linear_betas

    np.testing.assert_allclose(linear_alphas_cumprod(), np.cumprod(1 - linear_betas(1000)), rtol=1e-12)
