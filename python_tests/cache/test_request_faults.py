"""A request's state under faults: a step that raises (an error inside a block, out of memory, Ctrl-C)
changes nothing, so retrying it runs it as it would have run; sessions closed in any order, from any
thread, never leave a forward silently uncached while a session of that context is open."""

from __future__ import annotations

import contextlib
import copy
import itertools
import threading

import pytest
import torch

import skipdit_kernels as sk

from ..models.conftest import TINY, randomize

FAULTS = [RuntimeError("CUDA out of memory (injected)"), KeyboardInterrupt()]


@contextlib.contextmanager
def raising(module: torch.nn.Module, exc: BaseException, on_call: int = 0):
    """``module`` raises ``exc`` on its ``on_call``-th call (0: the next one) inside the block, once."""
    calls = [0]

    def hook(mod, inputs):
        calls[0] += 1
        if calls[0] == on_call + 1:
            raise exc

    handle = module.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def inputs(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.tensor([1, 2, 3, 4][:n])


def steps(model, timesteps, x, y):
    with torch.no_grad():
        return [model(x, torch.full((x.shape[0],), t), y) for t in timesteps]


@pytest.fixture
def model():
    return randomize(sk.SkipDiT(**TINY))


# -- an exception inside a step --------------------------------------------------------------------


@pytest.mark.parametrize("exc", FAULTS, ids=type)
def test_a_first_step_that_raises_in_a_middle_block_is_retried_full_and_exact(model, exc):
    x, y = inputs()
    t = torch.full((2,), 999)
    with torch.no_grad():
        plain = model(x, t, y)
        with sk.enable_skip_cache(model, sk.SkipCache(interval=2, shallow_blocks=1)) as request:
            with raising(model.blocks[TINY["depth"] // 2], exc), pytest.raises(type(exc)):
                model(x, t, y)
            assert (request.counter, request.full_steps, request.cached_steps, request.last_step_full) == (
                0,
                0,
                0,
                None,
            )
            retry = model(x, t, y)
    assert request.last_step_full and (request.full_steps, request.cached_steps) == (1, 0)
    assert (retry - plain).abs().max() == 0


TIMESTEPS = [999, 950, 900, 850, 800, 750]


@pytest.mark.parametrize("forecast", [0, 1])
@pytest.mark.parametrize("block", [0, -1], ids=["first block", "last block (after the boundary)"])
@pytest.mark.parametrize("exc", FAULTS, ids=type)
@pytest.mark.parametrize("fail_at", range(1, 6))  # steps 1, 3, 5 are cached, 2 and 4 full
def test_a_later_step_that_raises_is_retried_as_it_would_have_run(model, exc, fail_at, block, forecast):
    cache = sk.SkipCache(interval=2, shallow_blocks=1, forecast=forecast)
    x, y = inputs()
    twin = copy.deepcopy(model)
    with sk.enable_skip_cache(twin, cache):
        want = steps(twin, TIMESTEPS, x, y)
    with sk.enable_skip_cache(model, cache) as request:
        got = steps(model, TIMESTEPS[:fail_at], x, y)
        with raising(model.blocks[block], exc), pytest.raises(type(exc)):
            steps(model, TIMESTEPS[fail_at : fail_at + 1], x, y)
        assert request.counter == fail_at and request.full_steps + request.cached_steps == fail_at
        got += steps(model, TIMESTEPS[fail_at:], x, y)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert (request.full_steps, request.cached_steps) == (3, 3)


@pytest.mark.parametrize("forecast", [0, 1])
def test_a_full_step_that_raised_after_the_boundary_leaves_the_history_alone(model, forecast):
    """Step 1 is full only because t >= start_t; it raises after storing its deep state would have
    happened. The caller goes on at a lower timestep, where step 1 is cached: it must read step 0's
    state, not the failed step's."""
    cache = sk.SkipCache(interval=2, shallow_blocks=1, start_t=950, forecast=forecast)
    x, y = inputs()
    twin = copy.deepcopy(model)
    with sk.enable_skip_cache(twin, cache) as reference:
        want = steps(twin, [999, 940, 900], x, y)
    assert [s for s in (reference.full_steps, reference.cached_steps)] == [2, 1]
    with sk.enable_skip_cache(model, cache):
        got = steps(model, [999], x, y)
        with raising(model.blocks[-1], RuntimeError("boom")), pytest.raises(RuntimeError):
            steps(model, [960], x, y)
        got += steps(model, [940, 900], x, y)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_a_step_that_would_start_a_new_trajectory_and_raises_keeps_the_old_one(model):
    cache = sk.SkipCache(interval=2, shallow_blocks=1)
    x, y = inputs()
    x3, y3 = inputs(3, seed=1)
    twin = copy.deepcopy(model)
    with sk.enable_skip_cache(twin, cache):
        want = steps(twin, [999, 950], x, y)
    with sk.enable_skip_cache(model, cache) as request:
        got = steps(model, [999], x, y)
        with raising(model.blocks[0], RuntimeError("boom")), pytest.raises(RuntimeError):
            steps(model, [999], x3, y3)  # a new signature: a fresh trajectory, had it completed
        got += steps(model, [950], x, y)
    assert request.last_step_full is False and all(torch.equal(g, w) for g, w in zip(got, want))


def test_a_step_that_raises_in_its_input_checks_changes_nothing(model):
    x, y = inputs()
    with sk.enable_skip_cache(model, sk.SkipCache(interval=2, shallow_blocks=1)) as request:
        steps(model, [999], x, y)
        with pytest.raises(ValueError):
            steps(model, [950], x, torch.tensor([1, 99]))
        steps(model, [950], x, y)
    assert (request.full_steps, request.cached_steps) == (1, 1)


# -- sessions closed out of order -------------------------------------------------------------------


SCHEDULE = sk.SkipCache(interval=2, shallow_blocks=1)


def four_steps(model, x, y):
    return steps(model, [999, 950, 900, 850], x, y)


def reference_four_steps(model, x, y):
    twin = copy.deepcopy(model)
    with sk.enable_skip_cache(twin, SCHEDULE):
        return four_steps(twin, x, y)


def test_closing_the_outer_session_first_leaves_the_inner_one_serving_every_forward(model):
    x, y = inputs()
    want = reference_four_steps(model, x, y)
    s1 = sk.enable_skip_cache(model, SCHEDULE)
    s2 = sk.enable_skip_cache(model, SCHEDULE)
    s1.close()
    got = four_steps(model, x, y)
    assert not s2.closed and (s2.full_steps, s2.cached_steps) == (2, 2)
    assert (s1.full_steps, s1.cached_steps) == (0, 0)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    s2.close()
    assert "forward" not in model.__dict__


def test_closing_the_inner_session_first_returns_to_the_outer_one(model):
    x, y = inputs()
    s1 = sk.enable_skip_cache(model, SCHEDULE)
    steps(model, [999], x, y)
    s2 = sk.enable_skip_cache(model, SCHEDULE)
    steps(model, [999, 950], x, y)
    s2.close()
    steps(model, [950, 900], x, y)
    assert (s1.full_steps, s1.cached_steps, s2.full_steps, s2.cached_steps) == (2, 1, 1, 1)
    s1.close()
    assert "forward" not in model.__dict__


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_any_close_order_leaves_the_newest_open_session_serving(model, order):
    x, y = inputs()
    sessions = [sk.enable_skip_cache(model, SCHEDULE) for _ in range(3)]
    for k, closing in enumerate(order):
        sessions[closing].close()
        before = [(s.full_steps, s.cached_steps) for s in sessions]
        steps(model, [999], x, y)  # a rising timestep: each forward is a fresh full step of its session
        after = [(s.full_steps, s.cached_steps) for s in sessions]
        served = [i for i in range(3) if after[i] != before[i]]
        still_open = [i for i in range(3) if not sessions[i].closed]
        assert served == still_open[-1:], (order, k)
    assert "forward" not in model.__dict__


@pytest.mark.parametrize("which", ["outer", "inner"])
def test_a_session_closed_from_another_thread_leaves_the_other_serving(model, which):
    x, y = inputs()
    s1 = sk.enable_skip_cache(model, SCHEDULE)
    s2 = sk.enable_skip_cache(model, SCHEDULE)
    closing, serving = (s1, s2) if which == "outer" else (s2, s1)
    thread = threading.Thread(target=closing.close)
    thread.start()
    thread.join()
    got = four_steps(model, x, y)
    assert (serving.full_steps, serving.cached_steps) == (2, 2) and (closing.full_steps, closing.cached_steps) == (0, 0)
    assert all(torch.equal(g, w) for g, w in zip(got, reference_four_steps(model, x, y)))
    serving.close()
    assert "forward" not in model.__dict__


def test_disable_skip_cache_closes_every_session_and_restores_the_forward(model):
    x, y = inputs()
    with torch.no_grad():
        plain = model(x, torch.full((2,), 999), y)
    s1 = sk.enable_skip_cache(model, SCHEDULE)
    s2 = sk.enable_skip_cache(model, SCHEDULE)
    sk.disable_skip_cache(model)
    assert s1.closed and s2.closed and "forward" not in model.__dict__
    assert torch.equal(steps(model, [999], x, y)[0], plain)
    assert (s1.full_steps + s1.cached_steps, s2.full_steps + s2.cached_steps) == (0, 0)
    with sk.enable_skip_cache(model, SCHEDULE) as s3:  # a new session after all that works as usual
        four_steps(model, x, y)
    assert (s3.full_steps, s3.cached_steps) == (2, 2)
