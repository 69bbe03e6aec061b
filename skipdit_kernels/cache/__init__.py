"""Skip-Cache: the schedule, the skip-stack contract, the deep state at the traversal's boundary and
step-by-step requests. Nothing here names a model family. (The cache-aware executor, which runs
whole sampling trajectories, is ``skipdit_kernels.sampling.executor``.)"""

from .protocol import (
    Condition,
    ForwardBinding,
    SamplerStack,
    SkipStack,
    as_skip_stack,
    register_skip_stack,
    run_units,
    skip_partners,
)
from .request import SkipCacheSession, disable_skip_cache, enable_skip_cache
from .schedule import PlannedStep, ScheduleCursor, SkipCache

__all__ = [
    "Condition",
    "ForwardBinding",
    "PlannedStep",
    "SamplerStack",
    "ScheduleCursor",
    "SkipCache",
    "SkipCacheSession",
    "SkipStack",
    "as_skip_stack",
    "disable_skip_cache",
    "enable_skip_cache",
    "register_skip_stack",
    "run_units",
    "skip_partners",
]
