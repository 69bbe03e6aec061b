"""A sampling trajectory as the executor runs it: DiT's DDPM / DDIM update from a per-step
coefficient table, and classifier-free guidance, both capture-safe.

The coefficients of step k (columns ``COEF_*``) are computed on the host in float64 with
``GaussianDiffusion``'s formulas and uploaded as one float32 row per step; the update reads them as
0-dim views of that row where ``GaussianDiffusion.step`` uses python floats (equal to the float32
rounding the scalar gets there), so the trajectory equals a loop of ``GaussianDiffusion.step``. The
last step (index 0) takes zero noise instead of a branch, so one captured graph serves every step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import ops
from .diffusion import GaussianDiffusion

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
NUM_COEF = 11


def sampler_coefficients(diffusion: GaussianDiffusion, cfg_scale: float = 1.0) -> np.ndarray:
    """(num_steps, NUM_COEF) float64, row i for step index i, with GaussianDiffusion's formulas."""
    n = diffusion.num_steps
    table = np.zeros((n, NUM_COEF), dtype=np.float64)
    eta = float(diffusion.eta)
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
        ]
    return table


class SamplerTrajectory:
    """One sampling run of ``diffusion`` for the executor (``executor.Trajectory``).

    ``guided``: leading channels guidance mixes (the stack's ``guided_channels``); ``channel_dim``:
    where a batched latent keeps its channels; ``generator``: the CPU generator stochastic samplers
    draw their noise from, one (N, *latent) draw per step in order."""

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        cfg_scale: float = 1.0,
        guided: int = 0,
        channel_dim: int = 1,
        generator: torch.Generator | None = None,
    ):
        if diffusion.is_stochastic and generator is None:
            raise ValueError("a stochastic sampler needs a generator")
        self.diffusion = diffusion
        self.cfg_scale = float(cfg_scale)
        self.cfg = self.cfg_scale > 1.0
        self.guided = int(guided) if self.cfg else 0
        self.channel_dim = int(channel_dim)
        self.generator = generator
        self.timesteps = diffusion.timesteps
        self.key = (
            diffusion.method,
            diffusion.learn_sigma,
            diffusion.is_stochastic,
            self.cfg,
            self.guided,
            self.channel_dim,
        )

    def coefficients(self) -> torch.Tensor:
        rows = sampler_coefficients(self.diffusion, self.cfg_scale)[::-1].copy()  # row k: step k
        return torch.from_numpy(rows).to(torch.float32)

    def noise(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        if not self.diffusion.is_stochastic:
            return None
        draws = [torch.randn(shape, generator=self.generator) for _ in self.timesteps]
        draws[-1].zero_()  # the last step (i == 0) takes no noise
        return torch.stack(draws)

    def model_output(self, out: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        if not self.cfg:
            return out.float()
        n, cd, g = out.shape[0] // 2, self.channel_dim, self.guided
        cond, uncond = out[:n], out[n:]
        guided = ops.classifier_free_guidance(cond.narrow(cd, 0, g), uncond.narrow(cd, 0, g), coef[COEF_CFG])
        rest = cond.narrow(cd, g, cond.shape[cd] - g)
        return torch.cat([guided, rest], dim=cd).float()

    def update(
        self, x: torch.Tensor, model_output: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """x_{i-1} from fp32 ``x``: the ops of ``GaussianDiffusion.ddpm_step`` / ``ddim_step`` in their order."""
        cd = self.channel_dim
        channels = x.shape[cd]
        eps = model_output.narrow(cd, 0, channels)
        pred_xstart = coef[COEF_RECIP] * x - coef[COEF_RECIPM1] * eps
        if self.diffusion.method == "ddpm":
            mean = coef[COEF_POST1] * pred_xstart + coef[COEF_POST2] * x
            if self.diffusion.learn_sigma:
                frac = (model_output.narrow(cd, channels, channels) + 1) / 2
                log_var = frac * coef[COEF_MAX_LOG] + (1 - frac) * coef[COEF_MIN_LOG]
                std = torch.exp(0.5 * log_var)
            else:
                std = coef[COEF_STD]
            return mean + std * noise
        eps = (coef[COEF_RECIP] * x - pred_xstart) / coef[COEF_RECIPM1]
        sample = pred_xstart * coef[COEF_SQRT_ACP_PREV] + coef[COEF_DIRECTION] * eps
        if self.diffusion.is_stochastic:
            sample = sample + coef[COEF_SIGMA] * noise
        return sample
