"""Skip-Cache schedules and the machinery that runs a skip stack under them."""
from .schedule import SkipCache, SkipCacheState, input_signature
from .stack import SkipStack, forward_stack

__all__ = ["SkipCache", "SkipCacheState", "SkipStack", "forward_stack", "input_signature"]
