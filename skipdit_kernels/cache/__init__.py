"""Skip-Cache schedules and the machinery that runs a skip stack under them."""
from .schedule import SkipCache, SkipCacheState, input_signature
from .stack import SkipStack, forward_stack
from .executor import Signature, SkipStackExecutor, StepBuffers, executor_for

__all__ = [
    "Signature",
    "SkipCache",
    "SkipCacheState",
    "SkipStack",
    "SkipStackExecutor",
    "StepBuffers",
    "executor_for",
    "forward_stack",
    "input_signature",
]
