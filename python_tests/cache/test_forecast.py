"""Forecast Skip-Cache on a tiny trained model: closer to uncached than reuse under DDIM, and "auto"
resolved from the sampler. (The schedule's slots and weights: test_schedule.py.)"""

import numpy as np
import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.cache.forecast import AUTO_DETERMINISTIC_ORDER

# -- fidelity on a tiny trained model -------------------------------------------------------------


@pytest.fixture(scope="session")
def trained_skipdit():
    """A depth-4 SkipDiT trained for a few seconds on the bundled 8x8 digits: enough temporal structure."""
    from skipdit_kernels.sampling import GaussianDiffusion
    from skipdit_kernels.training.data import load_digits_tensors

    torch.manual_seed(0)
    x, y = load_digits_tensors(size=8)
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
    assert "forward" not in trained_skipdit.__dict__  # the per-run cache does not touch the model


def test_alpha_sigma_forecast_beats_reuse_at_interval_three_under_ddim(trained_skipdit):
    """The alpha-sigma basis through sample() (the executor): closer to uncached than reuse."""
    kw = dict(class_labels=list(range(10)), steps=25, method="ddim", cfg_scale=2.0, seed=1, progress=False)
    cache = sk.SkipCache(interval=3, shallow_blocks=1, forecast=1, forecast_basis="alpha-sigma")
    ref = sk.sample(trained_skipdit, **kw)
    reuse = sk.sample(trained_skipdit, cache=sk.SkipCache(interval=3, shallow_blocks=1), **kw)
    fore, info = sk.sample(trained_skipdit, cache=cache, return_info=True, **kw)
    assert info.cache.forecast_basis == "alpha-sigma"
    assert _psnr(fore, ref) >= _psnr(reuse, ref) + 2.0  # measured +7.9 dB (Taylor order 1: +3.6)
