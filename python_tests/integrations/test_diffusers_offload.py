"""Skip-Cache with accelerate's CPU offload hooks on the transformer (model offload: ``CpuOffload``,
sequential offload: ``AlignDevicesHook`` on every module with parameters), in both orders of
application, with the execution device cpu so the hooks run here: the cached call equals the same
call without offload, the transformer's hook runs on every step, removal leaves the hooks working."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

from accelerate.hooks import remove_hook_from_module  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.integrations import diffusers as sd  # noqa: E402

from .test_diffusers import FAMILIES, STEPS, _cache_for, _hunyuan_inputs, _hunyuan_transformer  # noqa: E402

CPU = torch.device("cpu")


def _count_hook(module: torch.nn.Module) -> list[int]:
    """Counts of [pre_forward, post_forward] of the accelerate hook on ``module`` itself."""
    hook, counts = module._hf_hook, [0, 0]
    pre, post = hook.pre_forward, hook.post_forward

    def pre_forward(*args, **kwargs):
        counts[0] += 1
        return pre(*args, **kwargs)

    def post_forward(*args, **kwargs):
        counts[1] += 1
        return post(*args, **kwargs)

    hook.pre_forward, hook.post_forward = pre_forward, post_forward
    return counts


def _model_offload(pipe):
    pipe.enable_model_cpu_offload(device=CPU)


def _sequential_offload(pipe):
    # pipe.enable_sequential_cpu_offload(device="cpu") fails on CPU without Skip-Cache too (accelerate
    # 1.15 turns a VAE Conv2d weight into a plain tensor), so the transformer is offloaded as it does it
    accelerate.cpu_offload(pipe.transformer, CPU, offload_buffers=len(pipe.transformer._parameters) > 0)
    assert all(p.device.type == "meta" for p in pipe.transformer.parameters())  # a bypassed hook would fail


OFFLOADS = {"model": _model_offload, "sequential": _sequential_offload}


@pytest.mark.parametrize("order", ["offload_then_cache", "cache_then_offload"])
@pytest.mark.parametrize(
    "family, offload",
    # HunyuanDiT under sequential offload fails without Skip-Cache: its AttentionPool reads the
    # weights of Linear layers it never calls, which stay on the meta device
    [(f, o) for f in sorted(FAMILIES) for o in OFFLOADS if (f, o) != ("hunyuan", "sequential")],
)
def test_cached_pipeline_under_offload_equals_it_without(family, offload, order):
    make, call = FAMILIES[family]
    pipe = make()
    cache = _cache_for(family, start_t=1000 if family != "hunyuan" else 700)
    # DiT's fast blocks fall back to diffusers' forward under sequential offload (hooks on the blocks'
    # layers), so the reference without offload takes the same path
    fast = offload == "model"
    plain = call(pipe)
    sd.apply_skip_cache(pipe, cache, fast_blocks=fast)
    expected = call(pipe)
    sd.remove_skip_cache(pipe)
    assert not torch.equal(expected, plain)

    if order == "cache_then_offload":
        sd.apply_skip_cache(pipe, cache, fast_blocks=fast)
    OFFLOADS[offload](pipe)
    if order == "offload_then_cache":
        sd.apply_skip_cache(pipe, cache, fast_blocks=fast)
    for _ in range(2):  # model offload puts fresh hooks on at the end of each call (maybe_free_model_hooks)
        counts = _count_hook(pipe.transformer)
        assert torch.equal(call(pipe), expected)
        assert counts == [STEPS, STEPS]  # the transformer's hook ran around every step, cached ones included
    sd.remove_skip_cache(pipe)
    counts = _count_hook(pipe.transformer)
    assert torch.equal(call(pipe), plain)
    assert counts == [STEPS, STEPS]


@pytest.mark.parametrize("order", ["session_then_hook", "hook_then_session"])
def test_bare_transformer_session_under_a_hook(order):
    t = _hunyuan_transformer()
    kw = _hunyuan_inputs(t)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    steps = [torch.tensor([v, v]) for v in (500.0, 400.0, 300.0, 200.0)]
    cache = sk.SkipCache.preset("video")

    def run():
        return [t(x, s, **kw)[0] for s in steps]

    with torch.no_grad():
        plain = run()
        with sd.enable_skip_cache(t, cache):
            expected = run()
        if order == "session_then_hook":
            session = sd.enable_skip_cache(t, cache)
            accelerate.cpu_offload_with_hook(t, CPU)
        else:
            accelerate.cpu_offload_with_hook(t, CPU)
            session = sd.enable_skip_cache(t, cache)
        counts = _count_hook(t)
        got = run()
        assert session.cached_steps > 0
        sd.disable_skip_cache(t)
        after = run()
        remove_hook_from_module(t)
        unhooked = run()
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert counts == [2 * len(steps), 2 * len(steps)]  # each cached step once (not twice), then the plain ones
    for a, b, c in zip(after, unhooked, plain):
        assert torch.equal(a, c) and torch.equal(b, c)
