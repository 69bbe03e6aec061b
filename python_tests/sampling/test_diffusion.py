"""Tests of skipdit_kernels.sampling.diffusion against hand-written formulas of DiT's conventions."""

import math

import numpy as np
import pytest
import torch

from skipdit_kernels.sampling.diffusion import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    linear_betas,
    normal_kl,
    space_timesteps,
)

# ----------------------------------------------------------------------------- respacing


def test_space_timesteps_250_of_1000():
    kept = space_timesteps(1000, "250")
    assert len(kept) == len(set(kept)) == 250
    assert kept == sorted(kept)
    assert kept[:20] == list(range(0, 80, 4))
    assert kept[-1] == 999
    assert space_timesteps(1000, [250]) == kept


def test_space_timesteps_full_and_ddim():
    assert space_timesteps(1000, "1000") == list(range(1000))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim250") == list(range(0, 1000, 4))
    assert space_timesteps(10, "ddim3") == [0, 4, 8]  # stride 4 is the first giving 3 steps


def test_space_timesteps_sections():
    # 300 steps in three sections of 100: 10, 15 and 20 evenly spaced steps, ends included.
    kept = space_timesteps(300, "10,15,20")
    assert kept == space_timesteps(300, [10, 15, 20])
    assert len(kept) == 45
    first = [t for t in kept if t < 100]
    second = [t for t in kept if 100 <= t < 200]
    third = [t for t in kept if t >= 200]
    assert first == list(range(0, 100, 11))  # stride 99 / 9 = 11
    assert len(second) == 15 and second[0] == 100 and second[-1] == 199
    assert len(third) == 20 and third[0] == 200 and third[-1] == 299
    assert set(np.diff(third)) <= {5, 6}  # stride 99 / 19 = 5.21
    # Uneven split: sections of 4, 3, 3; the first keeps 0, round(1.5) = 2, 3.
    assert space_timesteps(10, "3,3,3") == [0, 2, 3, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize(
    "spec",
    ["1001", "ddim600", "ddimx", "a,b", "", [], [-1], "0"],
)
def test_space_timesteps_errors(spec):
    with pytest.raises(ValueError):
        space_timesteps(1000, spec)


def test_space_timesteps_section_too_small():
    with pytest.raises(ValueError, match="section"):
        space_timesteps(300, "10,101,20")


# ----------------------------------------------------------------------------- schedules


def test_linear_betas():
    b = linear_betas(1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4, rel=1e-12) and b[-1] == pytest.approx(0.02, rel=1e-12)
    assert np.allclose(np.diff(b), (0.02 - 1e-4) / 999, rtol=1e-9)
    b250 = linear_betas(250)
    assert b250[0] == pytest.approx(4e-4, rel=1e-12) and b250[-1] == pytest.approx(0.08, rel=1e-12)


@pytest.mark.parametrize("spec", ["250", "ddim50", "10,15,20", "4"])
def test_respaced_betas_keep_alphas_cumprod(spec):
    full = np.cumprod(1.0 - linear_betas(1000))
    d = GaussianDiffusion.create(spec)
    kept = space_timesteps(1000, spec)
    assert list(d.timestep_map) == kept
    assert np.allclose(np.cumprod(1.0 - d.betas), full[kept], rtol=0, atol=1e-12)
    assert np.allclose(d.alphas_cumprod, full[kept], rtol=0, atol=1e-12)


def test_create_and_properties():
    d = GaussianDiffusion.create(250)
    assert (d.method, d.num_steps, d.is_stochastic) == ("ddpm", 250, True)
    assert d.timesteps[0] == 999 and d.timesteps[-1] == 0 and d.timesteps == sorted(d.timesteps, reverse=True)
    d = GaussianDiffusion.create(50, method="ddim")
    assert (d.method, d.num_steps, d.is_stochastic, d.eta) == ("ddim", 50, False, 0.0)
    assert d.timesteps == list(range(980, -1, -20))
    assert GaussianDiffusion.create(50, method="ddim", eta=1.0).is_stochastic
    full = GaussianDiffusion.create(1000)
    assert full.num_steps == 1000 and list(full.timestep_map) == list(range(1000))
    # Even unspaced, betas are rebuilt from the cumulative alphas (as DiT's SpacedDiffusion does).
    assert np.allclose(full.betas, linear_betas(1000), rtol=1e-10, atol=0)
    assert GaussianDiffusion.create("ddim25").num_steps == 25
    with pytest.raises(ValueError):
        GaussianDiffusion.create(10, method="euler")


def test_posterior_log_variance_clipped():
    d = GaussianDiffusion.create(250)
    assert d.posterior_variance[0] == 0.0
    assert d.posterior_log_variance_clipped[0] == np.log(d.posterior_variance[1])
    assert np.allclose(d.posterior_log_variance_clipped[1:], np.log(d.posterior_variance[1:]), rtol=1e-14)


# ----------------------------------------------------------------------------- closed forms

STEP = 2  # respaced index in "4" of 1000: timestep 666, previous kept timestep 333


def _hand_quantities():
    """Independent float64 formulas for step STEP of respacing "4" (kept 0, 333, 666, 999)."""
    betas = np.linspace(1e-4, 0.02, 1000)
    acp = np.prod(1.0 - betas[: 666 + 1])
    acp_prev = np.prod(1.0 - betas[: 333 + 1])
    alpha = acp / acp_prev
    beta = 1.0 - alpha
    post_var = beta * (1.0 - acp_prev) / (1.0 - acp)
    return acp, acp_prev, alpha, beta, post_var


def _inputs(channels_out, seed=0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((2, 3, 4, 4))
    out = g.standard_normal((2, channels_out, 4, 4))
    noise = g.standard_normal((2, 3, 4, 4))
    return x, out, noise


def test_kept_timesteps_of_tiny_case():
    assert list(GaussianDiffusion.create(4).timestep_map) == [0, 333, 666, 999]
    assert list(GaussianDiffusion.create(4, method="ddim").timestep_map) == [0, 250, 500, 750]


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_ddpm_step_closed_form(learn_sigma):
    acp, acp_prev, alpha, beta, post_var = _hand_quantities()
    x, out, noise = _inputs(6 if learn_sigma else 3)
    if learn_sigma:
        out[:, 3:] = np.tanh(out[:, 3:])
    eps = out[:, :3]
    x0 = (x - math.sqrt(1 - acp) * eps) / math.sqrt(acp)
    mean = (math.sqrt(acp_prev) * beta / (1 - acp)) * x0 + (math.sqrt(alpha) * (1 - acp_prev) / (1 - acp)) * x
    if learn_sigma:
        frac = (out[:, 3:] + 1) / 2
        log_var = frac * math.log(beta) + (1 - frac) * math.log(post_var)
    else:
        log_var = np.full_like(x, math.log(beta))  # FIXED_LARGE
    expected = mean + np.exp(0.5 * log_var) * noise

    d = GaussianDiffusion.create(4, learn_sigma=learn_sigma)
    t = torch.from_numpy
    m, var, lv, px = d.p_mean_variance(t(out), t(x), STEP)
    assert torch.allclose(px, t(x0), rtol=1e-10, atol=1e-12)
    assert torch.allclose(m, t(mean), rtol=1e-10, atol=1e-12)
    assert torch.allclose(lv, t(log_var), rtol=1e-10, atol=1e-12)
    assert torch.allclose(var, t(np.exp(log_var)), rtol=1e-10, atol=1e-14)
    got = d.ddpm_step(t(out), t(x), STEP, t(noise))
    assert torch.allclose(got, t(expected), rtol=1e-10, atol=1e-12)
    assert torch.equal(d.step(t(out), t(x), STEP, t(noise)), got)

    # float32 inputs agree to float32 rounding.
    got32 = d.ddpm_step(t(out).float(), t(x).float(), STEP, t(noise).float())
    assert got32.dtype == torch.float32
    assert torch.allclose(got32.double(), t(expected), rtol=1e-6, atol=1e-6)


def test_ddpm_last_step_is_noiseless_mean():
    d = GaussianDiffusion.create(4, learn_sigma=False)
    x, out, _ = _inputs(3)
    x, out = torch.from_numpy(x), torch.from_numpy(out)
    m, _, _, px = d.p_mean_variance(out, x, 0)
    assert torch.allclose(m, px, rtol=1e-12)  # at step 0 the posterior mean is x_0 itself
    assert torch.equal(d.ddpm_step(out, x, 0, None), m)
    with pytest.raises(ValueError):
        d.ddpm_step(out, x, 1, None)
    with pytest.raises(IndexError):
        d.ddpm_step(out, x, 4, None)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_closed_form(eta):
    acp, acp_prev, alpha, beta, post_var = _hand_quantities()
    x, out, noise = _inputs(6)
    eps = out[:, :3]
    x0 = (x - math.sqrt(1 - acp) * eps) / math.sqrt(acp)
    sigma = eta * math.sqrt((1 - acp_prev) / (1 - acp) * (1 - alpha))
    expected = math.sqrt(acp_prev) * x0 + math.sqrt(1 - acp_prev - sigma**2) * eps + sigma * noise
    if eta == 1.0:
        assert sigma == pytest.approx(math.sqrt(post_var), rel=1e-12)

    d = GaussianDiffusion.create("4", method="ddim", eta=eta)  # not "ddim4", which keeps 0, 250, 500, 750
    t = torch.from_numpy
    got = d.ddim_step(t(out), t(x), STEP, noise=t(noise))
    assert torch.allclose(got, t(expected), rtol=1e-10, atol=1e-12)
    assert torch.equal(d.step(t(out), t(x), STEP, t(noise)), got)
    got32 = d.ddim_step(t(out).float(), t(x).float(), STEP, eta=eta, noise=t(noise).float())
    assert torch.allclose(got32.double(), t(expected), rtol=1e-6, atol=1e-6)


def test_learned_range_endpoints():
    d = GaussianDiffusion.create(250)
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    eps = torch.randn_like(x)
    for i in (0, 1, 100, 249):
        _, _, lv_lo, _ = d.p_mean_variance(torch.cat([eps, -torch.ones_like(x)], 1), x, i)
        _, _, lv_hi, _ = d.p_mean_variance(torch.cat([eps, torch.ones_like(x)], 1), x, i)
        assert torch.allclose(lv_lo, torch.full_like(x, d.posterior_log_variance_clipped[i]), rtol=1e-14)
        assert torch.allclose(lv_hi, torch.full_like(x, math.log(d.betas[i])), rtol=1e-14)


def test_output_shape_checked():
    d = GaussianDiffusion.create(4)
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="channels"):
        d.step(torch.zeros(1, 3, 2, 2), x, 1, torch.zeros_like(x))


# float32 cannot reach 1e-5: the rounding of x_T alone (~1e-7) is amplified by 1/sqrt(acp_T) ~ 158
# on the way to x_0, in DiT as here (DiT: 5.8e-5 on this case).
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_ddim_recovers_x0_with_true_eps(dtype, tol):
    d = GaussianDiffusion.create(50, method="ddim")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 4, 4, 4, generator=g, dtype=dtype) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=dtype)
    x = d.q_sample(x0, d.num_steps - 1, eps)

    def run(x):
        for i in range(d.num_steps - 1, -1, -1):
            x = d.step(torch.cat([eps, torch.zeros_like(eps)], 1), x, i)
            expected = math.sqrt(d.alphas_cumprod_prev[i]) * x0 + math.sqrt(1 - d.alphas_cumprod_prev[i]) * eps
            assert torch.allclose(x, expected, rtol=0, atol=tol)
        return x

    first, second = run(x), run(x)
    assert torch.equal(first, second)
    assert torch.allclose(first, x0, rtol=0, atol=tol)


def test_q_sample_int_and_tensor_agree():
    d = GaussianDiffusion.create(1000)
    x0 = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 500, 999])
    batched = d.q_sample(x0, t, noise)
    for k, tk in enumerate(t.tolist()):
        acp = np.prod(1.0 - linear_betas(1000)[: tk + 1])
        expected = math.sqrt(acp) * x0[k] + math.sqrt(1 - acp) * noise[k]
        assert torch.allclose(batched[k], expected, rtol=1e-10)
        assert torch.allclose(d.q_sample(x0[k : k + 1], tk, noise[k : k + 1])[0], expected, rtol=1e-10)


# ----------------------------------------------------------------------------- likelihood helpers


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(16, generator=g, dtype=torch.float64) for _ in range(4))
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)), torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    )
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), ref, rtol=1e-10)
    assert torch.allclose(normal_kl(m1, lv1, 0.0, 0.0), normal_kl(m1, lv1, torch.zeros_like(m1), torch.zeros_like(lv1)))


def test_discretized_likelihood_sums_to_one_over_bins():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in [(0.0, -2.0), (0.3, -4.0), (-0.9, 0.0)]:
        lp = discretized_gaussian_log_likelihood(
            levels, means=torch.full_like(levels, mean), log_scales=torch.full_like(levels, log_scale)
        )
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------------------------------- training losses


def _fixed_model(output, seen=None):
    def model(x_t, t, **kwargs):
        if seen is not None:
            seen.append((t.clone(), kwargs))
        return output

    return model


def test_training_losses_learned_sigma():
    d = GaussianDiffusion.create(1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 4, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    out = torch.randn(4, 8, 8, 8, generator=g)
    out[:, 4:] = out[:, 4:].tanh()
    out.requires_grad_(True)
    t = torch.tensor([0, 1, 500, 999])
    seen = []
    terms = d.training_losses(_fixed_model(out, seen), x0, t, {"y": 3}, noise=noise)

    assert set(terms) == {"loss", "mse", "vb"}
    for v in terms.values():
        assert v.shape == (4,) and torch.isfinite(v).all()
    assert (terms["vb"] > 0).all()
    mse = ((noise - out[:, :4]) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(terms["mse"], mse, rtol=1e-6)
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    assert torch.equal(seen[0][0], t) and seen[0][1] == {"y": 3}

    # The bound trains only the variance channels: the eps channels see the MSE alone.
    terms["vb"].sum().backward()
    assert torch.count_nonzero(out.grad[:, :4]) == 0
    assert torch.count_nonzero(out.grad[:, 4:]) > 0


def test_training_losses_vb_terms_by_hand():
    """KL (t > 0) and decoder NLL (t == 0), in bits, from independent formulas."""
    d = GaussianDiffusion.create(1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1
    out = torch.cat([eps, v], 1)
    betas = linear_betas(1000)
    for tk in (0, 300):
        t = torch.full((2,), tk)
        terms = d.training_losses(_fixed_model(out), x0, t, noise=noise)
        acp = np.prod(1 - betas[: tk + 1])
        acp_prev = np.prod(1 - betas[:tk]) if tk else 1.0
        beta = betas[tk]
        x_t = math.sqrt(acp) * x0 + math.sqrt(1 - acp) * noise
        pred_x0 = (x_t - math.sqrt(1 - acp) * eps) / math.sqrt(acp)
        c1 = math.sqrt(acp_prev) * beta / (1 - acp)
        c2 = math.sqrt(1 - beta) * (1 - acp_prev) / (1 - acp)
        if tk == 0:  # the posterior variance at t = 0 is zero; its clipped log uses t = 1's
            post_var = betas[1] * betas[0] / (1 - (1 - betas[0]) * (1 - betas[1]))
        else:
            post_var = beta * (1 - acp_prev) / (1 - acp)
        model_mean = c1 * pred_x0 + c2 * x_t
        frac = (v + 1) / 2
        log_var = frac * math.log(beta) + (1 - frac) * math.log(post_var)
        if tk == 0:
            std = torch.exp(0.5 * log_var)
            cdf = lambda z: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
            p = cdf((x0 - model_mean + 1 / 255) / std) - cdf((x0 - model_mean - 1 / 255) / std)
            expected = (-torch.log(p)).mean(dim=(1, 2, 3)) / math.log(2)
        else:
            true_mean = c1 * x0 + c2 * x_t
            var_q, var_p = post_var, torch.exp(log_var)
            kl = 0.5 * (torch.log(var_p / var_q) + (var_q + (true_mean - model_mean) ** 2) / var_p - 1)
            expected = kl.mean(dim=(1, 2, 3)) / math.log(2)
        assert torch.allclose(terms["vb"], expected, rtol=1e-8)


def test_training_losses_fixed_sigma_and_respaced_timesteps():
    x0 = torch.randn(2, 4, 4, 4)
    noise = torch.randn_like(x0)
    out = torch.randn(2, 4, 4, 4)
    fixed = GaussianDiffusion.create(1000, learn_sigma=False)
    terms = fixed.training_losses(_fixed_model(out), x0, torch.tensor([3, 7]), noise=noise)
    assert torch.equal(terms["vb"], torch.zeros(2))
    assert torch.equal(terms["loss"], terms["mse"])

    spaced = GaussianDiffusion.create(250)
    seen = []
    spaced.training_losses(_fixed_model(torch.cat([out, out.tanh()], 1), seen), x0, torch.tensor([0, 100]), noise=noise)
    assert seen[0][0].tolist() == [0, spaced.timestep_map[100]]
