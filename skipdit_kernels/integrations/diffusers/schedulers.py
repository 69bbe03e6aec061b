"""Which diffusers schedulers integrate an ODE: ``forecast="auto"`` forecasts the cached state for
those and reuses it (the published behaviour) for every other one."""

from __future__ import annotations

import diffusers

#: Scheduler classes that integrate an ODE (no noise injected per step) when their config and the
#: call say so; see ``scheduler_is_stochastic``.
DETERMINISTIC_SCHEDULERS = (
    "DDIMScheduler",  # with eta == 0
    "DPMSolverMultistepScheduler",  # algorithm_type without "sde"
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "PNDMScheduler",
    "IPNDMScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "EulerDiscreteScheduler",  # the pipelines here never pass s_churn
    "FlowMatchEulerDiscreteScheduler",  # without stochastic_sampling
)


def scheduler_is_stochastic(scheduler, eta: float = 0.0) -> bool:
    """Whether ``scheduler`` injects fresh noise each step. Deterministic only for an instance of a
    class named in ``DETERMINISTIC_SCHEDULERS`` (by exact class, so a subclass that changes the
    update is not assumed deterministic) whose config has no SDE variant and, for DDIM, with the
    call's ``eta == 0``; everything else, unknown schedulers included, counts as stochastic, which
    makes ``forecast="auto"`` reuse (the published behaviour)."""
    name = type(scheduler).__name__
    if name not in DETERMINISTIC_SCHEDULERS or getattr(diffusers, name, None) is not type(scheduler):
        return True
    config = getattr(scheduler, "config", {})
    if "sde" in str(config.get("algorithm_type", "")) or config.get("stochastic_sampling", False):
        return True
    return name == "DDIMScheduler" and float(eta or 0.0) != 0.0
