"""Forecast Skip-Cache (issue 12): Lagrange extrapolation of the deep state from the last full steps."""
import numpy as np
import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.cache import SkipCacheState
from skipdit_kernels.cache.forecast import AUTO_DETERMINISTIC_ORDER, ForecastHistory, lagrange_weights, resolve_forecast

from ..models.conftest import TINY, randomize

SIG = ((2, 3), torch.float32, torch.device("cpu"))


# -- the extrapolation ----------------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_extrapolation_is_exact_on_polynomials_up_to_the_order(order):
    g = torch.Generator().manual_seed(order)
    coeffs = torch.randn(order + 1, 5, 7, generator=g, dtype=torch.float64)

    def f(s):
        return sum(c * float(s) ** p for p, c in enumerate(coeffs))

    history = ForecastHistory(order)
    nodes = [0, 3, 6, 9][: order + 1]
    for s in [-6, -3] + nodes:  # older entries fall out of the ring
        history.append(s, f(s))
    assert history.steps == nodes
    for at in (nodes[-1] + 1, nodes[-1] + 2, nodes[-1] + 5):
        torch.testing.assert_close(history.predict(at), f(at), rtol=1e-9, atol=1e-9)


def test_extrapolation_of_higher_degree_is_not_exact_and_weights_sum_to_one():
    for nodes, at in (([0, 2], 3), ([0, 3, 6], 8), ([0, 1, 2, 3], 7), ([1.5, 2.5], 4.0)):
        assert abs(sum(lagrange_weights(nodes, at)) - 1.0) < 1e-12
    assert lagrange_weights([0, 2], 3) == pytest.approx((-0.5, 1.5))
    history = ForecastHistory(1)
    for s in (0, 2):
        history.append(s, torch.tensor([float(s) ** 2], dtype=torch.float64))
    assert history.predict(3).item() == pytest.approx(6.0)  # the secant, not 9
    with pytest.raises(ValueError, match="distinct"):
        lagrange_weights([1, 1], 2)


def test_single_point_is_reuse_and_order_drops_with_few_points():
    history = ForecastHistory(2)
    a = torch.randn(3, 4)
    history.append(0, a)
    assert history.predict(5) is a
    history.append(2, a + 1)
    torch.testing.assert_close(history.predict(3), a + 1.5)  # first order through two points


# -- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 4, 1.5, 1.0, "2", "yes", None, True])
def test_bad_forecast_raises_naming_the_value(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        sk.SkipCache(forecast=bad)


def test_auto_is_refused_by_the_module_level_cache():
    model = sk.SkipDiT(**TINY)
    with pytest.raises(ValueError, match="auto"):
        model.enable_skip_cache(sk.SkipCache(shallow_blocks=1, forecast="auto"))
    assert resolve_forecast("auto", stochastic=False) == AUTO_DETERMINISTIC_ORDER
    assert resolve_forecast("auto", stochastic=True) == 0
    assert resolve_forecast(1, stochastic=True) == 1
    assert sk.SkipCache(forecast="auto").with_forecast(2).forecast == 2


# -- the state: store / restore and resets --------------------------------------------------------


def _steps(state, ts, make, sig=SIG):
    """Drive the state like forward_stack does, with deep states make(step_counter)."""
    outs = []
    for t in ts:
        full = state.begin_step(t, sig)
        shallow = torch.zeros(2, 3, dtype=torch.float64)
        if full:
            state.store(make(state.counter) + (shallow if state.residual else 0), shallow)
            outs.append(None)
        else:
            outs.append(state.restore(shallow))
        state.end_step(t)
    return outs


@pytest.mark.parametrize("residual", [False, True])
def test_state_forecasts_linear_deep_states_exactly(residual):
    base, slope = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    state = SkipCacheState(sk.SkipCache(interval=3, shallow_blocks=1, stop_t=-1, forecast=1), 4, residual=residual)
    outs = _steps(state, range(900, 700, -20), lambda s: base + s * slope)
    for s, out in enumerate(outs):
        if out is None:
            continue
        expected = base + (0 if s < 3 else s) * slope  # steps 1, 2: one point, reuse of step 0
        torch.testing.assert_close(out, expected)
    assert state.history.steps == [6, 9] and state.history.order == 1


def test_history_resets_with_the_cache():
    cfg = sk.SkipCache(interval=2, shallow_blocks=1, stop_t=50, forecast=2)
    state = SkipCacheState(cfg, 4)
    _steps(state, [900, 880, 860, 840, 820], lambda s: torch.full((2, 3), float(s)))
    assert state.history.steps == [0, 2, 4]
    _steps(state, [950], lambda s: torch.zeros(2, 3))  # rising t: a new trajectory
    assert state.history.steps == [0]
    _steps(state, [930], lambda s: torch.zeros(2, 3), sig=((4, 3), torch.float32, torch.device("cpu")))
    assert state.history.steps == [0]  # new signature: reset, and the first step is full again
    _steps(state, [100, 60, 40], lambda s: torch.zeros(2, 3), sig=((4, 3), torch.float32, torch.device("cpu")))
    assert len(state.history) == 0 and state.deep is None  # 40 <= stop_t
    state.store(torch.zeros(2, 3), torch.zeros(2, 3))
    state.reset()
    assert len(state.history) == 0


# -- on a model -----------------------------------------------------------------------------------

TRAJECTORY = list(range(980, -1, -20))


def _block_calls(model):
    calls = []
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda mod, args, i=i: calls.append(i))
    return calls


def _run(model, cache, steps=TRAJECTORY, batch=2):
    model.enable_skip_cache(cache)
    calls = _block_calls(model)
    g = torch.Generator().manual_seed(0)
    outs, per_step = [], []
    for t in steps:
        x = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g)
        before = len(calls)
        with torch.no_grad():
            outs.append(model(x, torch.full((batch,), t), torch.arange(batch)))
        per_step.append(calls[before:])
    for block in model.blocks:
        block._forward_pre_hooks.clear()
    return outs, per_step


@pytest.mark.parametrize("cls", [sk.SkipDiT, sk.DiT])
def test_forecast_runs_the_same_blocks_as_reuse_and_equals_it_with_one_point(cls):
    model = randomize(cls(**{**TINY, "depth": 6}))
    steps = TRAJECTORY[:8] + TRAJECTORY[-3:]  # through stop_t (20): a reset, then full again
    reuse, reuse_calls = _run(model, sk.SkipCache(interval=3, shallow_blocks=2), steps)
    fore, fore_calls = _run(model, sk.SkipCache(interval=3, shallow_blocks=2, forecast=2), steps)
    assert fore_calls == reuse_calls
    assert reuse_calls[1] == [0, 1, 4, 5]
    for s in (0, 1, 2, 3):  # before the second full step's history is used: identical
        torch.testing.assert_close(fore[s], reuse[s], rtol=0, atol=0)
    assert not torch.equal(fore[4], reuse[4])  # step 4 extrapolates from steps 0 and 3


# -- fidelity on a tiny trained model -------------------------------------------------------------


@pytest.fixture(scope="session")
def trained_skipdit():
    """A depth-4 SkipDiT trained for a few seconds on sklearn's 8x8 digits: enough temporal structure."""
    datasets = pytest.importorskip("sklearn.datasets")
    from skipdit_kernels.sampling import GaussianDiffusion

    torch.manual_seed(0)
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.tensor(digits.target)
    model = sk.SkipDiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=4,
                       num_classes=10, learn_sigma=False)  # fmt: skip
    diffusion = GaussianDiffusion.create("", learn_sigma=False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(50):  # a fixed count (deterministic); a few seconds on an idle 2-core CPU
        idx = torch.randint(0, len(x), (64,))
        loss = diffusion.training_losses(model, x[idx], torch.randint(0, 1000, (64,)), dict(y=y[idx]))["loss"]
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    return model.eval()


def _psnr(a, b):  # samples live in [-1, 1]: peak-to-peak 2
    return 10 * np.log10(4.0 / max(((a - b) ** 2).mean().item(), 1e-20))


def test_forecast_one_beats_reuse_at_interval_three_under_ddim(trained_skipdit):
    kw = dict(class_labels=list(range(10)), steps=25, method="ddim", cfg_scale=2.0, seed=1, progress=False)
    ref = sk.sample(trained_skipdit, **kw)
    reuse = sk.sample(trained_skipdit, cache=sk.SkipCache(interval=3, shallow_blocks=1), **kw)
    fore = sk.sample(trained_skipdit, cache=sk.SkipCache(interval=3, shallow_blocks=1, forecast=1), **kw)
    assert _psnr(fore, ref) >= _psnr(reuse, ref) + 2.0  # measured +3.6 dB


@pytest.mark.parametrize("method, expected", [("ddim", AUTO_DETERMINISTIC_ORDER), ("ddpm", 0)])
def test_sample_resolves_auto_from_the_sampler_and_reports_it(trained_skipdit, method, expected):
    kw = dict(class_labels=[1, 2], steps=12, method=method, cfg_scale=2.0, seed=3, progress=False)
    auto, info = sk.sample(trained_skipdit, cache=sk.SkipCache(interval=3, shallow_blocks=1, forecast="auto"),
                           return_info=True, **kw)  # fmt: skip
    assert info.forecast == expected and info.cache.forecast == expected
    explicit = sk.sample(trained_skipdit, cache=sk.SkipCache(interval=3, shallow_blocks=1, forecast=expected), **kw)
    torch.testing.assert_close(auto, explicit, rtol=0, atol=0)
    assert trained_skipdit.skip_cache is None  # the per-run cache does not leak
