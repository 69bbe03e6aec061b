"""The cache-aware executor: exact against the eager path on CPU, buffers reused, signatures, the host
plan, the sampler update from a coefficient tensor; CUDA-graph capture in the gpu-marked tests."""
import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.cache import SkipCacheState, SkipStackExecutor, executor_for
from skipdit_kernels.cache.executor import (
    Program,
    _DiTEmbed,
    resolve_cuda_graphs,
    sampler_coefficients,
    sampler_update,
)
from skipdit_kernels.sampling import GaussianDiffusion

from ..models.conftest import TINY, randomize


@pytest.fixture(scope="module")
def skipdit():
    return randomize(sk.SkipDiT(**TINY), std=0.05)


@pytest.fixture(scope="module")
def dit():
    return randomize(sk.DiT(**TINY), std=0.05)


def trajectory(model, executor, method="ddim", steps=12, cfg=3.0, cache=None, seed=0, labels=(1, 2), **kw):
    return sk.sample(model, list(labels), steps=steps, method=method, cfg_scale=cfg, cache=cache, seed=seed,
                     progress=False, executor=executor, **kw)


@pytest.mark.parametrize("family", ["skipdit", "dit"])
@pytest.mark.parametrize("method,cfg,cache", [
    ("ddim", 3.0, sk.SkipCache(interval=2, shallow_blocks=1)),
    ("ddpm", 4.0, sk.SkipCache(interval=3, shallow_blocks=2)),
    ("ddpm", 1.0, None),
    ("ddim", 1.0, sk.SkipCache(interval=2, shallow_blocks=3)),
])
def test_executor_trajectory_is_bit_identical_to_the_eager_loop(request, family, method, cfg, cache):
    model = request.getfixturevalue(family)
    eager = trajectory(model, None, method, cfg=cfg, cache=cache, cuda_graphs=False)
    ours = trajectory(model, SkipStackExecutor(model), method, cfg=cfg, cache=cache)
    assert torch.equal(ours, eager)


def test_bf16_and_all_channel_guidance_and_stochastic_ddim_are_exact(skipdit):
    model = randomize(sk.SkipDiT(**TINY), std=0.05).to(torch.bfloat16)
    cache = sk.SkipCache(interval=2, shallow_blocks=2)
    for kw in (dict(method="ddpm"), dict(method="ddim", eta=0.5, guide_all_channels=True)):
        eager = trajectory(model, None, cache=cache, cuda_graphs=False, **kw)
        ours = trajectory(model, SkipStackExecutor(model), cache=cache, **kw)
        assert torch.equal(ours, eager)


def test_a_module_level_cache_is_honoured(skipdit):
    model = randomize(sk.SkipDiT(**TINY), std=0.05).enable_skip_cache(sk.SkipCache(interval=2, shallow_blocks=2))
    eager = trajectory(model, None, cuda_graphs=False)
    ours, info = trajectory(model, SkipStackExecutor(model), return_info=True)
    assert torch.equal(ours, eager) and info.cached_steps > 0


def test_steps_reuse_the_buffers_storage(skipdit):
    ex = SkipStackExecutor(skipdit)
    cache = sk.SkipCache(interval=2, shallow_blocks=2)
    first = trajectory(skipdit, ex, cache=cache, steps=4)
    (sig,) = ex.signatures
    b = ex.buffers(sig)
    ptrs = {name: t.data_ptr() for name, t in b.tensors().items()}
    assert {"deep", "out", "h", "model_output", "guided", "skip0", "skip1", "skip2"} <= set(ptrs)
    diffusion = GaussianDiffusion.create(10, method="ddim")
    program = ex.program(diffusion, cache, True, False, 4)
    for full in (True, False, False, True, False):  # steps written straight into the buffers
        ex.step(b, program, full)
        assert {name: t.data_ptr() for name, t in b.tensors().items()} == ptrs
    second = trajectory(skipdit, ex, cache=cache, steps=4)
    assert {name: t.data_ptr() for name, t in b.tensors().items()} == ptrs and ex.signatures == [sig]
    assert torch.equal(first, second)  # the buffers' stale contents do not leak into a new trajectory
    assert first.data_ptr() != b.x.data_ptr()  # the result is the caller's, not the buffer


def test_a_new_signature_gets_its_own_buffers_and_release_frees_them(skipdit):
    ex = SkipStackExecutor(skipdit)
    trajectory(skipdit, ex, labels=(1, 2))
    trajectory(skipdit, ex, labels=(1, 2, 3))
    trajectory(skipdit, ex, labels=(1, 2), cfg=1.0)
    sigs = ex.signatures
    assert [(s.batch, s.cfg) for s in sigs] == [(2, True), (3, True), (2, False)]
    assert len({ex.buffers(s).x.data_ptr() for s in sigs}) == 3
    assert ex.buffers(sigs[1]).model_in.shape[0] == 6 and ex.buffers(sigs[2]).model_in.shape[0] == 2
    ex.release(sigs[0])
    assert ex.signatures == sigs[1:]
    ex.release()
    assert ex.signatures == []


def test_dit_embed_without_host_checks_matches_the_models(skipdit):
    embed = _DiTEmbed()
    embed.prepare(skipdit, torch.device("cpu"))
    x = torch.randn(4, 4, 8, 8)
    t, y = torch.tensor([999, 500, 3, 0]), torch.tensor([1, 2, 10, 10])
    with torch.no_grad():
        h, c = embed(skipdit, x, t, y)
        h_ref, c_ref = skipdit.embed(x, t, y)
    assert torch.equal(h, h_ref) and torch.equal(c, c_ref)


@pytest.mark.parametrize("cache", [
    sk.SkipCache(interval=3, shallow_blocks=2),
    sk.SkipCache(interval=2, shallow_blocks=1, start_t=700, stop_t=50),
])
def test_the_host_plan_is_the_module_states_decisions(skipdit, cache):
    timesteps = GaussianDiffusion.create(50, method="ddim").timesteps
    state = SkipCacheState(cache, skipdit.depth, residual=False)
    decisions = []
    for t in timesteps:
        decisions.append(state.begin_step(float(t), ("sig",)))
        state.deep = torch.zeros(1)  # what a full step stores
        state.end_step(float(t))
    assert cache.plan(timesteps) == decisions


def test_blocks_run_follow_the_plan(dit):
    calls = []
    hooks = [blk.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, blk in enumerate(dit.blocks)]
    try:
        cache = sk.SkipCache(interval=2, shallow_blocks=2)
        _, info = trajectory(dit, SkipStackExecutor(dit), steps=10, cache=cache, return_info=True)
    finally:
        for hk in hooks:
            hk.remove()
    plan = cache.plan(GaussianDiffusion.create(10, method="ddim").timesteps)
    assert (info.full_steps, info.cached_steps) == (plan.count(True), plan.count(False))
    assert len(calls) == plan.count(True) * 6 + plan.count(False) * 4


@pytest.mark.parametrize("method,learn_sigma,eta", [("ddpm", True, 0.0), ("ddpm", False, 0.0),
                                                    ("ddim", True, 0.0), ("ddim", True, 0.7)])
def test_sampler_update_from_the_coefficient_tensor_is_diffusion_step(method, learn_sigma, eta):
    diffusion = GaussianDiffusion.create(20, method=method, learn_sigma=learn_sigma, eta=eta)
    table = torch.from_numpy(sampler_coefficients(diffusion, 2.5)).float()
    program = Program(None, False, method, learn_sigma, diffusion.is_stochastic, 0, "torch")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    out = torch.randn(2, 8 if learn_sigma else 4, 8, 8, generator=g).clamp(-1, 1)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    for i in (19, 7, 1, 0):
        used = noise if i else torch.zeros_like(noise)
        got = sampler_update(program, x, out, table[i], used)
        assert torch.equal(got, diffusion.step(out, x, i, noise)), i


def test_cuda_graph_switch_on_cpu():
    assert resolve_cuda_graphs("auto", "cpu") is False
    assert resolve_cuda_graphs(False, "cpu") is False
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        resolve_cuda_graphs(True, "cpu")
    with pytest.raises(ValueError, match="cuda_graphs must be"):
        resolve_cuda_graphs("yes", "cpu")


def test_graph_capture_refuses_a_cpu_signature(skipdit):
    ex = SkipStackExecutor(skipdit)
    sig = ex.signature(torch.zeros(1, 4, 8, 8), torch.float32, False)
    program = ex.program(GaussianDiffusion.create(4, method="ddim"), None, False, False, 4)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        ex.graphs(ex.buffers(sig), program)


@pytest.mark.parametrize("family", ["skipdit", "dit"])
@pytest.mark.parametrize("order,method", [(1, "ddim"), (2, "ddim"), (3, "ddpm")])
def test_forecast_matches_the_module_path(request, family, order, method):
    model = request.getfixturevalue(family)
    cache = sk.SkipCache(interval=3, shallow_blocks=1, forecast=order)
    kw = dict(method=method, steps=30, cache=cache)
    eager, eager_info = trajectory(model, None, cuda_graphs=False, return_info=True, **kw)
    ex = SkipStackExecutor(model)
    ours, info = trajectory(model, ex, return_info=True, **kw)
    # The blend reads its weights from a tensor (fp32 sums) where the module path uses host floats.
    torch.testing.assert_close(ours, eager, rtol=1e-4, atol=1e-5)
    assert not torch.equal(ours, trajectory(model, ex, method=method, steps=30, cache=cache.with_forecast(0)))
    assert (info.full_steps, info.cached_steps) == (eager_info.full_steps, eager_info.cached_steps)
    assert ex.buffers(ex.signatures[0]).lazy["history"].shape[0] == order + 1


def test_forecast_tables_follow_the_history():
    from skipdit_kernels.cache.executor import COEF_FORECAST, NUM_COEF, forecast_tables

    cache = sk.SkipCache(interval=2, shallow_blocks=1, forecast=2, stop_t=30)
    timesteps = [90, 80, 70, 60, 50, 40, 30, 20, 10]  # resets after t=30
    rows = torch.zeros(len(timesteps), NUM_COEF).double().numpy()
    slots = torch.zeros(len(timesteps), 1, dtype=torch.long)
    forecast_tables(cache, timesteps, rows, slots)
    assert cache.plan(timesteps) == [True, False, True, False, True, False, True, True, True]  # t <= 30 resets
    assert slots[:, 0].tolist() == [0, 0, 1, 0, 2, 0, 0, 0, 0]  # t=30 overwrites the oldest; the reset restarts
    w = rows[:, COEF_FORECAST:COEF_FORECAST + 3]
    assert w[1].tolist() == [1.0, 0.0, 0.0]  # one point: reuse
    assert w[3].tolist() == [-0.5, 1.5, 0.0]  # through steps 0, 2 at step 3
    assert w[5].tolist() == pytest.approx([0.375, -1.25, 1.875])  # through 0, 2, 4 at 5


def test_executor_for_keeps_one_per_model_without_keeping_the_model_alive():
    import gc
    import weakref

    model = randomize(sk.SkipDiT(**TINY))
    ex = executor_for(model)
    assert executor_for(model) is ex and ex.stack is model
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    with pytest.raises(RuntimeError, match="garbage-collected"):
        ex.stack


# -- GPU: the captured graphs -------------------------------------------------------------------


def _gpu_model(dtype=torch.bfloat16):
    torch.manual_seed(0)
    return randomize(sk.SkipDiT(**{**TINY, "input_size": 16, "hidden_size": 128, "depth": 8}), std=0.05).to("cuda", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_gpu_graph_replay_matches_eager_within_bf16_tolerance(method):
    model = _gpu_model()
    cache = sk.SkipCache(interval=2, shallow_blocks=2)
    kw = dict(steps=20, method=method, cache=cache, cfg_scale=4.0, seed=0, progress=False)
    eager = sk.sample(model, [1, 2, 3], cuda_graphs=False, **kw)
    ex = SkipStackExecutor(model)
    graphed = sk.sample(model, [1, 2, 3], cuda_graphs=True, executor=ex, **kw)
    through_executor = sk.sample(model, [1, 2, 3], cuda_graphs=False, executor=ex, **kw)
    assert ex.captures == 1
    torch.testing.assert_close(graphed, eager, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(graphed, through_executor, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_gpu_replay_does_not_touch_the_allocator():
    model = _gpu_model()
    ex = SkipStackExecutor(model)
    cache = sk.SkipCache(interval=2, shallow_blocks=2)
    diffusion = GaussianDiffusion.create(20, method="ddpm")
    x = torch.randn(2, 4, 16, 16, device="cuda")
    y = torch.tensor([1, 2, 10, 10], device="cuda")
    gen = torch.Generator().manual_seed(0)
    ex.run(diffusion, x, y, torch.bfloat16, cache=cache, cfg_scale=4.0, generator=gen, graphs=True)  # capture
    sig = ex.signatures[0]
    b = ex.buffers(sig)
    program = ex.program(diffusion, cache, True, False, 4)
    graphs = ex.graphs(b, program)
    torch.cuda.synchronize()
    keys = ("allocation.all.current", "allocated_bytes.all.current", "allocation.all.allocated",
            "segment.all.allocated")
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


@pytest.mark.parametrize("family", [sk.SkipDiT, sk.DiT])
@pytest.mark.parametrize("method,forecast", [("ddim", 0), ("ddpm", 2)])
def test_the_captured_step_is_device_pure(family, method, forecast):
    """What a graph captures must not read device values on the host (.item(), int(tensor)) nor make
    tensors on another device: run the step on the meta device, where both raise."""
    model = randomize(family(**TINY)).to("meta")
    ex = SkipStackExecutor(model)
    sig = ex.signature(torch.zeros(2, 4, 8, 8, device="meta"), torch.float32, True)
    program = ex.program(GaussianDiffusion.create(10, method=method),
                         sk.SkipCache(interval=2, shallow_blocks=2, forecast=forecast), True, False, 4)
    b = ex.buffers(sig)
    ex.step(b, program, True)
    ex.step(b, program, False)
    assert all(t.device.type == "meta" for t in b.tensors().values())
    with pytest.raises(Exception):  # the model's own embed checks labels on the host: not capturable
        model.embed(b.model_in, b.t, b.y)
