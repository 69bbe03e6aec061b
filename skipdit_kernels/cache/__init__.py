"""Skip-Cache: the schedule, the skip-stack contract, the one cached forward, step-by-step requests
and the cache-aware executor. Nothing here names a model family."""
from .schedule import PlannedStep, ScheduleCursor, SkipCache
from .protocol import SkipStack, as_skip_stack, register_skip_stack, skip_partners
from .request import SkipCacheSession, disable_skip_cache, enable_skip_cache
from .executor import Signature, SkipStackExecutor, StepBuffers, executor_for

__all__ = [
    "PlannedStep",
    "ScheduleCursor",
    "Signature",
    "SkipCache",
    "SkipCacheSession",
    "SkipStack",
    "SkipStackExecutor",
    "StepBuffers",
    "as_skip_stack",
    "disable_skip_cache",
    "enable_skip_cache",
    "executor_for",
    "register_skip_stack",
    "skip_partners",
]
