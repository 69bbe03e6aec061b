"""Adding and removing a diffusers ``HookRegistry`` hook on a module that accelerate may also hook.

Both wrap ``module.forward`` with an instance attribute: diffusers' registry chains its hooks, and
accelerate (``CpuOffload``, ``AlignDevicesHook``: ``enable_model_cpu_offload``, sequential offload,
``cpu_offload_with_hook``) keeps the forward below its own in ``module._old_forward`` and rewrites
``module.forward`` when its hooks are removed or re-added (``maybe_free_model_hooks`` at the end of
every pipeline call). A hook added this way runs in whatever order the two were added, once per
call; removing it must leave whatever was put on top of it in place, which ``remove_hook`` does.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook


class AddedHook:
    """A hook added to ``module``'s registry by ``add_hook``; ``remove()`` takes it out again."""

    def __init__(self, module: torch.nn.Module, hook: ModelHook, name: str):
        self.had_forward = "forward" in module.__dict__
        self.had_registry = hasattr(module, "_diffusers_hook")
        self.registry = HookRegistry.check_if_exists_or_initialize(module)
        self.registry.register_hook(hook, name)
        self.name = name
        self.wrapper = module.__dict__.get("forward")  # the registry's forward, ours on top

    def remove(self, module: torch.nn.Module) -> None:
        top = module.__dict__.get("forward")
        self.registry.remove_hook(self.name, recurse=False)  # may set module.forward to the one below ours
        if top is not self.wrapper:  # put on top later (accelerate, another wrapper) or already replaced
            if getattr(module, "_old_forward", None) is self.wrapper:  # accelerate wrapped ours: skip over it
                module._old_forward = module.__dict__.get("forward", type(module).forward.__get__(module))
            if top is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = top
        forward = module.__dict__.get("forward")
        if (
            not self.had_forward
            and getattr(forward, "__func__", None) is type(module).forward
            and (getattr(forward, "__self__", None) is module)
        ):
            del module.forward  # the registry leaves the bound class forward as an attribute
        ours = getattr(module, "_diffusers_hook", None) is self.registry
        if ours and not self.had_registry and not self.registry.hooks:
            del module._diffusers_hook
