"""Diffusion on DiT's conventions, the sampler that drives a model through it, and the cache-aware
executor that runs its trajectories."""

from .batched import BatchedResult, BatchedSampler, StepReport
from .diffusion import GaussianDiffusion, space_timesteps
from .executor import Signature, SkipStackExecutor, StepBuffers, executor_for
from .sample import SampleInfo, sample

__all__ = [
    "BatchedResult",
    "BatchedSampler",
    "GaussianDiffusion",
    "SampleInfo",
    "Signature",
    "SkipStackExecutor",
    "StepBuffers",
    "StepReport",
    "executor_for",
    "sample",
    "space_timesteps",
]
