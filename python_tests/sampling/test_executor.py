"""The cache-aware executor (what ``sample()`` runs): bit-identical to the official sampling loop on
CPU, buffers per signature and per concurrent request, shapes part of a buffer's key, the plan drives
the units; CUDA-graph capture in the gpu-marked tests."""

import contextlib
import gc
import threading
import weakref

import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.sampling import GaussianDiffusion, SkipStackExecutor, executor_for
from skipdit_kernels.sampling.executor import resolve_cuda_graphs, weights_token
from skipdit_kernels.sampling.trajectory import SamplerTrajectory

from ..models.conftest import TINY, randomize


@pytest.fixture(scope="module")
def skipdit():
    return randomize(sk.SkipDiT(**TINY), std=0.05)


@pytest.fixture(scope="module")
def dit():
    return randomize(sk.DiT(**TINY), std=0.05)


def official_loop(
    model, labels, steps, method, cfg, cache=None, seed=0, eta=0.0, guide_all_channels=False, dtype=torch.float32
):
    """DiT's sample.py loop: forward_with_cfg (or forward) per step, then the diffusion step; Skip-Cache
    through a step-by-step session."""
    diffusion = GaussianDiffusion.create(steps, method=method, learn_sigma=model.learn_sigma, eta=eta)
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    x = torch.randn(n, model.in_channels, model.input_size, model.input_size, generator=g)
    y = torch.tensor(labels)
    if cfg > 1:
        y = torch.cat([y, torch.full_like(y, model.num_classes)])
    session = sk.enable_skip_cache(model, cache) if cache is not None else contextlib.nullcontext()
    with session, torch.no_grad():
        for i, t in zip(range(steps - 1, -1, -1), diffusion.timesteps):
            model_in = torch.cat([x, x]) if cfg > 1 else x
            tt = torch.full((model_in.shape[0],), t)
            if cfg > 1:
                out = model.forward_with_cfg(model_in.to(dtype), tt, y, cfg, guide_all_channels)[:n]
            else:
                out = model(model_in.to(dtype), tt, y)
            noise = torch.randn(x.shape, generator=g) if diffusion.is_stochastic else None
            x = diffusion.step(out.float(), x, i, noise)
    return x


def run(model, executor=None, labels=(1, 2), steps=12, method="ddim", cfg=3.0, cache=None, seed=0, **kw):
    return sk.sample(
        model,
        list(labels),
        steps=steps,
        method=method,
        cfg_scale=cfg,
        cache=cache,
        seed=seed,
        progress=False,
        executor=executor,
        **kw,
    )


@pytest.mark.parametrize("family", ["skipdit", "dit"])
@pytest.mark.parametrize(
    "method,cfg,cache",
    [
        ("ddim", 3.0, sk.SkipCache(interval=2, shallow_blocks=1)),
        ("ddpm", 4.0, sk.SkipCache(interval=3, shallow_blocks=2)),
        ("ddpm", 1.0, None),
        ("ddim", 1.0, sk.SkipCache(interval=2, shallow_blocks=3)),
        ("ddim", 3.3, sk.SkipCache(interval=3, shallow_blocks=1, forecast=2)),
        ("ddpm", 4.0, sk.SkipCache(interval=2, shallow_blocks=2, forecast=1)),
    ],
)
def test_sampling_is_bit_identical_to_the_official_loop(request, family, method, cfg, cache):
    model = request.getfixturevalue(family)
    want = official_loop(model, (1, 2), 12, method, cfg, cache)
    assert torch.equal(run(model, SkipStackExecutor(model), method=method, cfg=cfg, cache=cache), want)


def test_bf16_guidance_scale_all_channels_and_stochastic_ddim_are_exact():
    """The guidance scale is a device tensor on the executor's path: it must not be rounded to bf16
    (3.3 would become 3.296875) where the official code multiplies by a python float."""
    model = randomize(sk.SkipDiT(**TINY), std=0.05).to(torch.bfloat16)
    cache = sk.SkipCache(interval=2, shallow_blocks=2)
    for kw in (dict(method="ddpm", cfg=3.3), dict(method="ddim", eta=0.5, guide_all_channels=True, cfg=3.3)):
        want = official_loop(model, (1, 2), 12, cache=cache, dtype=torch.bfloat16, **kw)
        got = run(model, SkipStackExecutor(model), cache=cache, **kw)
        assert torch.equal(got, want)


def test_learned_sigma_guidance_never_touches_the_variance_channels():
    """With fewer than 4 latent channels the official 'first 3 channels' would reach the variance."""
    for channels in (1, 2):
        model = randomize(sk.SkipDiT(**{**TINY, "in_channels": channels}), std=0.05)
        x = torch.randn(2, channels, 8, 8)
        t, y = torch.full((4,), 500), torch.tensor([1, 2, 10, 10])
        with torch.no_grad():
            guided = model.forward_with_cfg(torch.cat([x, x]), t, y, 4.0)
            plain = model(torch.cat([x, x]), t, y)
        assert model.guided_channels(False) == channels
        assert torch.equal(guided[:2, channels:], plain[:2, channels:])  # variance: the conditional branch's
        assert not torch.equal(guided[:2, :channels], plain[:2, :channels])
    assert sk.SkipDiT(**TINY).guided_channels(False) == 3  # 4 channels: the official rule, for exact reproduction


def test_the_plan_drives_the_units_and_the_report(dit):
    calls = []
    hooks = [blk.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, blk in enumerate(dit.blocks)]
    try:
        cache = sk.SkipCache(interval=2, shallow_blocks=2)
        _, info = run(dit, SkipStackExecutor(dit), steps=10, cache=cache, return_info=True)
    finally:
        for hk in hooks:
            hk.remove()
    full = cache.full_steps(GaussianDiffusion.create(10, method="ddim").timesteps)
    assert (info.full_steps, info.cached_steps) == (full.count(True), full.count(False))
    # CFG runs both halves in one model batch: each step calls each block once
    assert len(calls) == full.count(True) * 6 + full.count(False) * 4


def _program_and_trajectory(ex, cache, steps=10, cfg=3.0):
    diffusion = GaussianDiffusion.create(steps, method="ddim")
    trajectory = SamplerTrajectory(diffusion, cfg, guided=3)
    return ex.program(cache, trajectory), trajectory


def test_graph_mode_steps_write_into_fixed_buffers(skipdit):
    ex = SkipStackExecutor(skipdit)
    cache = sk.SkipCache(interval=2, shallow_blocks=2)
    first = run(skipdit, ex, cache=cache, steps=4)
    (sig,) = ex.signatures
    (b,) = ex.buffer_sets(sig)
    program, trajectory = _program_and_trajectory(ex, cache)
    b.copy_outputs = True  # as on the graph path
    ex.step(b, program, trajectory, True)
    ex.step(b, program, trajectory, False)
    ptrs = {name: t.data_ptr() for name, t in b.tensors().items()}
    assert {"history/(1, 4, 16, 64)", "out/(4, 8, 8, 8)", "h/(4, 16, 64)", "skip0/(4, 16, 64)"} <= set(ptrs)
    for full in (True, False, False, True, False):
        ex.step(b, program, trajectory, full)
        assert {name: t.data_ptr() for name, t in b.tensors().items()} == ptrs
    second = run(skipdit, ex, cache=cache, steps=4)
    assert torch.equal(first, second)  # stale buffer contents do not leak into a new trajectory
    assert second.data_ptr() != b.x.data_ptr()  # the result is the caller's, not the buffer


def test_a_buffer_whose_shape_would_change_is_another_buffer(skipdit):
    """Forecast order 1 then 2, guidance of 3 then all channels, on one executor: each shape its own
    buffer (never resized in place, which would leave a captured graph writing to freed memory)."""
    ex = SkipStackExecutor(skipdit)
    runs = [
        dict(cache=sk.SkipCache(interval=3, shallow_blocks=1, forecast=1)),
        dict(cache=sk.SkipCache(interval=3, shallow_blocks=1, forecast=2)),
        dict(cache=sk.SkipCache(interval=3, shallow_blocks=1, forecast=1), guide_all_channels=True),
    ]
    for kw in runs:
        assert torch.equal(
            run(skipdit, ex, method="ddim", steps=10, **kw),
            run(skipdit, SkipStackExecutor(skipdit), method="ddim", steps=10, **kw),
        )
    (sig,) = ex.signatures
    slots = sorted(b.deep.slots for b in ex.buffer_sets(sig))
    assert slots == [2, 3]  # one buffer set per history size, none resized


def test_a_new_signature_gets_its_own_buffers_and_release_frees_them(skipdit):
    ex = SkipStackExecutor(skipdit)
    run(skipdit, ex, labels=(1, 2))
    run(skipdit, ex, labels=(1, 2, 3))
    run(skipdit, ex, labels=(1, 2), cfg=1.0)
    sigs = ex.signatures
    assert [(s.batch, s.cfg) for s in sigs] == [(2, True), (3, True), (2, False)]
    assert len({ex.buffer_sets(s)[0].x.data_ptr() for s in sigs}) == 3
    assert ex.buffer_sets(sigs[1])[0].model_in.shape[0] == 6 and ex.buffer_sets(sigs[2])[0].model_in.shape[0] == 2
    ex.release(sigs[0])
    assert ex.signatures == sigs[1:]
    ex.release()
    assert ex.signatures == []


def test_concurrent_requests_on_one_model_equal_sequential_ones(skipdit):
    """Threads sampling one model at once, with and without Skip-Cache and forecast, through the
    model's shared executor: every result equals the same call made alone."""
    calls = [
        dict(cache=None),
        dict(cache=sk.SkipCache(interval=2, shallow_blocks=1)),
        dict(cache=sk.SkipCache(interval=3, shallow_blocks=2, forecast=1)),
        dict(cache=2, method="ddpm"),
    ]
    want = [run(skipdit, None, steps=8, **kw) for kw in calls]
    got = [[] for _ in calls]
    errors = []
    barrier = threading.Barrier(len(calls))

    def work(k):
        try:
            barrier.wait()
            for _ in range(3):
                got[k].append(run(skipdit, None, steps=8, **calls[k]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(calls))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for k in range(len(calls)):
        assert all(torch.equal(g, want[k]) for g in got[k])


def test_cuda_graph_switch_on_cpu():
    assert resolve_cuda_graphs("auto", "cpu") is False
    assert resolve_cuda_graphs(False, "cpu") is False
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        resolve_cuda_graphs(True, "cpu")
    with pytest.raises(ValueError, match="cuda_graphs must be"):
        resolve_cuda_graphs("yes", "cpu")


def test_graph_capture_refuses_a_cpu_signature(skipdit):
    ex = SkipStackExecutor(skipdit)
    run(skipdit, ex, steps=2)
    (b,) = ex.buffer_sets(ex.signatures[0])
    program, trajectory = _program_and_trajectory(ex, None)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        ex.graphs(b, program, trajectory)


def test_where_a_graph_reads_is_part_of_its_key():
    """A graph is re-captured when the model's parameter storage, dtype or device changed (here: the
    token it is keyed by; the replays themselves are in the gpu tests). In-place updates keep it:
    the replay reads the live memory."""
    model = randomize(sk.SkipDiT(**TINY))
    token = weights_token(model)
    model.load_state_dict(randomize(sk.SkipDiT(**TINY), seed=1).state_dict())  # in place
    with torch.no_grad():
        next(model.parameters()).data.mul_(2)
    assert weights_token(model) == token
    model.to(torch.bfloat16).to(torch.float32)  # new storage
    assert weights_token(model) != token
    token = weights_token(model)
    proj = model.blocks[0].attn.proj
    proj.weight = torch.nn.Parameter(proj.weight.detach().clone())  # a swapped parameter
    assert weights_token(model) != token


def test_executor_for_keeps_one_per_model_without_keeping_the_model_alive():
    model = randomize(sk.SkipDiT(**TINY))
    ex = executor_for(model)
    assert executor_for(model) is ex and ex.model is model
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    with pytest.raises(RuntimeError, match="garbage-collected"):
        ex.stack


@pytest.mark.parametrize("family", [sk.SkipDiT, sk.DiT])
@pytest.mark.parametrize("method,forecast", [("ddim", 0), ("ddpm", 2)])
def test_the_captured_step_is_device_pure(family, method, forecast):
    """What a graph captures must not read device values on the host (.item(), int(tensor)) nor make
    tensors on another device: run the step on the meta device, where both raise."""
    model = randomize(family(**TINY)).to("meta")
    ex = SkipStackExecutor(model)
    cache = sk.SkipCache(interval=2, shallow_blocks=2, forecast=forecast)
    diffusion = GaussianDiffusion.create(10, method=method)
    trajectory = SamplerTrajectory(diffusion, 4.0, guided=3, generator=torch.Generator())
    program = ex.program(cache, trajectory)
    cond = sk.cache.Condition({"y": torch.zeros(4, dtype=torch.long, device="meta")})
    sig = ex.signature(torch.zeros(2, 4, 8, 8, device="meta"), cond, torch.float32, True)
    b = ex.acquire(sig, program, 11, cond)
    ex.step(b, program, trajectory, True)
    ex.step(b, program, trajectory, False)
    assert all(t.device.type == "meta" for t in b.tensors().values())
    with pytest.raises(Exception):  # the model's own input checks read labels on the host: not capturable
        model.check_inputs(b.model_in, b.t, b.cond)


# -- GPU: the captured graphs -------------------------------------------------------------------


def _gpu_model(dtype=torch.bfloat16, device="cuda"):
    torch.manual_seed(0)
    model = randomize(sk.SkipDiT(**{**TINY, "input_size": 16, "hidden_size": 128, "depth": 8}), std=0.05)
    return model.to(device, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton", "native"])
@pytest.mark.parametrize("method,forecast", [("ddim", 0), ("ddpm", 0), ("ddim", 1), ("ddim", 2)])
def test_gpu_graph_replay_matches_eager_within_bf16_tolerance(backend, method, forecast):
    """Every backend's kernels (and forecast_blend, index_copy_ at a device slot) under capture."""
    from skipdit_kernels import ops

    model = _gpu_model()
    cache = sk.SkipCache(interval=2, shallow_blocks=2, forecast=forecast)
    kw = dict(steps=20, method=method, cache=cache, cfg_scale=3.3, seed=0, progress=False)
    ex = SkipStackExecutor(model)
    with ops.use_backend(backend):
        eager = sk.sample(model, [1, 2, 3], cuda_graphs=False, executor=ex, **kw)
        graphed = sk.sample(model, [1, 2, 3], cuda_graphs=True, executor=ex, **kw)
        again = sk.sample(model, [1, 2, 3], cuda_graphs=True, executor=ex, **kw)
    assert ex.captures == 1
    torch.testing.assert_close(graphed, eager, rtol=2e-2, atol=2e-2)
    assert torch.equal(graphed, again)  # replay of the same graph on the same inputs


@pytest.mark.gpu
def test_gpu_graphs_follow_weight_updates_and_dtype_switches():
    model = _gpu_model(torch.float32)
    kw = dict(steps=8, method="ddim", cache=2, seed=0, progress=False)
    ex = SkipStackExecutor(model)
    sk.sample(model, [1, 2], cuda_graphs=True, executor=ex, **kw)
    fresh = randomize(sk.SkipDiT(**{**TINY, "input_size": 16, "hidden_size": 128, "depth": 8}), seed=3, std=0.05)
    for update in ("data", "load_state_dict"):
        with torch.no_grad():
            if update == "data":
                for p, q in zip(model.parameters(), fresh.parameters()):
                    p.data.copy_(q.data)
            else:
                model.load_state_dict(randomize(fresh, seed=4, std=0.05).state_dict())
        graphed = sk.sample(model, [1, 2], cuda_graphs=True, executor=ex, **kw)
        eager = sk.sample(model, [1, 2], cuda_graphs=False, executor=ex, **kw)
        torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)
    for dtype in (torch.bfloat16, torch.float16, torch.bfloat16):
        graphed = sk.sample(model, [1, 2], cuda_graphs=True, executor=ex, dtype=dtype, **kw)
        eager = sk.sample(model, [1, 2], cuda_graphs=False, executor=ex, dtype=dtype, **kw)
        torch.testing.assert_close(graphed, eager, rtol=3e-2, atol=3e-2)


@pytest.mark.gpu
def test_gpu_graphs_on_a_device_that_is_not_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    model = _gpu_model(torch.float32, device="cuda:1")
    kw = dict(steps=8, method="ddim", cache=2, seed=0, progress=False)
    ex = SkipStackExecutor(model)
    graphed = sk.sample(model, [1, 2], cuda_graphs=True, executor=ex, **kw)
    eager = sk.sample(model, [1, 2], cuda_graphs=False, executor=ex, **kw)
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)
    x_T = torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(graphed.cpu(), x_T)  # a graph that captured nothing returns the noise


@pytest.mark.gpu
def test_gpu_replay_does_not_touch_the_allocator():
    model = _gpu_model()
    ex = SkipStackExecutor(model)
    kw = dict(steps=20, method="ddpm", cache=sk.SkipCache(interval=2, shallow_blocks=2), seed=0, progress=False)
    sk.sample(model, [1, 2], cuda_graphs=True, executor=ex, **kw)  # capture
    (b,) = ex.buffer_sets(ex.signatures[0])
    ((_, graphs),) = b.graphs.values()
    torch.cuda.synchronize()
    keys = (
        "allocation.all.current",
        "allocated_bytes.all.current",
        "allocation.all.allocated",
        "segment.all.allocated",
    )
    before = {k: torch.cuda.memory_stats()[k] for k in keys}
    for full in (True, False, False, True, False, True):
        (graphs.full if full else graphs.cached).replay()
    torch.cuda.synchronize()
    assert {k: torch.cuda.memory_stats()[k] for k in keys} == before


@pytest.mark.gpu
def test_gpu_new_signature_recaptures_and_auto_uses_graphs():
    model = _gpu_model()
    ex = executor_for(model)
    ex.release()
    before = ex.captures
    kw = dict(steps=6, method="ddim", cache=2, seed=0, progress=False)
    a = sk.sample(model, [1, 2], **kw)  # cuda_graphs="auto" on CUDA
    sk.sample(model, [1, 2], **kw)  # same signature: no new capture
    assert ex.captures == before + 1
    b = sk.sample(model, [1, 2, 3, 4], **kw)  # new batch: new buffers and graphs
    c = sk.sample(model, [1, 2], cfg_scale=1.0, **kw)  # CFG off: another signature
    assert ex.captures == before + 3 and len(ex.signatures) == 3
    assert a.shape == (2, 4, 16, 16) and b.shape == (4, 4, 16, 16) and torch.isfinite(c).all()
