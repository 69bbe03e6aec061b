"""Gaussian diffusion on DiT's conventions: linear betas, timestep respacing, eps prediction.

The process follows facebookresearch/DiT (``create_diffusion`` with its defaults): a linear beta
schedule over ``num_train_steps`` steps, optionally respaced to fewer steps, an epsilon-predicting
model called with *original-scale* timesteps, and either a learned-range variance (the model's
second half of channels) or DiT's fixed-large variance.

All schedule tables are float64 numpy arrays. For a sampling step (a single python-int index
``i``) the coefficients are read as python floats and combined in float64 before they touch a
tensor, so they reach float32 tensors with a single rounding; per-sample (tensor) indices, used in
training, gather the tables as float32 (float64 for float64 inputs), as DiT does. Results agree
with DiT's to float32 rounding.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = [
    "GaussianDiffusion",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "linear_betas",
    "mean_flat",
    "normal_kl",
    "space_timesteps",
]

_METHODS = ("ddpm", "ddim")


def linear_betas(num_steps: int = 1000) -> np.ndarray:
    """DiT's linear schedule: ``num_steps`` betas from 1e-4 to 0.02, both scaled by 1000/num_steps."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    scale = 1000.0 / num_steps
    return np.linspace(1e-4 * scale, 0.02 * scale, num_steps, dtype=np.float64)


def _ddim_stride_steps(num_timesteps: int, count: int) -> list[int]:
    # DiT searches strides 1 .. num_timesteps - 1 for one giving exactly `count` steps.
    for stride in range(1, num_timesteps):
        kept = range(0, num_timesteps, stride)
        if len(kept) == count:
            return list(kept)
    raise ValueError(f"cannot take exactly {count} of {num_timesteps} timesteps with an integer stride (ddim{count})")


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """Original timesteps kept by a respacing, sorted ascending.

    ``section_counts`` is "ddimN" (the integer stride giving exactly N steps from 0), or counts as a
    comma-separated string or a list of ints: the process is cut into ``len(counts)`` near-equal
    sections (earlier sections take the remainder) and section k keeps ``counts[k]`` evenly spaced
    steps, first and last included.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be positive, got {num_timesteps}")
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            try:
                count = int(spec[len("ddim") :])
            except ValueError:
                raise ValueError(f"bad respacing {section_counts!r}: expected 'ddimN'") from None
            return _ddim_stride_steps(num_timesteps, count)
        try:
            counts = [int(part) for part in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"bad respacing {section_counts!r}: expected comma-separated integers or 'ddimN'"
            ) from None
    else:
        counts = [int(c) for c in section_counts]
    if not counts:
        raise ValueError("respacing needs at least one section count")
    if any(c < 0 for c in counts):
        raise ValueError(f"section counts must be non-negative, got {counts}")

    base, extra = divmod(num_timesteps, len(counts))
    kept: set[int] = set()
    start = 0
    for k, count in enumerate(counts):
        size = base + (1 if k < extra else 0)
        if count > size:
            raise ValueError(f"cannot take {count} steps from a section of {size} timesteps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))  # Python's round, as DiT uses
            position += stride
        start += size
    if not kept:
        raise ValueError(f"respacing {section_counts!r} keeps no timesteps")
    return sorted(kept)


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (batch)."""
    return tensor.mean(dim=tuple(range(1, tensor.dim())))


def normal_kl(mean1: Any, logvar1: Any, mean2: Any, logvar2: Any) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats; args broadcast."""
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    lv1 = torch.as_tensor(logvar1, dtype=ref.dtype, device=ref.device)
    lv2 = torch.as_tensor(logvar2, dtype=ref.dtype, device=ref.device)
    sq_diff = (mean1 - mean2) ** 2
    return 0.5 * (lv2 - lv1 - 1.0 + torch.exp(lv1 - lv2) + sq_diff * torch.exp(-lv2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF through the tanh approximation used by DiT (and GELU)."""
    k = math.sqrt(2.0 / math.pi)
    return 0.5 * (1.0 + torch.tanh(k * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-probability (nats) of data in [-1, 1] quantized to 256 levels under N(means, exp(log_scales)^2).

    Each value owns a bin of half-width 1/255; the outermost bins (|x| > 0.999) extend to infinity.
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}"
        )
    inv_std = torch.exp(-log_scales)
    centered = x - means
    cdf_upper = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_lower = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_below_upper = torch.log(cdf_upper.clamp(min=1e-12))
    log_above_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
    log_in_bin = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    return torch.where(x < -0.999, log_below_upper, torch.where(x > 0.999, log_above_lower, log_in_bin))


class GaussianDiffusion:
    """A (possibly respaced) DiT diffusion process with eps prediction; step index 0 is the last step.

    ``betas`` is the full training schedule and ``use_timesteps`` the original timesteps to keep;
    the kept process has its own betas, ``1 - acp[t_k] / acp[t_{k-1}]``, so that its cumulative
    alphas are the original ones at the kept timesteps. ``timestep_map[k]`` is the original
    timestep of step k, the value the model is called with.
    """

    def __init__(
        self,
        betas: Sequence[float] | np.ndarray,
        use_timesteps: Sequence[int] | None = None,
        learn_sigma: bool = True,
        *,
        method: str = "ddpm",
        eta: float = 0.0,
    ) -> None:
        base_betas = np.asarray(betas, dtype=np.float64)
        if base_betas.ndim != 1 or base_betas.size == 0:
            raise ValueError("betas must be a non-empty 1-D sequence")
        if not ((base_betas > 0).all() and (base_betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if eta < 0:
            raise ValueError(f"eta must be non-negative, got {eta}")
        self.num_train_steps = int(base_betas.size)
        kept = sorted({int(t) for t in (range(self.num_train_steps) if use_timesteps is None else use_timesteps)})
        if not kept or kept[0] < 0 or kept[-1] >= self.num_train_steps:
            raise ValueError(f"kept timesteps must be a non-empty subset of [0, {self.num_train_steps})")

        self.learn_sigma = bool(learn_sigma)
        self.eta = float(eta)
        self._method = method
        self.timestep_map = np.asarray(kept, dtype=np.int64)

        # Respacing: new betas from the original cumulative alphas at the kept timesteps.
        base_acp = np.cumprod(1.0 - base_betas)
        new_betas = []
        previous = 1.0
        for t in kept:
            new_betas.append(1.0 - base_acp[t] / previous)
            previous = base_acp[t]
        self.betas = np.asarray(new_betas, dtype=np.float64)

        alphas = 1.0 - self.betas
        acp = np.cumprod(alphas)
        acp_prev = np.concatenate([[1.0], acp[:-1]])
        self.alphas_cumprod = acp
        self.alphas_cumprod_prev = acp_prev
        self.sqrt_alphas_cumprod = np.sqrt(acp)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - acp)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / acp)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / acp - 1.0)

        # Posterior q(x_{k-1} | x_k, x_0).
        self.posterior_variance = self.betas * (1.0 - acp_prev) / (1.0 - acp)
        # Variance at step 0 is zero; use step 1's (a one-step process falls back to beta_0).
        first = self.posterior_variance[1] if self.num_steps > 1 else self.betas[0]
        self.posterior_log_variance_clipped = np.log(np.concatenate([[first], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = self.betas * np.sqrt(acp_prev) / (1.0 - acp)
        self.posterior_mean_coef2 = (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp)

        self.log_betas = np.log(self.betas)
        # DiT's FIXED_LARGE: betas, with step 0 taking the posterior variance of step 1.
        self.fixed_large_variance = np.concatenate([[first], self.betas[1:]])
        self.fixed_large_log_variance = np.log(self.fixed_large_variance)

    # ------------------------------------------------------------------ construction / properties

    @classmethod
    def create(
        cls,
        steps: int | str = 250,
        method: str = "ddpm",
        learn_sigma: bool = True,
        num_train_steps: int = 1000,
        eta: float = 0.0,
    ) -> "GaussianDiffusion":
        """DiT's ``create_diffusion`` on a linear schedule.

        An int ``steps`` respaces as ``str(steps)`` for "ddpm" (DiT's sample.py) or ``f"ddim{steps}"``
        for "ddim"; a str is used as the respacing itself ("" keeps every step). ``eta`` is DDIM's.
        """
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if isinstance(steps, str):
            respacing = steps
        elif isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
            if steps < 1:
                raise ValueError(f"steps must be positive, got {steps}")
            respacing = f"ddim{steps}" if method == "ddim" else str(steps)
        else:
            raise TypeError(f"steps must be an int or a respacing string, got {steps!r}")
        kept = space_timesteps(num_train_steps, respacing) if respacing.strip() else None
        return cls(linear_betas(num_train_steps), kept, learn_sigma, method=method, eta=eta)

    @property
    def num_steps(self) -> int:
        """Number of steps of the (respaced) process."""
        return int(self.betas.size)

    @property
    def timesteps(self) -> list[int]:
        """Original-scale timesteps in sampling order (descending); entry j belongs to step index num_steps-1-j."""
        return [int(t) for t in self.timestep_map[::-1]]

    @property
    def method(self) -> str:
        """ "ddpm" or "ddim": what ``step`` does."""
        return self._method

    @property
    def is_stochastic(self) -> bool:
        """Whether ``step`` consumes noise: DDPM, or DDIM with eta > 0."""
        return self._method == "ddpm" or self.eta > 0

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(method={self._method!r}, num_steps={self.num_steps}, "
            f"num_train_steps={self.num_train_steps}, learn_sigma={self.learn_sigma}, eta={self.eta})"
        )

    # ------------------------------------------------------------------ helpers

    def _check_index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.num_steps:
            raise IndexError(f"step index {i} out of range [0, {self.num_steps})")
        return i

    @staticmethod
    def _is_scalar_index(i: Any) -> bool:
        return isinstance(i, (int, np.integer)) or (isinstance(i, torch.Tensor) and i.dim() == 0)

    def _coef(self, table: np.ndarray, i: Any, like: torch.Tensor) -> float | torch.Tensor:
        """``table[i]``: a python float for a scalar index, else per-sample values broadcastable to ``like``."""
        if self._is_scalar_index(i):
            return float(table[self._check_index(i)])
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        values = torch.as_tensor(table, dtype=dtype, device=like.device)[i]
        return values.reshape(-1, *([1] * (like.dim() - 1)))

    @staticmethod
    def _as_full(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.expand(like.shape)
        return torch.full_like(like, value)

    def _split_output(self, model_output: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        channels = x.shape[1]
        expected = 2 * channels if self.learn_sigma else channels
        if model_output.shape != (x.shape[0], expected, *x.shape[2:]):
            raise ValueError(
                f"model output of shape {tuple(model_output.shape)} does not fit x of shape {tuple(x.shape)} "
                f"(expected {expected} channels, learn_sigma={self.learn_sigma})"
            )
        if not self.learn_sigma:
            return model_output, None
        return model_output[:, :channels], model_output[:, channels:]

    def _log_variance(self, var_values: torch.Tensor | None, i: Any, x: torch.Tensor) -> float | torch.Tensor:
        if var_values is None:
            return self._coef(self.fixed_large_log_variance, i, x)
        # LEARNED_RANGE: var_values in [-1, 1] interpolate (in log space) posterior variance .. beta.
        min_log = self._coef(self.posterior_log_variance_clipped, i, x)
        max_log = self._coef(self.log_betas, i, x)
        frac = (var_values + 1) / 2
        return frac * max_log + (1 - frac) * min_log

    def _pred_xstart(self, x: torch.Tensor, i: Any, eps: torch.Tensor) -> torch.Tensor:
        recip = self._coef(self.sqrt_recip_alphas_cumprod, i, x)
        recipm1 = self._coef(self.sqrt_recipm1_alphas_cumprod, i, x)
        return recip * x - recipm1 * eps

    def _posterior_mean(self, x_start: torch.Tensor, x_t: torch.Tensor, i: Any) -> torch.Tensor:
        coef1 = self._coef(self.posterior_mean_coef1, i, x_t)
        coef2 = self._coef(self.posterior_mean_coef2, i, x_t)
        return coef1 * x_start + coef2 * x_t

    # ------------------------------------------------------------------ sampling

    def p_mean_variance(
        self, model_output: torch.Tensor, x: torch.Tensor, i: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model's p(x_{i-1} | x_i): (mean, variance, log_variance, pred_xstart), no clipping of x_0.

        ``i`` is the step index of this process (a per-sample index tensor is accepted too).
        """
        eps, var_values = self._split_output(model_output, x)
        log_var = self._as_full(self._log_variance(var_values, i, x), x)
        pred_xstart = self._pred_xstart(x, i, eps)
        mean = self._posterior_mean(pred_xstart, x, i)
        return mean, torch.exp(log_var), log_var, pred_xstart

    def ddpm_step(
        self, model_output: torch.Tensor, x: torch.Tensor, i: int, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Ancestral sample x_{i-1} = mean + exp(log_var / 2) * noise (no noise at i == 0)."""
        i = self._check_index(i)
        eps, var_values = self._split_output(model_output, x)
        mean = self._posterior_mean(self._pred_xstart(x, i, eps), x, i)
        if i == 0:
            return mean
        if noise is None:
            raise ValueError("ddpm_step needs noise for steps other than the last (i == 0)")
        log_var = self._log_variance(var_values, i, x)
        std = torch.exp(0.5 * log_var) if isinstance(log_var, torch.Tensor) else math.exp(0.5 * log_var)
        return mean + std * noise

    def ddim_step(
        self,
        model_output: torch.Tensor,
        x: torch.Tensor,
        i: int,
        eta: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM update to x_{i-1} (eta=None uses ``self.eta``; noise is needed only when eta > 0 and i > 0)."""
        i = self._check_index(i)
        eta = self.eta if eta is None else float(eta)
        eps, _ = self._split_output(model_output, x)
        pred_xstart = self._pred_xstart(x, i, eps)
        # Re-derive eps from x_0, as DiT does.
        eps = (float(self.sqrt_recip_alphas_cumprod[i]) * x - pred_xstart) / float(self.sqrt_recipm1_alphas_cumprod[i])
        acp = float(self.alphas_cumprod[i])
        acp_prev = float(self.alphas_cumprod_prev[i])
        sigma = eta * math.sqrt((1 - acp_prev) / (1 - acp)) * math.sqrt(1 - acp / acp_prev)
        direction = math.sqrt(max(0.0, 1 - acp_prev - sigma**2))
        sample = pred_xstart * math.sqrt(acp_prev) + direction * eps
        if eta > 0 and i != 0:
            if noise is None:
                raise ValueError("ddim_step with eta > 0 needs noise for steps other than the last (i == 0)")
            sample = sample + sigma * noise
        return sample

    def step(
        self, model_output: torch.Tensor, x: torch.Tensor, i: int, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One sampling step from x_i to x_{i-1} with ``self.method``."""
        if self._method == "ddpm":
            return self.ddpm_step(model_output, x, i, noise)
        return self.ddim_step(model_output, x, i, noise=noise)

    # ------------------------------------------------------------------ training

    def q_sample(
        self, x_start: torch.Tensor, i_or_t: int | torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sample q(x_i | x_0) = sqrt(acp_i) x_0 + sqrt(1 - acp_i) noise (an index per sample, or one int)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x_start shape {tuple(x_start.shape)}")
        return (
            self._coef(self.sqrt_alphas_cumprod, i_or_t, x_start) * x_start
            + self._coef(self.sqrt_one_minus_alphas_cumprod, i_or_t, x_start) * noise
        )

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original-scale timesteps (what the model sees) for step indices ``t``."""
        return torch.as_tensor(self.timestep_map, device=t.device, dtype=t.dtype)[t]

    def _vb_bits(
        self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample variational-bound term in bits: posterior KL, or decoder NLL where t == 0."""
        true_mean = self._posterior_mean(x_start, x_t, t)
        true_log_var = self._coef(self.posterior_log_variance_clipped, t, x_t)
        mean, _, log_var, _ = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, means=mean, log_scales=0.5 * log_var)
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model: Callable[..., torch.Tensor],
        x_start: torch.Tensor,
        t: torch.Tensor | int,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """DiT's training loss at step indices ``t`` (original timesteps when unspaced): per-sample tensors.

        "mse" is the eps MSE; "vb" the variational-bound term in bits with the predicted mean detached
        (learned sigma only; zeros otherwise; not rescaled, as DiT's default MSE loss); "loss" = mse + vb.
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        batch = x_start.shape[0]
        if not isinstance(t, torch.Tensor):
            t = torch.full((batch,), int(t), device=x_start.device, dtype=torch.long)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        model_output = model(x_t, self.model_timesteps(t), **model_kwargs)
        eps, var_values = self._split_output(model_output, x_t)

        if var_values is not None:
            # The bound trains only the variance: the mean goes through detached.
            frozen = torch.cat([eps.detach(), var_values], dim=1)
            vb = self._vb_bits(frozen, x_start, x_t, t)
        else:
            vb = torch.zeros(batch, device=x_start.device, dtype=eps.dtype)
        mse = mean_flat((noise - eps) ** 2)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
