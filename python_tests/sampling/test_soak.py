"""Soak: many requests of varying batch, dtype, sampler and cache settings on one model through
``sample()`` (its shared executor) and step-by-step sessions; buffers and memory stay bounded and
every result equals the same request on a fresh copy of the model."""

import copy
import random
import resource
import threading
import time

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
        cache = rng.choice(
            [
                None,
                2,
                sk.SkipCache(interval=3, shallow_blocks=1),
                sk.SkipCache(interval=2, shallow_blocks=2, forecast=rng.choice([0, 1, 2])),
                sk.SkipCache(interval=2, shallow_blocks=1, forecast="auto"),
            ]
        )
        settings.append(
            dict(
                labels=[rng.randrange(10) for _ in range(rng.choice([1, 2, 3]))],
                dtype=rng.choice([torch.float32, torch.float32, torch.bfloat16]),
                method=rng.choice(["ddim", "ddpm"]),
                cfg_scale=rng.choice([1.0, 3.0]),
                cache=cache,
                seed=k,
            )
        )
    baseline = None
    for k, s in enumerate(settings):
        kw = dict(
            steps=6,
            method=s["method"],
            cfg_scale=s["cfg_scale"],
            cache=s["cache"],
            seed=s["seed"],
            dtype=s["dtype"],
            progress=False,
        )
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


# -- faults: requests that raise at random points, sessions opened and closed in random orders -------

SOAK_SECONDS = 30  # the budget of the fault soak (CPU, one thread); it stops early, never runs longer
FAULT_CACHES = [
    sk.SkipCache(interval=2, shallow_blocks=1),
    sk.SkipCache(interval=3, shallow_blocks=2, forecast=1),
    sk.SkipCache(interval=2, shallow_blocks=1, start_t=900, forecast=2),
]


class Faults:
    """Forward pre-hooks on every block of ``model`` raising ``exc`` at the ``countdown``-th block
    call after ``arm`` (no-ops otherwise; they change no arithmetic)."""

    def __init__(self, model):
        self.countdown, self.exc, self.fired = None, None, 0
        self.handles = [b.register_forward_pre_hook(self._hook) for b in model.blocks]

    def arm(self, rng):
        self.countdown, self.exc = (
            rng.randrange(12),
            rng.choice([RuntimeError("out of memory (soak)"), KeyboardInterrupt()]),
        )

    def _hook(self, module, inputs):
        if self.countdown is not None:
            if self.countdown == 0:
                self.countdown, self.fired = None, self.fired + 1
                raise self.exc
            self.countdown -= 1

    def remove(self):
        for h in self.handles:
            h.remove()


class Soak:
    """One model under random requests; every result is checked against a model that never saw a
    fault nor another request: a fresh copy for ``sample()`` and the plain forward, and per session
    a shadow session on its own copy fed only the steps that completed. ``KINDS`` lists the request
    kinds drawn (another kind, e.g. pipelines sharing components, is one more method and entry)."""

    KINDS = ("sample", "open", "close", "close_from_thread", "step", "step", "step")

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.model = randomize(sk.SkipDiT(**TINY), std=0.05)
        self.pristine = copy.deepcopy(self.model)
        self.faults = Faults(self.model)
        self.sessions = []  # (session, shadow session, shadow model, [timestep of its next step]), oldest first
        self.counts = dict.fromkeys(self.KINDS, 0)

    def run_maybe_failing(self, fn):
        if self.rng.random() < 0.4:
            self.faults.arm(self.rng)
        try:
            return True, fn()
        except (RuntimeError, KeyboardInterrupt) as exc:
            assert "soak" in str(exc) or isinstance(exc, KeyboardInterrupt), exc
            return False, None
        finally:
            self.faults.countdown = None

    def sample(self):
        kw = dict(
            steps=self.rng.choice([4, 6]),
            method=self.rng.choice(["ddim", "ddpm"]),
            seed=self.rng.randrange(99),
            cfg_scale=self.rng.choice([1.0, 3.0]),
            cache=self.rng.choice([None, *FAULT_CACHES]),
            progress=False,
        )
        labels = [self.rng.randrange(10) for _ in range(self.rng.choice([1, 2]))]
        done, got = self.run_maybe_failing(lambda: sk.sample(self.model, labels, **kw))
        if done:
            assert torch.equal(got, sk.sample(copy.deepcopy(self.pristine), labels, **kw)), kw

    def open(self):
        cache = self.rng.choice(FAULT_CACHES)
        shadow = copy.deepcopy(self.pristine)
        self.sessions.append(
            (sk.enable_skip_cache(self.model, cache), sk.enable_skip_cache(shadow, cache), shadow, [999])
        )

    def _pop(self):
        return self.sessions.pop(self.rng.randrange(len(self.sessions))) if self.sessions else None

    def close(self):
        entry = self._pop()
        if entry is not None:
            entry[0].close(), entry[1].close()

    def close_from_thread(self):
        entry = self._pop()
        if entry is not None:
            thread = threading.Thread(target=entry[0].close)
            thread.start()
            thread.join()
            entry[1].close()

    def step(self):
        n = self.rng.choice([1, 2])
        x = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(self.rng.randrange(10**6)))
        y = torch.tensor([self.rng.randrange(10) for _ in range(n)])
        if not self.sessions:  # no request open: the plain forward
            with torch.no_grad():
                done, got = self.run_maybe_failing(lambda: self.model(x, torch.full((n,), 500), y))
                if done:
                    assert torch.equal(got, self.pristine(x, torch.full((n,), 500), y))
            return
        session, shadow_session, shadow, next_t = self.sessions[-1]  # the newest open one serves
        t = 999 if self.rng.random() < 0.1 else next_t[0]  # now and then a rising timestep: a new trajectory
        before = (session.full_steps, session.cached_steps)
        with torch.no_grad():
            done, got = self.run_maybe_failing(lambda: self.model(x, torch.full((n,), t), y))
            if not done:
                assert (session.full_steps, session.cached_steps) == before
                return
            want = shadow(x, torch.full((n,), t), y)
        assert torch.equal(got, want)
        assert (session.full_steps, session.cached_steps) == (shadow_session.full_steps, shadow_session.cached_steps)
        next_t[0] = max(t - self.rng.choice([20, 50, 100]), 0) if t > 0 else 999


@pytest.mark.slow
def test_requests_that_raise_and_sessions_closed_in_any_order_never_leak():
    """Random sample() calls, session steps and plain forwards, 40% of them raising at a random block
    call (an error or KeyboardInterrupt), sessions opened and closed in random nested and
    non-nested orders (some from another thread): every request that completes equals the same
    request on a model that never saw a fault or another request. Bounded by SOAK_SECONDS."""
    soak = Soak(seed=0)
    deadline = time.monotonic() + SOAK_SECONDS
    try:
        for _ in range(600):
            if time.monotonic() > deadline:
                break
            kind = soak.rng.choice(Soak.KINDS)
            soak.counts[kind] += 1
            getattr(soak, kind)()
        while soak.sessions:
            soak.close()
    finally:
        soak.faults.remove()
    assert soak.faults.fired >= 10 and soak.counts["open"] >= 5 and soak.counts["sample"] >= 5, (
        soak.faults.fired,
        soak.counts,
    )
    assert "forward" not in soak.model.__dict__
