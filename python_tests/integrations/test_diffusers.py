"""Skip-Cache inside diffusers' HunyuanDiT (+ControlNet), DiT and Latte pipelines: tiny random
models and pipelines built here (tiny VAE, text encoders and word-level tokenizers; no downloads)."""
from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers  # noqa: E402
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
        scheduler=scheduler or diffusers.DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=_randomize(T5EncoderModel(T5Config(vocab_size=9, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)), 4),
        tokenizer_2=_tokenizer(),
    )  # fmt: skip
    if not controlnet:
        return diffusers.HunyuanDiTPipeline(**parts)
    cn = diffusers.HunyuanDiT2DControlNetModel.from_transformer(transformer, conditioning_channels=3)
    return diffusers.HunyuanDiTControlNetPipeline(controlnet=_randomize(cn, 5), **parts)


def hunyuan_call(pipe, seed=0, prompt="a cat on the moon", **kw):
    kw = dict(
        prompt=prompt, negative_prompt="red dog", height=64, width=64, num_inference_steps=STEPS, guidance_scale=4.0,
        generator=torch.Generator().manual_seed(seed), use_resolution_binning=False, output_type="latent",
        **kw,
    )  # fmt: skip
    if isinstance(pipe, diffusers.HunyuanDiTControlNetPipeline):
        kw["control_image"] = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    return pipe(**kw).images


def dit_pipeline(scheduler=None):
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=6, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_eps=1e-6,
    )  # fmt: skip
    return diffusers.DiTPipeline(_randomize(transformer, 6), _vae(), scheduler or diffusers.DDIMScheduler())


def dit_call(pipe, seed=0, **kw):
    return pipe(class_labels=[3, 7], guidance_scale=4.0, generator=torch.Generator().manual_seed(seed),
                num_inference_steps=STEPS, output_type="pt", **kw).images  # fmt: skip


def latte_pipeline(scheduler=None):
    transformer = diffusers.LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=4, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_single", cross_attention_dim=16,
        caption_channels=8, video_length=3,
    )  # fmt: skip
    return diffusers.LattePipeline(
        tokenizer=_tokenizer(),
        text_encoder=_randomize(T5EncoderModel(T5Config(vocab_size=9, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)), 4),
        vae=_vae(), transformer=_randomize(transformer, 8), scheduler=scheduler or diffusers.DDIMScheduler(),
    )  # fmt: skip


def latte_call(pipe, seed=0, **kw):
    return pipe(prompt="a cat", negative_prompt="red dog", video_length=3, height=64, width=64, num_inference_steps=STEPS,
                guidance_scale=4.0, generator=torch.Generator().manual_seed(seed), output_type="latent",
                clean_caption=False, **kw).frames  # fmt: skip


FAMILIES = {"hunyuan": (hunyuan_pipeline, hunyuan_call), "dit": (dit_pipeline, dit_call), "latte": (latte_pipeline, latte_call)}


def _units(transformer):
    if isinstance(transformer, diffusers.LatteTransformer3DModel):
        return list(transformer.transformer_blocks)
    if isinstance(transformer, diffusers.DiTTransformer2DModel):
        return list(transformer.transformer_blocks)
    return list(transformer.blocks)


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
    minus input of unit s). Forecast order 1 extrapolates linearly in the step counter."""

    def __init__(self, transformer, cache: sk.SkipCache):
        self.m, self.c = transformer, cache
        self.residual = not isinstance(transformer, diffusers.HunyuanDiT2DModel)
        self.counter, self.store, self.full = 0, [], []
        self.original = type(transformer).forward.__get__(transformer)
        transformer.forward = self.forward

    def remove(self):
        del self.m.forward

    def _deep(self):
        if self.c.forecast == 0 or len(self.store) == 1:
            return self.store[-1][1]
        (c0, d0), (c1, d1) = self.store[-2:]
        c = self.counter
        return d0 * ((c - c1) / (c0 - c1)) + d1 * ((c - c0) / (c1 - c0))

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
                self.store = (self.store + [(self.counter, deep)])[-(self.c.forecast + 1):]
        else:
            deep = self._deep()
            for i in range(s, n - s):
                blocks = [m.transformer_blocks[i], m.temporal_transformer_blocks[i]] if isinstance(
                    m, diffusers.LatteTransformer3DModel) else [_units(m)[i]]
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
    sd.apply_skip_cache(pipe, sk.SkipCache(interval=1, shallow_blocks=1))
    assert type(pipe) is not base_class and type(pipe).__name__ == base_class.__name__
    assert torch.equal(call(pipe), original)
    assert "forward" not in pipe.transformer.__dict__  # the session closed with the call
    sd.remove_skip_cache(pipe)
    assert type(pipe) is base_class and "__call__" not in vars(pipe)
    assert torch.equal(call(pipe), original)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("forecast", [0, 1])
def test_cached_pipeline_equals_the_reference_schedule(family, forecast):
    make, call = FAMILIES[family]
    pipe = make()
    cache = _cache_for(family, forecast=forecast, start_t=700 if family == "hunyuan" else 1000)
    ref = ReferenceSkipCache(pipe.transformer, cache)
    expected = call(pipe)
    ref.remove()
    assert True in ref.full and False in ref.full, ref.full
    sd.apply_skip_cache(pipe, cache)
    got = call(pipe)
    if forecast == 0:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, call(sd.remove_skip_cache(pipe) or pipe))  # the cache did change the output
