"""Diffusion on DiT's conventions, the sampler that drives a model through it, and the cache-aware
executor that runs its trajectories."""
from .diffusion import GaussianDiffusion, space_timesteps
from .executor import Signature, SkipStackExecutor, StepBuffers, executor_for
from .sample import SampleInfo, sample

__all__ = [
    "GaussianDiffusion",
    "SampleInfo",
    "Signature",
    "SkipStackExecutor",
    "StepBuffers",
    "executor_for",
    "sample",
    "space_timesteps",
]
