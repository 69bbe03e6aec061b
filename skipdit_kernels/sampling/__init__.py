"""Diffusion on DiT's conventions, and the sampler that drives a model through it."""
from .diffusion import GaussianDiffusion, space_timesteps
from .sample import SampleInfo, sample

__all__ = ["GaussianDiffusion", "SampleInfo", "sample", "space_timesteps"]
