"""A pipeline's Skip-Cache options and state belong to its request: pipelines sharing a transformer
keep their own, transformer-level diffusers hooks run once per step, a failed step commits nothing,
sessions closed out of order stay honest; the defaults cache on every depth and say when a
schedule does nothing; the families, their docs table and the tested diffusers version agree."""

from __future__ import annotations

import pathlib
import warnings

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers  # noqa: E402
from diffusers.hooks import HookRegistry, ModelHook  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.integrations import diffusers as sd  # noqa: E402

from .test_diffusers import (  # noqa: E402
    FAMILIES,
    STEPS,
    _cache_for,
    _hunyuan_inputs,
    _hunyuan_transformer,
    _randomize,
    dit_call,
    dit_pipeline,
    hunyuan_call,
    hunyuan_pipeline,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_options_belong_to_the_pipeline_not_the_shared_transformer():
    pipe1 = hunyuan_pipeline()
    pipe2 = diffusers.HunyuanDiTPipeline(**pipe1.components)  # the same transformer and other components
    assert pipe2.transformer is pipe1.transformer
    plain = hunyuan_call(pipe1)
    _quiet(sd.apply_skip_cache, pipe1, sk.SkipCache(interval=1, shallow_blocks=1), fast_blocks=False)
    assert torch.equal(hunyuan_call(pipe1), plain)
    sd.apply_skip_cache(pipe2)  # the default: cached steps and fast blocks
    cached = hunyuan_call(pipe2)
    assert not torch.equal(cached, plain)
    assert torch.equal(hunyuan_call(pipe1), plain)  # pipe1 keeps its options
    sd.remove_skip_cache(pipe2)
    assert torch.equal(hunyuan_call(pipe2), plain) and torch.equal(hunyuan_call(pipe1), plain)
    sd.remove_skip_cache(pipe1)
    assert type(pipe1) is diffusers.HunyuanDiTPipeline and torch.equal(hunyuan_call(pipe1), plain)
    assert "forward" not in pipe1.transformer.__dict__ and not hasattr(pipe1.transformer, "_diffusers_hook")


class _Counting(ModelHook):
    def __init__(self):
        super().__init__()
        self.pre = self.post = 0

    def pre_forward(self, module, *args, **kwargs):
        self.pre += 1
        return args, kwargs

    def post_forward(self, module, output):
        self.post += 1
        return output


@pytest.mark.parametrize("order", ["hook_then_cache", "cache_then_hook"])
def test_a_transformer_level_diffusers_hook_runs_once_per_step(order):
    pipe = dit_pipeline()
    cache = _cache_for("dit", start_t=1000)
    plain = dit_call(pipe)
    hook = _Counting()
    if order == "cache_then_hook":
        sd.apply_skip_cache(pipe, cache)
    HookRegistry.check_if_exists_or_initialize(pipe.transformer).register_hook(hook, "counting")
    if order == "hook_then_cache":
        sd.apply_skip_cache(pipe, cache)
    cached = dit_call(pipe)
    assert (hook.pre, hook.post) == (STEPS, STEPS)  # one transformer call per step (CFG is batched)
    assert not torch.equal(cached, plain)
    sd.remove_skip_cache(pipe)
    assert torch.equal(dit_call(pipe), plain) and (hook.pre, hook.post) == (2 * STEPS, 2 * STEPS)
    HookRegistry.check_if_exists_or_initialize(pipe.transformer).remove_hook("counting")
    assert torch.equal(dit_call(pipe), plain) and hook.pre == 2 * STEPS


def test_a_step_that_raises_commits_nothing():
    t = _hunyuan_transformer()
    kw = _hunyuan_inputs(t)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    steps = [torch.tensor([v, v]) for v in (500.0, 400.0, 300.0)]
    cache = sk.SkipCache(interval=2, shallow_blocks=1, start_t=1000)
    with torch.no_grad():
        with sd.enable_skip_cache(t, cache, fast_blocks=False) as request:
            expected = [t(x, s, **kw)[0] for s in steps]
        middle = t.blocks[3]
        handle = middle.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(MemoryError("out of memory")))
        with sd.enable_skip_cache(t, cache, fast_blocks=False) as request:
            with pytest.raises(MemoryError):
                t(x, steps[0], **kw)  # the first (full) step fails inside a middle block
            handle.remove()
            assert (request.full_steps, request.cached_steps) == (0, 0)
            got = [t(x, s, **kw)[0] for s in steps]  # the retry is the first step of the trajectory
            assert (request.full_steps, request.cached_steps) == (2, 1)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_sessions_closed_out_of_order_stay_honest():
    t = _hunyuan_transformer()
    kw = _hunyuan_inputs(t)
    x = torch.randn(2, 4, 8, 8)
    cache = sk.SkipCache(interval=2, shallow_blocks=1, start_t=1000)
    with torch.no_grad():
        s1 = sd.enable_skip_cache(t, cache)
        s2 = sd.enable_skip_cache(t, cache)
        s1.close()
        for v in (500.0, 400.0, 300.0, 200.0):
            t(x, torch.tensor([v, v]), **kw)
        assert (s2.full_steps, s2.cached_steps, s1.full_steps) == (2, 2, 0)
        s2.close()
    assert "forward" not in t.__dict__


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_calls_equal_two_fresh_pipelines(family):
    make, call = FAMILIES[family]
    cache = _cache_for(family, start_t=1000)
    pipe = sd.apply_skip_cache(make(), cache)
    first, second = call(pipe, seed=0), call(pipe, seed=1)
    assert torch.equal(first, call(sd.apply_skip_cache(make(), cache), seed=0))
    assert torch.equal(second, call(sd.apply_skip_cache(make(), cache), seed=1))


def _dit(layers: int) -> diffusers.DiTTransformer2DModel:
    t = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=layers, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000,
    )  # fmt: skip
    return t.eval()


@pytest.mark.parametrize("layers", [3, 4, 6, 8, 12, 28])
def test_the_default_schedule_caches_on_every_depth(layers):
    cache = sd.default_cache(_dit(layers))
    assert 2 * cache.shallow_blocks < layers and cache.interval > 1
    if layers == 28:
        assert cache == sk.SkipCache()  # the published DiT-XL/2 schedule at its own depth
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default never warns that it skips nothing
        sd.apply_skip_cache(diffusers.DiTPipeline(_dit(layers), None, diffusers.DDIMScheduler()))


def test_too_shallow_a_transformer_is_refused_with_the_depth():
    with pytest.raises(ValueError, match="DiTTransformer2DModel with 2 blocks.*at least 3"):
        sd.default_cache(_dit(2))


def test_warnings_for_a_schedule_that_does_nothing_train_mode_and_applying_twice():
    pipe = dit_pipeline()  # 6 blocks
    with pytest.warns(UserWarning, match=r"skips nothing.*3 shallow blocks on each side cover all 6.*shallow_blocks=1"):
        sd.apply_skip_cache(pipe, sk.SkipCache(shallow_blocks=3))
    with pytest.warns(UserWarning, match="already had Skip-Cache"):
        sd.apply_skip_cache(pipe, sk.SkipCache(shallow_blocks=1))
    sd.remove_skip_cache(pipe)
    pipe.transformer.train()
    with pytest.warns(UserWarning, match="train mode"):
        sd.apply_skip_cache(pipe)
    with pytest.warns(UserWarning, match="train mode"):
        sd.enable_skip_cache(pipe.transformer, sk.SkipCache(shallow_blocks=1)).close()


def test_supported_families_come_from_the_declarations():
    assert sd.SUPPORTED_TRANSFORMERS == tuple(f.transformer.__name__ for f in sd.FAMILIES)
    assert "PixArtTransformer2DModel" in sd.SUPPORTED_TRANSFORMERS
    table = sd.supported_table()
    for path in (ROOT / "docs" / "diffusers.md", ROOT / "README.md"):
        assert table in path.read_text(), f"{path.name}'s table is out of date; paste sd.supported_table():\n{table}"


def test_a_new_family_is_one_small_file():
    path = ROOT / "skipdit_kernels" / "integrations" / "diffusers" / "families" / "pixart.py"
    assert len(path.read_text().splitlines()) < 120


def test_diffusers_is_a_tested_version():
    minor = ".".join(diffusers.__version__.split(".")[:2])
    assert minor in sd.TESTED_DIFFUSERS, (
        f"diffusers {diffusers.__version__} is untested: run these tests and record it in family.TESTED_DIFFUSERS"
    )


def test_a_request_leaves_the_transformer_as_it_was():
    """The transformer's modules, state and forward are its own again after the last request."""
    t = _randomize(_hunyuan_transformer(), 5)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    classes = [type(m) for m in t.modules()]
    with sd.enable_skip_cache(t, sk.SkipCache.preset("video")):
        assert type(t.blocks) is not torch.nn.ModuleList and isinstance(t.blocks, torch.nn.ModuleList)
    assert [type(m) for m in t.modules()] == classes
    assert all(torch.equal(v, before[k]) for k, v in t.state_dict().items())
    assert "forward" not in t.__dict__ and not hasattr(t, "_diffusers_hook")


# -- a declaration beyond the shipped families: two concatenated block lists, blocks that take and return two states


class _TwoStreamBlock(torch.nn.Module):
    """A block that takes (hidden_states, encoder_hidden_states, temb) and returns (encoder, hidden)."""

    def __init__(self, dim: int):
        super().__init__()
        self.a, self.b = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)

    def forward(self, hidden_states, encoder_hidden_states, temb):
        h = hidden_states + torch.tanh(self.a(hidden_states) + temb[:, None])
        e = encoder_hidden_states + torch.tanh(self.b(encoder_hidden_states) + h.mean(1, keepdim=True))
        return e, h


class _SingleStreamBlock(_TwoStreamBlock):
    pass


class _TwoListTransformer(torch.nn.Module):
    def __init__(self, dim: int = 8, dual: int = 3, single: int = 3):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(_TwoStreamBlock(dim) for _ in range(dual))
        self.single_transformer_blocks = torch.nn.ModuleList(_SingleStreamBlock(dim) for _ in range(single))

    def forward(self, hidden_states, encoder_hidden_states, timestep):
        temb = torch.sin(timestep[:, None] / 100.0 * torch.arange(1, hidden_states.shape[-1] + 1))
        for block in self.transformer_blocks:
            encoder_hidden_states, hidden_states = block(
                hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb
            )
        for block in self.single_transformer_blocks:
            encoder_hidden_states, hidden_states = block(hidden_states, encoder_hidden_states, temb)
        return hidden_states + encoder_hidden_states.mean(1, keepdim=True)


def test_a_declared_family_with_two_lists_and_two_states_follows_the_residual_schedule():
    io = sd.BlockIO(
        inputs=("hidden_states", "encoder_hidden_states"), outputs=("encoder_hidden_states", "hidden_states")
    )
    family = sd.Family(
        transformer=_TwoListTransformer, pipelines=(), blocks=("transformer_blocks", "single_transformer_blocks"), io=io,
    )  # fmt: skip
    model = _randomize(_TwoListTransformer(), 21)
    units = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    x, text = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    cache = sk.SkipCache(interval=2, shallow_blocks=2, start_t=1000)
    timesteps = [900.0, 700.0, 500.0, 300.0, 100.0]

    def reference():  # the residual schedule written out: outer units every step, the middle's change reused
        outs, stored = [], None
        for k, v in enumerate(timesteps):
            t = torch.tensor([v, v])
            temb = torch.sin(t[:, None] / 100.0 * torch.arange(1, 9))
            h, e = x, text
            for i, block in enumerate(units):
                if i == 2:
                    h_s, e_s = h, e
                if i == 4:
                    if k % 2 == 0:
                        stored = (h - h_s, e - e_s)
                    else:
                        h, e = h_s + stored[0], e_s + stored[1]
                if k % 2 == 1 and 2 <= i < 4:
                    continue
                e, h = block(h, e, temb)
            outs.append(h + e.mean(1, keepdim=True))
        return outs

    with torch.no_grad():
        expected = reference()
        with sd.SkipCacheRequest(model, family, cache, fast_blocks=True) as request:
            got = [model(x, text, torch.tensor([v, v])) for v in timesteps]
            assert (request.full_steps, request.cached_steps) == (3, 2)
        plain = model(x, text, torch.tensor([700.0, 700.0]))  # the step at 700 was cached
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert not torch.equal(got[1], plain) and type(model.transformer_blocks) is torch.nn.ModuleList


def test_denoising_calls_a_pipeline_names_are_trajectories_of_their_own():
    """Pipelines that call the transformer once per branch announce each call with diffusers'
    ``cache_context("cond"/"uncond")``: each branch follows its own schedule and deep state, equal
    to a request that sees that branch alone; so do unnamed calls at one timestep on one latents
    tensor (pipelines without ``cache_context``)."""
    from diffusers.models.cache_utils import CacheMixin

    class _Named(_TwoListTransformer, CacheMixin):
        pass

    io = sd.BlockIO(
        inputs=("hidden_states", "encoder_hidden_states"), outputs=("encoder_hidden_states", "hidden_states")
    )
    family = sd.Family(
        transformer=_Named, pipelines=(), blocks=("transformer_blocks", "single_transformer_blocks"), io=io
    )
    model = _randomize(_Named(), 22)
    x, texts = torch.randn(2, 5, 8), {"cond": torch.randn(2, 3, 8), "uncond": torch.randn(2, 3, 8)}
    cache = sk.SkipCache(interval=2, shallow_blocks=2, start_t=1000)
    timesteps = [torch.tensor([v, v]) for v in (900.0, 700.0, 500.0, 300.0)]
    with torch.no_grad():
        alone = {}
        for name, text in texts.items():
            with sd.SkipCacheRequest(model, family, cache, fast_blocks=False):
                alone[name] = [model(x, text, t) for t in timesteps]
        named, unnamed = {n: [] for n in texts}, {n: [] for n in texts}
        with sd.SkipCacheRequest(model, family, cache, fast_blocks=False) as request:
            for t in timesteps:
                for name, text in texts.items():
                    with model.cache_context(name):
                        named[name].append(model(x, text, t))
            assert (request.full_steps, request.cached_steps) == (4, 4)
        with sd.SkipCacheRequest(model, family, cache, fast_blocks=False):
            for t in timesteps:
                for name, text in texts.items():
                    unnamed[name].append(model(x, text, t))
    for name in texts:
        assert all(torch.equal(a, b) for a, b in zip(named[name], alone[name]))
        # unnamed: the second call at a timestep on the same latents is the step's second branch
        assert all(torch.equal(a, b) for a, b in zip(unnamed[name], alone[name]))


def test_the_alpha_sigma_basis_reads_the_pipelines_noise_schedule(monkeypatch):
    """``forecast_basis='alpha-sigma'`` fits the scheduler's own ``alphas_cumprod`` (a scaled-linear
    schedule is not DDPM's linear one); a bare transformer must be given it, and a scheduler without
    one (flow matching) is refused before work."""
    from skipdit_kernels.cache import schedule

    cache = sk.SkipCache(interval=2, shallow_blocks=1, start_t=1000, forecast=1, forecast_basis="alpha-sigma")
    tables = []
    weights = schedule.alpha_sigma_weights
    monkeypatch.setattr(
        schedule, "alpha_sigma_weights", lambda nodes, t, table: tables.append(table) or weights(nodes, t, table)
    )
    pipe = dit_pipeline(diffusers.DDIMScheduler(clip_sample=False, beta_schedule="scaled_linear"))
    sd.apply_skip_cache(pipe, cache)
    dit_call(pipe)
    linear = diffusers.DDIMScheduler().alphas_cumprod
    assert not torch.equal(pipe.scheduler.alphas_cumprod, linear)
    assert tables and all(torch.equal(torch.as_tensor(table), pipe.scheduler.alphas_cumprod) for table in tables)
    pipe = dit_pipeline()
    with pytest.raises(ValueError, match="alphas_cumprod="):
        sd.enable_skip_cache(pipe.transformer, cache)
    sd.enable_skip_cache(pipe.transformer, cache, alphas_cumprod=pipe.scheduler.alphas_cumprod).close()
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler does not have"):
        sd.apply_skip_cache(pipe, cache)
    assert type(pipe) is diffusers.DiTPipeline
