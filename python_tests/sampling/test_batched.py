"""BatchedSampler: requests at different steps in one model call equal each request sampled alone."""

import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels import ops
from skipdit_kernels.sampling.batched import BatchedSampler

from ..models.conftest import TINY, randomize


def gemm_is_row_invariant(min_rows: int) -> bool:
    """Whether this machine's fp32 GEMM gives a row the same bits for every row count >= min_rows
    (MKL on x86 does from 4 rows; fewer rows take a gemv-like kernel with another reduction order)."""
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(96, 64, generator=g), torch.randn(384, 64, generator=g)
    ref = a @ w.T
    return all(torch.equal(ref[:m], a[:m] @ w.T) for m in range(min_rows, 97))


@pytest.fixture(scope="module", params=[sk.SkipDiT, sk.DiT], ids=["SkipDiT", "DiT"])
def model(request):
    return randomize(request.param(**TINY), std=0.05).eval()


def alone(model, request):
    request = dict(request)
    labels = request.pop("conditioning")
    with ops.use_backend("torch"):
        return sk.sample(model, labels, progress=False, cuda_graphs=False, **request)


def serve(model, requests, joins):
    """Run ``requests`` through one BatchedSampler, request i joining before step ``joins[i]``;
    returns ({index: result}, [StepReport])."""
    sampler, ids, results, reports = BatchedSampler(model), {}, {}, []
    step = 0
    with ops.use_backend("torch"):
        while len(results) < len(requests):
            for i, r in enumerate(requests):
                if joins[i] == step:
                    ids[sampler.add(**r)] = i
            report = sampler.step()
            reports.append(report)
            results.update({ids[f.request_id]: f for f in report.finished})
            step += 1
    return results, reports


# Mixed schedules: intervals, forecast orders (reuse, 1, 2), DDIM and DDPM, guidance scales, one
# uncached request, two boundaries (shallow 1 and 2: separate calls), requests joining mid-flight
# and leaving when done. Every request has >= 4 model rows (CFG doubles), so every GEMM of a
# request alone and of every call has >= 4 rows.
WIDE = [
    dict(
        conditioning=[1, 2],
        steps=10,
        method="ddim",
        cfg_scale=3.0,
        cache=sk.SkipCache(interval=2, shallow_blocks=2),
        seed=1,
    ),
    dict(
        conditioning=[3, 4, 5, 6],
        steps=7,
        method="ddpm",
        cfg_scale=1.0,
        cache=sk.SkipCache(interval=3, shallow_blocks=2),
        seed=2,
    ),
    dict(
        conditioning=[7, 8],
        steps=12,
        method="ddim",
        cfg_scale=1.5,
        cache=sk.SkipCache(interval=3, shallow_blocks=2, forecast=2, stop_t=-1),
        seed=3,
    ),
    dict(conditioning=[0, 9, 1, 2], steps=9, method="ddim", cfg_scale=1.0, cache=None, seed=4),
    dict(
        conditioning=[5, 6],
        steps=9,
        method="ddim",
        cfg_scale=4.0,
        cache=sk.SkipCache(interval=4, shallow_blocks=1, forecast=1),
        seed=5,
    ),
    dict(conditioning=[2, 3, 4, 5], steps=8, method="ddim", cfg_scale=1.0, cache="fast", seed=6),
]
JOINS = [0, 0, 2, 3, 3, 6]


def test_mixed_schedules_equal_each_request_alone(model):
    results, reports = serve(model, WIDE, JOINS)
    exact = gemm_is_row_invariant(4)
    for i, r in enumerate(WIDE):
        want, got = alone(model, r), results[i].latents
        if exact:
            assert torch.equal(got, want), i
        else:  # pragma: no cover - a BLAS whose rows depend on the row count
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        info = results[i].info
        assert info.full_steps + info.cached_steps == r["steps"]
    assert max(rep.calls for rep in reports) == 2  # shallow 2 (with the uncached request), shallow 1
    assert any(0 < rep.deep_rows < rep.rows for rep in reports)  # a mixed step ran


def test_small_requests_equal_within_fp32_rounding(model):
    # One-sample requests (1 or 2 model rows): the per-sample GEMMs (adaLN, embedders) of a request
    # alone take a small-row kernel, so the batched rows differ in the last bits.
    requests = [
        dict(
            conditioning=[3],
            steps=7,
            method="ddpm",
            cfg_scale=1.0,
            cache=sk.SkipCache(interval=3, shallow_blocks=2),
            seed=2,
        ),
        dict(
            conditioning=[4],
            steps=9,
            method="ddim",
            cfg_scale=2.0,
            cache=sk.SkipCache(interval=2, shallow_blocks=2, forecast=1),
            seed=3,
        ),
        dict(conditioning=[5], steps=6, method="ddim", cfg_scale=1.0, cache=None, seed=4),
    ]
    results, _ = serve(model, requests, [0, 1, 3])
    for i, r in enumerate(requests):
        torch.testing.assert_close(results[i].latents, alone(model, r), rtol=1e-4, atol=1e-4)


def test_deep_units_run_on_the_full_rows_only(model):
    results, reports = serve(model, WIDE, JOINS)
    for rep in reports:
        assert rep.deep_rows == rep.full_rows <= rep.rows
    assert sum(rep.deep_rows for rep in reports) < sum(rep.rows for rep in reports)


def test_a_request_can_leave_early_without_affecting_the_others(model):
    sampler = BatchedSampler(model)
    with ops.use_backend("torch"):
        keep = sampler.add(**WIDE[0])
        gone = sampler.add(**WIDE[1])
        sampler.step()
        sampler.step()
        sampler.cancel(gone)
        assert sampler.in_flight == [keep]
        (result,) = sampler.drain()
    assert result.request_id == keep
    tol = dict(rtol=0, atol=0) if gemm_is_row_invariant(4) else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.latents, alone(model, WIDE[0]), **tol)


def test_a_step_that_raises_changes_no_request(model):
    sampler = BatchedSampler(model)
    stack = sk.cache.as_skip_stack(model)
    calls = {"n": 0}
    original = type(stack).run_block

    def flaky(self, i, h, ctx, skip):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(self, i, h, ctx, skip)

    with ops.use_backend("torch"):
        ids = [sampler.add(**WIDE[0]), sampler.add(**WIDE[2])]
        for _ in range(4):  # into the cached steps, so the deep history matters
            sampler.step()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(stack), "run_block", flaky)
            with pytest.raises(RuntimeError, match="boom"):
                sampler.step()
        results = {f.request_id: f.latents for f in sampler.drain()}
    tol = dict(rtol=0, atol=0) if gemm_is_row_invariant(4) else dict(rtol=1e-4, atol=1e-4)
    for i, r in zip(ids, (WIDE[0], WIDE[2])):
        torch.testing.assert_close(results[i], alone(model, r), **tol)


def test_bad_requests_are_refused_before_any_work(model):
    sampler = BatchedSampler(model)
    with pytest.raises(ValueError, match="cfg_scale"):
        sampler.add([1], cfg_scale=0.5)
    with pytest.raises(ValueError, match="shallow_blocks"):
        sampler.add([1], cache=sk.SkipCache(interval=2, shallow_blocks=5))
    assert len(sampler) == 0
    with pytest.raises(KeyError):
        sampler.cancel(7)


def test_video_requests_equal_each_request_alone():
    # LatteSkip: (F, C, H, W) latents (channels at dim 2 of a batch), units of (spatial, temporal) blocks.
    model = randomize(sk.LatteSkip(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=8, num_heads=2,
                                   num_frames=3, num_classes=6, extras=2), std=0.1).eval()  # fmt: skip
    requests = [
        dict(
            conditioning=[1, 2],
            steps=6,
            method="ddim",
            cfg_scale=2.0,
            cache=sk.SkipCache(interval=2, shallow_blocks=1),
            seed=1,
        ),
        dict(
            conditioning=[3, 4, 5, 0],
            steps=5,
            method="ddpm",
            cfg_scale=1.0,
            cache=sk.SkipCache(interval=3, shallow_blocks=1, forecast=1),
            seed=2,
        ),
    ]
    results, reports = serve(model, requests, [0, 2])
    tol = dict(rtol=0, atol=0) if gemm_is_row_invariant(4) else dict(rtol=1e-4, atol=1e-4)
    for i, r in enumerate(requests):
        torch.testing.assert_close(results[i].latents, alone(model, r), **tol)
    assert all(rep.deep_rows == rep.full_rows for rep in reports)
    assert any(0 < rep.deep_rows < rep.rows for rep in reports)  # a mixed step: frames gathered by sample


def test_requests_of_different_static_conditioning_never_share_a_call(model, monkeypatch):
    # A static part (a table, e.g. rotary embeddings) is shared by every row of a call: requests whose
    # static tensors differ are different classes of work (same shape, so only their identity tells).
    tables = {"a": torch.zeros(3), "b": torch.ones(3)}
    own = type(model).condition

    def condition(self, labels):
        table = tables[labels.pop()]
        cond = own(self, labels)
        return sk.cache.Condition(cond.tensors, {"table": table}, cond.batch)

    monkeypatch.setattr(type(model), "condition", condition)
    sampler = BatchedSampler(model)
    for name in ("a", "b", "a"):
        sampler.add(
            [1, 2, 3, 4, name], steps=3, method="ddim", cfg_scale=1.0, cache=sk.SkipCache(interval=2, shallow_blocks=1)
        )
    report = sampler.step()
    assert (report.calls, report.rows) == (2, 12)


def test_uncached_requests_alone_make_an_uncached_call(model):
    requests = [
        dict(conditioning=[1, 2], steps=4, method="ddim", cfg_scale=2.0, cache=None, seed=7),
        dict(conditioning=[3, 4, 5, 6], steps=3, method="ddpm", cfg_scale=1.0, cache=None, seed=8),
    ]
    results, reports = serve(model, requests, [0, 1])
    tol = dict(rtol=0, atol=0) if gemm_is_row_invariant(4) else dict(rtol=1e-4, atol=1e-4)
    for i, r in enumerate(requests):
        torch.testing.assert_close(results[i].latents, alone(model, r), **tol)
    assert all(rep.calls == 1 and rep.deep_rows == rep.full_rows == rep.rows for rep in reports)
