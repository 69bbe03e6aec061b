"""What the fast blocks share: whether a block can be replaced by a computation on its own
parameters (no hook, instance forward, accelerate hook or train mode anywhere in it), and the
structural checks of its plain submodules."""

from __future__ import annotations

import torch
from diffusers.models.activations import GELU


def no_hooks_eval(block) -> bool:
    """No global hook, and no hook, instance forward (a wrapper, a patch), accelerate hook or train
    mode on the block or any submodule: what the fast paths need to replace the block's forward."""
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return False
    return not any(
        m.training or m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ or hasattr(m, "_hf_hook")
        for m in block.modules()
    )


def plain_linears(*modules) -> bool:
    return all(type(m) is torch.nn.Linear for m in modules)


def plain_gelu_mlp(net) -> bool:
    """diffusers' FeedForward ``net`` as [tanh-GELU(Linear), Dropout, Linear] (+ a final Dropout);
    the dropouts are identities in eval mode."""
    return (
        len(net) in (3, 4) and type(net[0]) is GELU and net[0].approximate == "tanh" and plain_linears(net[0].proj, net[2])
        and all(type(m) is torch.nn.Dropout for m in (net[1], *net[3:]))
    )  # fmt: skip
