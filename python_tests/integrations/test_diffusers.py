"""Skip-Cache inside diffusers' HunyuanDiT (+ControlNet), DiT and Latte pipelines: tiny random
models and pipelines built here (tiny VAE, text encoders and word-level tokenizers; no downloads)."""

from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers  # noqa: E402
from diffusers.models.embeddings import get_2d_rotary_pos_embed  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.integrations import diffusers as sd  # noqa: E402

STEPS = 6


# -- tiny components --------------------------------------------------------------------------------


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere (diffusers zero-initialises adaLN/ControlNet layers, which would make
    the deep blocks no-ops and the cache trivially exact)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "cat": 3, "dog": 4, "on": 5, "the": 6, "moon": 7, "red": 8}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def _vae() -> diffusers.AutoencoderKL:
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )  # fmt: skip
    return _randomize(vae, 1, 0.05)


def _t5_encoder() -> T5EncoderModel:
    return _randomize(T5EncoderModel(T5Config(vocab_size=9, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)), 4)


def _hunyuan_transformer(layers: int = 8) -> diffusers.HunyuanDiT2DModel:
    model = diffusers.HunyuanDiT2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=8, hidden_size=16,
        num_layers=layers, cross_attention_dim=16, cross_attention_dim_t5=8, pooled_projection_dim=8,
        text_len=77, text_len_t5=256,
    )  # fmt: skip
    return _randomize(model, 2)


def hunyuan_pipeline(scheduler=None, controlnet: bool = False):
    transformer = _hunyuan_transformer()
    parts = dict(
        vae=_vae(),
        text_encoder=_randomize(BertModel(BertConfig(vocab_size=9, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, max_position_embeddings=80)), 3),
        tokenizer=_tokenizer(),
        transformer=transformer,
        scheduler=scheduler or diffusers.DDPMScheduler(clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=_t5_encoder(),
        tokenizer_2=_tokenizer(),
    )  # fmt: skip
    if not controlnet:
        return diffusers.HunyuanDiTPipeline(**parts)
    cn = diffusers.HunyuanDiT2DControlNetModel(
        conditioning_channels=3, num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=8,
        hidden_size=16, transformer_num_layers=8, cross_attention_dim=16, cross_attention_dim_t5=8,
        pooled_projection_dim=8, text_len=77, text_len_t5=256,
    )  # fmt: skip
    return diffusers.HunyuanDiTControlNetPipeline(controlnet=_randomize(cn, 5), **parts)


def hunyuan_call(pipe, seed=0, prompt="a cat on the moon", **kw):
    kw = dict(
        prompt=prompt, negative_prompt="red dog", height=64, width=64, num_inference_steps=STEPS, guidance_scale=4.0,
        generator=torch.Generator().manual_seed(seed), use_resolution_binning=False, output_type="latent",
        **kw,
    )  # fmt: skip
    if isinstance(pipe, diffusers.HunyuanDiTControlNetPipeline):
        kw["control_image"] = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
        torch.manual_seed(7)  # the pipeline samples the control image's VAE latent from the global generator
    return pipe(**kw).images


def dit_pipeline(scheduler=None):
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=6, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_eps=1e-6,
    )  # fmt: skip
    return diffusers.DiTPipeline(
        _randomize(transformer, 6), _vae(), scheduler or diffusers.DDIMScheduler(clip_sample=False)
    )


def dit_call(pipe, seed=0, **kw):
    torch.manual_seed(seed)  # DiTPipeline's scheduler.step draws stochastic samplers' noise from the global generator
    return pipe(class_labels=[3, 7], guidance_scale=4.0, generator=torch.Generator().manual_seed(seed),
                num_inference_steps=STEPS, output_type="pt", **kw).images  # fmt: skip


def latte_pipeline(scheduler=None):
    transformer = diffusers.LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=4, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_single", cross_attention_dim=16,
        caption_channels=8, video_length=3,
    )  # fmt: skip
    return _t5_pipeline(diffusers.LattePipeline, _randomize(transformer, 8), scheduler)


def _t5_pipeline(cls, transformer, scheduler):
    """A pipeline of the (tokenizer, T5 text encoder, VAE, transformer, scheduler) kind: Latte, PixArt."""
    return cls(tokenizer=_tokenizer(), text_encoder=_t5_encoder(), vae=_vae(), transformer=transformer,
               scheduler=scheduler or diffusers.DDIMScheduler(clip_sample=False))  # fmt: skip


def latte_call(pipe, seed=0, **kw):
    return pipe(prompt="a cat", negative_prompt="red dog", video_length=3, height=64, width=64, num_inference_steps=STEPS,
                guidance_scale=4.0, generator=torch.Generator().manual_seed(seed), output_type="latent",
                clean_caption=False, **kw).frames  # fmt: skip


def pixart_pipeline(scheduler=None):
    transformer = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=6, cross_attention_dim=16,
        caption_channels=8, sample_size=8, patch_size=2, use_additional_conditions=False,
    )  # fmt: skip
    return _t5_pipeline(diffusers.PixArtAlphaPipeline, _randomize(transformer, 9), scheduler)


def pixart_call(pipe, seed=0, **kw):
    return pipe(prompt="a cat on the moon", negative_prompt="red dog", height=64, width=64, num_inference_steps=STEPS,
                guidance_scale=4.0, generator=torch.Generator().manual_seed(seed), output_type="latent",
                clean_caption=False, use_resolution_binning=False, **kw).images  # fmt: skip


FAMILIES = {
    "hunyuan": (hunyuan_pipeline, hunyuan_call), "dit": (dit_pipeline, dit_call), "latte": (latte_pipeline, latte_call),
    "pixart": (pixart_pipeline, pixart_call),
}  # fmt: skip


def _units(transformer):
    if isinstance(transformer, diffusers.HunyuanDiT2DModel):
        return list(transformer.blocks)
    return list(transformer.transformer_blocks)  # DiT, PixArt; Latte: the spatial block of each pair


# -- an independent reference of the schedule -------------------------------------------------------


def _unit_entry(transformer, i):
    """The first block of unit i (Latte: its spatial block)."""
    return _units(transformer)[i]


class ReferenceSkipCache:
    """Skip-Cache written out for the test and installed as the transformer's instance forward. The
    official schedule: full at counter % interval == 0, while t >= start_t, or with nothing stored;
    counter and store reset after a step with t <= stop_t. The transformer's own forward runs; on a
    cached step hooks make units s..n-s-1 pass their input through (Latte's reshapes around an
    identity pair cancel) and replace the input of unit n-s by the deep state: HunyuanDiT the stored
    input of unit n-s, the others the input of unit s plus the stored residual (input of unit n-s
    minus input of unit s). Forecast order k interpolates the last k + 1 stored states at their step
    counters with Lagrange's polynomial, evaluated at the current counter."""

    def __init__(self, transformer, cache: sk.SkipCache):
        self.m, self.c = transformer, cache
        self.residual = not isinstance(transformer, diffusers.HunyuanDiT2DModel)
        self.counter, self.store, self.full = 0, [], []
        self.original = type(transformer).forward.__get__(transformer)
        transformer.forward = self.forward

    def remove(self):
        del self.m.forward

    def _deep(self):
        c, out = self.counter, 0
        for k, (ck, dk) in enumerate(self.store):
            weight = 1.0
            for m, (cm, _) in enumerate(self.store):
                if m != k:
                    weight *= (c - cm) / (ck - cm)
            out = out + dk * weight
        return out

    def forward(self, *args, **kwargs):
        t = float(torch.as_tensor(args[1] if len(args) > 1 else kwargs["timestep"]).reshape(-1)[0])
        full = self.counter % self.c.interval == 0 or not self.store or t >= self.c.start_t
        self.full.append(full)
        m, s = self.m, self.c.shallow_blocks
        n = len(_units(m))
        entry = {}

        def enter(mod, inp):
            entry["h"] = inp[0]

        handles = [_unit_entry(m, s).register_forward_pre_hook(enter)]
        if full:

            def keep(mod, inp):
                deep = inp[0] - entry["h"] if self.residual else inp[0]
                self.store = (self.store + [(self.counter, deep)])[-(self.c.forecast + 1) :]
        else:
            deep = self._deep()
            for i in range(s, n - s):
                blocks = (
                    [m.transformer_blocks[i], m.temporal_transformer_blocks[i]]
                    if isinstance(m, diffusers.LatteTransformer3DModel)
                    else [_units(m)[i]]
                )
                for b in blocks:
                    handles.append(b.register_forward_hook(lambda mod, inp, out: inp[0]))

            def keep(mod, inp):
                return (entry["h"] + deep if self.residual else deep, *inp[1:])

        handles.append(_unit_entry(m, n - s).register_forward_pre_hook(keep))
        try:
            out = self.original(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        self.counter += 1
        if t <= self.c.stop_t:
            self.counter, self.store = 0, []
        return out


def _cache_for(family, **kw):
    return sk.SkipCache(**{**dict(interval=2, shallow_blocks=1, start_t=700, stop_t=50), **kw})


# -- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_step_full_equals_the_original_and_removal_restores_it(family):
    make, call = FAMILIES[family]
    pipe = make()
    base_class = type(pipe)
    original = call(pipe)
    # diffusers' own block forward (the fast DiT blocks are equal within rounding: test_diffusers_fast.py)
    sd.apply_skip_cache(pipe, sk.SkipCache(interval=1, shallow_blocks=1), fast_blocks=False)
    assert type(pipe) is not base_class and type(pipe).__name__ == base_class.__name__
    assert torch.equal(call(pipe), original)
    assert "forward" not in pipe.transformer.__dict__  # the session closed with the call
    sd.remove_skip_cache(pipe)
    assert type(pipe) is base_class and "__call__" not in vars(pipe)
    assert torch.equal(call(pipe), original)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("forecast", [0, 1, 2])
def test_cached_pipeline_equals_the_reference_schedule(family, forecast):
    make, call = FAMILIES[family]
    pipe = make()
    cache = _cache_for(family, forecast=forecast, start_t=700 if family == "hunyuan" else 1000)
    ref = ReferenceSkipCache(pipe.transformer, cache)
    expected = call(pipe)
    ref.remove()
    assert True in ref.full and False in ref.full, ref.full
    sd.apply_skip_cache(pipe, cache, fast_blocks=False)  # the reference runs diffusers' own blocks
    got = call(pipe)
    if forecast == 0:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, call(sd.remove_skip_cache(pipe) or pipe))  # the cache did change the output


def _count_unit_calls(transformer):
    counts = [0] * len(_units(transformer))
    for i, block in enumerate(_units(transformer)):
        block.register_forward_pre_hook(lambda mod, inp, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_deep_units_are_not_called_on_cached_steps(family):
    make, call = FAMILIES[family]
    pipe = make()
    cache = _cache_for(family, start_t=1000)
    pipe.scheduler.set_timesteps(STEPS)
    timesteps = [float(t) for t in pipe.scheduler.timesteps]
    full = cache.full_steps(timesteps)
    assert full.count(False) >= 2
    counts = _count_unit_calls(pipe.transformer)
    sd.apply_skip_cache(pipe, cache)
    call(pipe)
    s, n = cache.shallow_blocks, len(counts)
    assert counts == [STEPS] * s + [full.count(True)] * (n - 2 * s) + [STEPS] * s, (counts, full)


def test_controlnet_residuals_follow_the_units_that_run():
    pipe = hunyuan_pipeline(controlnet=True)
    plain = hunyuan_call(pipe)
    cache = _cache_for("hunyuan")
    # without the cache the ControlNet changes the output; with every step full it is the original
    assert not torch.equal(plain, hunyuan_call(pipe, controlnet_conditioning_scale=0.0))
    # (diffusers' own blocks: the fast HunyuanDiT blocks are equal within rounding, test_diffusers_fast.py)
    sd.apply_skip_cache(pipe, sk.SkipCache(interval=1, shallow_blocks=1), fast_blocks=False)
    assert torch.equal(hunyuan_call(pipe), plain)
    # with the cache: the reference hooks into diffusers' own forward, which adds every residual to
    # the skip its layer pops; on cached steps only the last layer runs and gets its own residual
    sd.remove_skip_cache(pipe)
    ref = ReferenceSkipCache(pipe.transformer, cache)
    expected = hunyuan_call(pipe)
    ref.remove()
    sd.apply_skip_cache(pipe, cache, fast_blocks=False)
    counted = _count_unit_calls(pipe.transformer)
    got = hunyuan_call(pipe)
    assert torch.equal(got, expected)
    assert counted[0] == STEPS and counted[1] < STEPS  # some steps were cached
    # the residual list is read, not popped: run one cached-pipeline step by hand
    t = pipe.transformer
    controls = [torch.randn(2, 16, 16) for _ in range(t.config.num_layers // 2 - 1)]
    before = list(controls)
    kw = _hunyuan_inputs(t)
    with sd.enable_skip_cache(t, cache):
        t(torch.randn(2, 4, 8, 8), torch.tensor([999.0, 999.0]), controlnet_block_samples=controls, **kw)
    assert len(controls) == len(before) and all(a is b for a, b in zip(controls, before))


def _hunyuan_inputs(t, n=2):
    return dict(
        encoder_hidden_states=torch.randn(n, 77, 16), text_embedding_mask=torch.ones(n, 77, dtype=torch.long),
        encoder_hidden_states_t5=torch.randn(n, 256, 8), text_embedding_mask_t5=torch.ones(n, 256, dtype=torch.long),
        image_meta_size=torch.tensor([[64.0, 64, 64, 64, 0, 0]] * n), style=torch.zeros(n, dtype=torch.long),
        image_rotary_emb=get_2d_rotary_pos_embed(8, ((0, 0), (4, 4)), (4, 4)), return_dict=False,
    )  # fmt: skip


def test_interrupted_call_does_not_leak_into_the_next():
    pipe = hunyuan_pipeline()
    sd.apply_skip_cache(pipe, _cache_for("hunyuan"))
    fresh = hunyuan_call(pipe, seed=1)

    def boom(pipe_, i, t, kwargs):
        if i == 2:
            raise RuntimeError("stop")
        return kwargs

    with pytest.raises(RuntimeError, match="stop"):
        hunyuan_call(pipe, seed=0, callback_on_step_end=boom)
    assert "forward" not in pipe.transformer.__dict__  # the session closed on the exception
    assert torch.equal(hunyuan_call(pipe, seed=1), fresh)

    def interrupt(pipe_, i, t, kwargs):  # diffusers' own interruption: the remaining steps are skipped
        if i == 2:
            pipe_._interrupt = True
        return kwargs

    hunyuan_call(pipe, seed=0, callback_on_step_end=interrupt)
    assert torch.equal(hunyuan_call(pipe, seed=1), fresh)


def test_two_threads_on_one_pipeline():
    pipe = dit_pipeline()  # DDIM: the scheduler keeps no per-call state, so one pipeline can serve two calls
    sd.apply_skip_cache(pipe, sk.SkipCache(interval=2, shallow_blocks=2, forecast="auto"))
    barrier = threading.Barrier(2, timeout=60)
    original = pipe.transformer.transformer_blocks[0].forward

    def meet(*args, **kwargs):  # both calls are inside their requests before either continues
        if not getattr(local, "met", False):
            local.met = True
            barrier.wait()
        return original(*args, **kwargs)

    local = threading.local()
    pipe.transformer.transformer_blocks[0].forward = meet
    local.met = True  # this thread's calls pass through (block 0 runs its own forward, as in the threads)
    expected = {seed: dit_call(pipe, seed=seed) for seed in (0, 1)}
    results, errors = {}, []

    def run(seed):
        try:
            results[seed] = dit_call(pipe, seed=seed)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    del pipe.transformer.transformer_blocks[0].forward
    assert not errors, errors
    for seed in (0, 1):
        assert torch.equal(results[seed], expected[seed])
    assert "forward" not in pipe.transformer.__dict__


def test_forecast_auto_follows_the_scheduler():
    assert not sd.scheduler_is_stochastic(diffusers.DDIMScheduler())
    assert sd.scheduler_is_stochastic(diffusers.DDIMScheduler(), eta=0.5)
    assert sd.scheduler_is_stochastic(diffusers.DDPMScheduler())
    assert not sd.scheduler_is_stochastic(diffusers.DPMSolverMultistepScheduler())
    assert sd.scheduler_is_stochastic(diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"))
    assert sd.scheduler_is_stochastic(diffusers.EulerAncestralDiscreteScheduler())

    class MyDDIM(diffusers.DDIMScheduler):
        pass

    assert sd.scheduler_is_stochastic(MyDDIM())
    for scheduler, order in (
        (diffusers.DDIMScheduler(), sk.cache.forecast.AUTO_DETERMINISTIC_ORDER),
        (diffusers.DDPMScheduler(), 0),
    ):
        pipe = dit_pipeline(scheduler)
        auto = dit_call(sd.apply_skip_cache(pipe, sk.SkipCache(shallow_blocks=2), forecast="auto"))
        explicit = dit_call(sd.apply_skip_cache(pipe, sk.SkipCache(shallow_blocks=2, forecast=order)))
        assert torch.equal(auto, explicit)


def test_unsupported_targets_name_the_supported_models():
    for name in ("HunyuanDiT2DModel", "DiTTransformer2DModel", "LatteTransformer3DModel"):
        with pytest.raises(TypeError, match=name):
            sd.apply_skip_cache(torch.nn.Linear(2, 2))
        with pytest.raises(TypeError, match=name):
            sd.enable_skip_cache(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="supports"):
        sd.apply_skip_cache(object())
    with pytest.raises(ValueError, match="shallow_blocks"):
        sd.apply_skip_cache(dit_pipeline(), sk.SkipCache(shallow_blocks=4))  # 6 blocks
    transformer = dit_pipeline().transformer
    with pytest.raises(ValueError, match="explicit order"):
        sd.enable_skip_cache(transformer, sk.SkipCache(shallow_blocks=2), forecast="auto")
    with pytest.raises(TypeError, match="enable_skip_cache"):
        sd.apply_skip_cache(transformer)  # pipelines only; a transformer is a step-by-step request


def test_bare_transformer_session():
    t = _hunyuan_transformer()
    kw = _hunyuan_inputs(t)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        plain = t(x, torch.tensor([500.0, 500.0]), **kw)[0]
    session = sd.enable_skip_cache(t, sk.SkipCache.preset("video"), fast_blocks=False)  # diffusers' own blocks
    assert isinstance(session, sd.SkipCacheRequest)
    assert torch.equal(t(x, torch.tensor([500.0, 500.0]), **kw)[0], plain)  # the first step is full
    t(x, torch.tensor([400.0, 400.0]), **kw)
    assert session.cached_steps == 1
    sd.disable_skip_cache(t)
    assert "forward" not in t.__dict__


def _random_dit(**kw):
    model = sk.DiT(
        input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=2, num_classes=10, **kw
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_dit_conversion_round_trip(learn_sigma):
    model = _random_dit(learn_sigma=learn_sigma)
    transformer = sd.dit_to_diffusers(model)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([999, 500, 1]), torch.tensor([1, 10, 4])  # 10: the null class
    with torch.no_grad():
        ours = model(x, t, y)
        theirs = transformer(x, timestep=t, class_labels=y).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    back = sd.dit_from_diffusers(transformer)
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # diffusers' own timestep frequencies (lost on save/reload) are what the attribute fixes
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 1
    with torch.no_grad():
        shifted = transformer(x, timestep=t, class_labels=y).sample
        assert (shifted - ours).abs().max() > 1e-3
        sd.use_official_timestep_frequencies(transformer)
        torch.testing.assert_close(transformer(x, timestep=t, class_labels=y).sample, ours, rtol=1e-5, atol=1e-5)


def test_dit_conversion_rejects_what_it_cannot_express():
    with pytest.raises(ValueError, match="long skips"):
        sd.dit_to_diffusers(sk.SkipDiT(input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10))
    with pytest.raises(ValueError, match="null"):
        sd.dit_to_diffusers(_random_dit(class_dropout_prob=0.0))
    transformer = sd.dit_to_diffusers(_random_dit())
    with torch.no_grad():
        transformer.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(1)
    with pytest.raises(ValueError, match="differs from block 0"):
        sd.dit_from_diffusers(transformer)


def test_importing_the_library_does_not_import_diffusers():
    import subprocess
    import sys

    code = (
        "import sys, skipdit_kernels, skipdit_kernels.integrations; assert 'diffusers' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
