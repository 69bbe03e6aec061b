"""A rank whose model raises while its process stays up (as a server that catches errors does) stops
every rank of data-, CFG- and sequence-parallel sampling within seconds, each raising an error that
names the failing rank and its exception; the process group stays usable for the next request.

The collectives' timeout is 20 s here: a peer that waited for it instead would take 20 s, and the
tests ask for 3."""

from __future__ import annotations

import time

import pytest
import torch

import skipdit_kernels.ops as ops
from python_tests.integrations.ranks import ok, run_ranks
from python_tests.models.conftest import TINY, randomize
from skipdit_kernels import SkipCache, SkipDiT, sample
from skipdit_kernels.integrations.distributed import sample_cfg_parallel, sample_ddp, sample_sequence_parallel

HERE = "python_tests.integrations.test_rank_failures"
TIMEOUT_S = 20.0
STOPS_WITHIN_S = 3.0
COMMON = dict(steps=6, method="ddim", cfg_scale=2.0, cache=SkipCache(interval=2, shallow_blocks=1))


def tiny_model() -> SkipDiT:
    torch.manual_seed(0)
    return randomize(SkipDiT(**TINY), seed=1, std=0.05)


def _fail_after(calls: int, real, failed_at: list):
    """``real``, raising RuntimeError("injected failure") from its ``calls``-th call on."""
    count = [0]

    def failing(*args, **kwargs):
        count[0] += 1
        if count[0] >= calls:
            failed_at.append(time.time())
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    return failing


def _attempt(fn) -> dict:
    try:
        return dict(result=fn())
    except Exception as exc:  # noqa: BLE001 - what each rank raised, and when
        return dict(error=(type(exc).__name__, str(exc)), at=time.time())


def run_failures(info, out_dir: str) -> dict:
    """Each entry point with rank 1 failing mid-trajectory, then a healthy request on the same group."""
    rank, events = info.rank, {}

    model, failed_at = tiny_model(), []
    if rank == 1:  # the 2nd step's 3rd block: mid-trajectory, between two all_gathers of the model output
        model.run_block = _fail_after(len(model.blocks) + 3, model.run_block, failed_at)
    events["cfg"] = _attempt(lambda: sample_cfg_parallel(model, [1, 5], info=info, progress=False, **COMMON))
    events["cfg"]["failed_at"] = failed_at

    model, failed_at = tiny_model(), []
    real_attention = ops.attention
    if rank == 1:  # inside a block's sequence-parallel attention, between its two all-to-alls
        ops.attention = _fail_after(len(model.blocks) + 2, real_attention, failed_at)
    try:
        events["sequence"] = _attempt(
            lambda: sample_sequence_parallel(model, [1, 5], info=info, progress=False, **COMMON)
        )
    finally:
        ops.attention = real_attention
    events["sequence"]["failed_at"] = failed_at

    model, failed_at = tiny_model(), []
    if rank == 1:  # its first batch, 2nd step
        model.run_block = _fail_after(len(model.blocks) + 2, model.run_block, failed_at)
    else:  # rank 0's batch would take about 40 steps x 6 blocks x 50 ms = 12 s
        real = model.run_block
        model.run_block = lambda *args: (time.sleep(0.05), real(*args))[1]
    events["ddp"] = _attempt(lambda: sample_ddp(model, 4, out_dir, batch_size=2, info=info, progress=False,
                                                steps=40, method="ddim", cfg_scale=1.0))  # fmt: skip
    events["ddp"]["failed_at"] = failed_at

    model, failed_at = tiny_model(), []
    if rank == 1:  # the sampler update of the last step: after the last all_gather of the model output
        from skipdit_kernels.sampling.trajectory import SamplerTrajectory

        real_update = SamplerTrajectory.update
        SamplerTrajectory.update = _fail_after(COMMON["steps"], real_update, failed_at)
    try:
        events["cfg-last-step"] = _attempt(
            lambda: sample_cfg_parallel(model, [1, 5], info=info, progress=False, **COMMON)
        )
    finally:
        if rank == 1:
            SamplerTrajectory.update = real_update
    events["cfg-last-step"]["failed_at"] = failed_at

    failed_at = [time.time()] if rank == 1 else []  # rank 1's labels are out of range: it fails before any collective
    labels = [1, 99] if rank == 1 else [1, 5]
    events["setup"] = _attempt(
        lambda: sample_sequence_parallel(tiny_model(), labels, info=info, progress=False, **COMMON)
    )
    events["setup"]["failed_at"] = failed_at

    events["after"] = _attempt(
        lambda: sample_cfg_parallel(tiny_model(), [1, 5], info=info, progress=False, seed=3, **COMMON)
    )
    return events


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("failures")
    payloads, _ = run_ranks(
        tmp, 2, f"{HERE}:run_failures", deadline_s=200, timeout_s=TIMEOUT_S, out_dir=str(tmp / "ddp")
    )
    return [ok(p) for p in payloads]


@pytest.mark.parametrize("entry, message", [
    ("cfg", "sample_cfg_parallel: rank 1 failed: RuntimeError: injected failure"),
    ("sequence", "sample_sequence_parallel: rank 1 failed: RuntimeError: injected failure"),
    ("ddp", "sample_ddp: rank 1 failed on batch 1: RuntimeError: injected failure"),
    ("cfg-last-step", "sample_cfg_parallel: rank 1 failed: RuntimeError: injected failure"),
    ("setup", "sample_sequence_parallel: rank 1 failed: ValueError: class labels must be in 0..9, got min 1 max 99"),
])  # fmt: skip
def test_a_failing_rank_stops_its_peers_with_the_cause(events, entry, message):
    failed_at = events[1][entry]["failed_at"]
    assert len(failed_at) == 1, "rank 1 did not fail"
    for rank in (0, 1):
        assert events[rank][entry]["error"] == ("DistributedSamplingError", message), rank
        delay = events[rank][entry]["at"] - failed_at[0]
        assert 0 <= delay < STOPS_WITHIN_S, f"rank {rank} stopped {delay:.1f} s after rank 1 failed"


def test_the_group_serves_the_next_request(events):
    expected = sample(tiny_model(), [1, 5], seed=3, progress=False, **COMMON)
    for rank in (0, 1):
        x = events[rank]["after"].get("result")
        assert x is not None, events[rank]["after"]
        torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
