"""Soak: pipelines sharing one transformer, each with its own Skip-Cache options, applied, replaced and
removed in random order, calls that raise at a random block; every call that completes equals a
fresh pipeline's call with the same options (bounded in time)."""

from __future__ import annotations

import copy
import random
import time
import warnings

import pytest
import torch

pytest.importorskip("diffusers")

import diffusers  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.integrations import diffusers as sd  # noqa: E402

from .test_diffusers import dit_call, dit_pipeline  # noqa: E402

SECONDS = 20.0
OPTIONS = (  # (schedule, fast blocks); None: Skip-Cache not applied
    None,
    (sk.SkipCache(interval=1, shallow_blocks=1), False),
    (sk.SkipCache(interval=2, shallow_blocks=1, start_t=1000), True),
    (sk.SkipCache(interval=2, shallow_blocks=2, start_t=1000, forecast=1), False),
    (sk.SkipCache(interval=3, shallow_blocks=1, start_t=1000, forecast=1), True),
)


class Injected(RuntimeError):
    pass


def _apply(pipe, option) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "already had Skip-Cache": replacing is part of the soak
        if option is None:
            sd.remove_skip_cache(pipe)
        else:
            sd.apply_skip_cache(pipe, option[0], fast_blocks=option[1])


@pytest.mark.slow
def test_pipelines_sharing_a_transformer_keep_their_options_through_faults_and_reapplication():
    base = dit_pipeline()
    pristine = copy.deepcopy(base.transformer)
    expected = {}
    for k, option in enumerate(OPTIONS):  # each option set on a pipeline of its own transformer
        fresh = diffusers.DiTPipeline(copy.deepcopy(pristine), base.vae, base.scheduler)
        _apply(fresh, option)
        expected[k] = dit_call(fresh)
    assert not torch.equal(expected[0], expected[2])  # the cached schedules change the output

    pipes = [diffusers.DiTPipeline(base.transformer, base.vae, copy.deepcopy(base.scheduler)) for _ in range(3)]
    chosen = [0, 0, 0]
    rng = random.Random(0)
    counts = dict(calls=0, raised=0, applied=0)
    started = time.monotonic()
    while time.monotonic() - started < SECONDS:
        i = rng.randrange(len(pipes))
        if rng.random() < 0.3:
            chosen[i] = rng.randrange(len(OPTIONS))
            _apply(pipes[i], OPTIONS[chosen[i]])
            counts["applied"] += 1
            continue
        hook = None
        if rng.random() < 0.4:
            block = rng.choice(list(base.transformer.transformer_blocks))
            fire_at = rng.randrange(1, 12)
            seen = [0]

            def fail(module, args, seen=seen, fire_at=fire_at):
                seen[0] += 1
                if seen[0] == fire_at:
                    raise Injected("injected")

            hook = block.register_forward_pre_hook(fail)
        try:
            out = dit_call(pipes[i])
        except Injected:
            counts["raised"] += 1
            continue
        finally:
            if hook is not None:
                hook.remove()
        counts["calls"] += 1
        want = expected[chosen[i]]
        if hook is not None and OPTIONS[chosen[i]] is not None and OPTIONS[chosen[i]][1]:
            # a hooked block is not plain: it ran diffusers' forward instead of the fast block
            torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(out, want), (i, OPTIONS[chosen[i]], counts)
    assert counts["calls"] >= 5 and counts["raised"] >= 1, counts
    for pipe in pipes:
        sd.remove_skip_cache(pipe)
        assert type(pipe) is diffusers.DiTPipeline
    assert torch.equal(dit_call(pipes[0]), expected[0])
