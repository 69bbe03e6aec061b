"""Soak: many requests of varying batch, dtype, sampler and cache settings on one model through
``sample()`` (its shared executor) and step-by-step sessions; buffers and memory stay bounded and
every result equals the same request on a fresh copy of the model."""
import copy
import random
import resource

import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.sampling import executor_for

from ..models.conftest import TINY, randomize


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
def test_many_requests_stay_bounded_and_equal_a_fresh_model():
    # bf16-representable weights: sample(dtype=...) moves the model in place, and fp32 -> bf16 -> fp32
    # must not change it (with arbitrary fp32 weights it would, by design of an in-place cast)
    model = randomize(sk.SkipDiT(**TINY), std=0.05).to(torch.bfloat16).float()
    pristine = copy.deepcopy(model)
    rng = random.Random(0)
    settings = []
    for k in range(60):
        cache = rng.choice([None, 2, sk.SkipCache(interval=3, shallow_blocks=1),
                            sk.SkipCache(interval=2, shallow_blocks=2, forecast=rng.choice([0, 1, 2])),
                            sk.SkipCache(interval=2, shallow_blocks=1, forecast="auto")])
        settings.append(dict(labels=[rng.randrange(10) for _ in range(rng.choice([1, 2, 3]))],
                             dtype=rng.choice([torch.float32, torch.float32, torch.bfloat16]),
                             method=rng.choice(["ddim", "ddpm"]), cfg_scale=rng.choice([1.0, 3.0]), cache=cache,
                             seed=k))
    baseline = None
    for k, s in enumerate(settings):
        kw = dict(steps=6, method=s["method"], cfg_scale=s["cfg_scale"], cache=s["cache"], seed=s["seed"],
                  dtype=s["dtype"], progress=False)
        if k % 5 == 4:  # interleave an abandoned step-by-step request
            session = sk.enable_skip_cache(model.to(s["dtype"]), sk.SkipCache(interval=2, shallow_blocks=1))
            with torch.no_grad():
                n = len(s["labels"])
                model(torch.randn(n, 4, 8, 8, dtype=s["dtype"]), torch.full((n,), 900), torch.tensor(s["labels"]))
            session.close()
        got = sk.sample(model, s["labels"], **kw)
        fresh = copy.deepcopy(pristine)
        want = sk.sample(fresh, s["labels"], **kw)
        assert torch.equal(got, want), (k, s)
        if k == 20:
            baseline = rss_mib()
    ex = executor_for(model)
    # one idle buffer set per (signature, history size) at most: requests ran one at a time
    for sig in ex.signatures:
        sets = ex.buffer_sets(sig)
        assert len(sets) == len({(b.deep.slots, b.deep.residual) for b in sets})
    assert rss_mib() - baseline < 200
    assert "forward" not in model.__dict__
