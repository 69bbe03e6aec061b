"""sample() through the cache-aware executor: the cuda_graphs switch, executor reuse, what stays eager."""

import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.sampling import GaussianDiffusion, SkipStackExecutor
from skipdit_kernels.sampling import executor as executor_module

from ..models.conftest import TINY, randomize


@pytest.fixture(scope="module")
def model():
    return randomize(sk.SkipDiT(**TINY), std=0.05)


def test_cuda_graphs_true_without_cuda_is_a_clear_error(model):
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        sk.sample(model, [1], steps=4, progress=False, cuda_graphs=True)


def test_auto_is_the_eager_executor_on_cpu(model):
    kw = dict(steps=6, method="ddpm", cache=2, progress=False, seed=5)
    auto = sk.sample(model, [1, 2], **kw)
    eager = sk.sample(model, [1, 2], cuda_graphs=False, **kw)
    assert torch.equal(auto, eager)
    (b,) = executor_module.executor_for(model).buffer_sets(executor_module.executor_for(model).signatures[0])
    assert not b.graphs and [key[0] for key in b.lazy] == ["history"]  # eager: nothing captured, no output copies


def test_an_executor_is_reused_across_calls_and_reports_like_the_eager_path(model):
    ex = SkipStackExecutor(model)
    cache = sk.SkipCache(interval=3, shallow_blocks=2)
    model.train()
    got, info = sk.sample(
        model, [3, 4], steps=10, method="ddim", cache=cache, progress=True, executor=ex, return_info=True
    )
    assert model.training  # untouched: sampling embeds without label dropout whatever the mode
    model.eval()
    want, want_info = sk.sample(
        model, [3, 4], steps=10, method="ddim", cache=cache, progress=False, cuda_graphs=False, return_info=True
    )
    assert torch.equal(got, want)
    assert (info.full_steps, info.cached_steps) == (want_info.full_steps, want_info.cached_steps)
    plan = cache.full_steps(GaussianDiffusion.create(10, method="ddim").timesteps)
    assert info.cached_steps == plan.count(False) > 0 and info.cache == cache
    again = sk.sample(model, [3, 4], steps=10, method="ddim", cache=cache, progress=False, executor=ex)
    assert torch.equal(again, got) and len(ex.signatures) == 1


def test_executor_of_another_model_is_refused(model):
    other = randomize(sk.SkipDiT(**TINY))
    with pytest.raises(ValueError, match="another model"):
        sk.sample(model, [1], steps=2, progress=False, executor=SkipStackExecutor(other))


def test_forecast_runs_through_the_executor(model):
    cache = sk.SkipCache(interval=2, shallow_blocks=1, forecast="auto")  # DDIM: resolved to an order > 0
    got, info = sk.sample(
        model,
        [1],
        steps=8,
        method="ddim",
        cache=cache,
        progress=False,
        executor=SkipStackExecutor(model),
        return_info=True,
    )
    want = sk.sample(model, [1], steps=8, method="ddim", cache=cache, progress=False, cuda_graphs=False)
    assert info.forecast > 0 and info.cached_steps > 0
    assert torch.equal(got, want)


def test_skipdit_bench_is_a_command_and_its_flop_bound_is_below_the_block_bound():
    import importlib.util

    from skipdit_kernels import cli
    from skipdit_kernels.commands import bench as bench_command

    argv = ["--models", "DiT-S/2", "--samplers", "ddim10", "--e2e", "none"]
    args = cli.build_parser().parse_args(["bench", *argv])
    assert args.command == "bench" and args.args == argv  # forwarded to the benchmark as given
    module_spec = importlib.util.spec_from_file_location("skipdit_bench_sampling", bench_command.BENCH_FILE)
    bench = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(bench)
    cfg = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0)
    diffusion = GaussianDiffusion.create(50, method="ddim")
    previous = 1.0
    for interval in (2, 3, 4):
        macs, blocks = bench.flop_bound(cfg, diffusion, interval)
        assert previous < macs < blocks  # embedding and final layer always run
        previous = macs
    assert bench.schedule_counts(diffusion, 4) == (14, 36)
