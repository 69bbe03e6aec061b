"""Tiny random pipelines of the diffusers families Skip-Cache declares, built offline.

Each family has ``<name>_pipe()`` (the pipeline around a tiny random transformer, every weight drawn
from N(0, 0.2) so no block is a no-op; no text encoders, tokenizers or VAE) and ``<name>_call(pipe,
seed, **kw)`` (a call with fixed random prompt embeddings, ``STEPS`` steps unless ``kw`` says
otherwise, latents out). The transformer configs follow diffusers' own pipeline tests
(tests/pipelines/<family>/), with enough blocks that a cached step skips some.
"""

from __future__ import annotations

import inspect

import diffusers
import torch

from .test_diffusers import _randomize as randomize

STEPS = 4
FLOW = diffusers.FlowMatchEulerDiscreteScheduler


def emb(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def ones(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.ones(*shape, dtype=dtype)


def _pipeline(cls, transformer, seed: int, scheduler, **parts):
    """``cls`` around ``transformer`` (randomized with ``seed``); every component not in ``parts``
    (text encoders, tokenizers, VAE, image encoders) None."""
    names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    given = dict(transformer=randomize(transformer, seed), scheduler=scheduler, **parts)
    params = inspect.signature(cls.__init__).parameters
    rest = {n: None for n in names if n not in given and params[n].default is inspect.Parameter.empty}
    return cls(**given, **rest)


def _run(pipe, seed: int, out: str, kw: dict, **inputs):
    kw.setdefault("num_inference_steps", STEPS)
    result = pipe(**inputs, generator=torch.Generator().manual_seed(seed), output_type="latent", **kw)
    return getattr(result, out)


def _pair(seed: int, *shape: int) -> dict:
    """Prompt and negative prompt embeddings."""
    return dict(prompt_embeds=emb(seed, *shape), negative_prompt_embeds=emb(seed + 1, *shape))


def _masked_pair(seed: int, *shape: int, mask_name: str = "prompt_attention_mask", dtype=torch.float32) -> dict:
    negative = "negative_" + mask_name
    return dict(
        **_pair(seed, *shape), **{mask_name: ones(*shape[:2], dtype=dtype), negative: ones(*shape[:2], dtype=dtype)}
    )


# -- FLUX.1: guidance-distilled; true CFG with true_cfg_scale ----------------------------------------
def flux_pipe(guidance_embeds=True):
    t = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds,
    )  # fmt: skip
    return _pipeline(diffusers.FluxPipeline, t, 1, FLOW())


def flux_call(pipe, seed=0, true_cfg=False, **kw):
    if true_cfg:
        kw.update(
            negative_prompt_embeds=emb(12, 1, 6, 32), negative_pooled_prompt_embeds=emb(13, 1, 32), true_cfg_scale=3.0
        )
    return _run(pipe, seed, "images", kw, prompt_embeds=emb(10, 1, 6, 32), pooled_prompt_embeds=emb(11, 1, 32),
                height=32, width=32, guidance_scale=3.5)  # fmt: skip


# -- SD3: batch CFG ----------------------------------------------------------------------------------
def sd3_pipe():
    t = diffusers.SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=5, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )  # fmt: skip
    return _pipeline(diffusers.StableDiffusion3Pipeline, t, 2, FLOW())


def sd3_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, **_pair(20, 1, 6, 32), pooled_prompt_embeds=emb(22, 1, 64),
                negative_pooled_prompt_embeds=emb(23, 1, 64), height=32, width=32, guidance_scale=4.0)  # fmt: skip


# -- Wan 2.x: true CFG; Wan 2.2 A14B's second expert -------------------------------------------------
def _wan_transformer(in_channels=16):
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )  # fmt: skip


def wan_pipe(two_experts=False):
    second = randomize(_wan_transformer(), 4) if two_experts else None
    return _pipeline(diffusers.WanPipeline, _wan_transformer(), 3, FLOW(shift=7.0), transformer_2=second,
                     boundary_ratio=0.95 if two_experts else None)  # fmt: skip


def wan_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "frames", kw, **_pair(30, 1, 5, 32), height=32, width=32, num_frames=5, guidance_scale=5.0)


# -- HunyuanVideo: guidance-distilled; true CFG with true_cfg_scale ----------------------------------
def hunyuan_video_pipe():
    t = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2, num_single_layers=3,
        num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )  # fmt: skip
    return _pipeline(diffusers.HunyuanVideoPipeline, t, 5, FLOW(shift=7.0))


def hunyuan_video_call(pipe, seed=0, true_cfg=False, **kw):
    if true_cfg:
        kw.update(negative_prompt_embeds=emb(43, 1, 6, 16), negative_pooled_prompt_embeds=emb(44, 1, 8),
                  negative_prompt_attention_mask=ones(1, 6), true_cfg_scale=3.0)  # fmt: skip
    return _run(pipe, seed, "frames", kw, prompt_embeds=emb(40, 1, 6, 16), pooled_prompt_embeds=emb(41, 1, 8),
                prompt_attention_mask=ones(1, 6), height=32, width=32, num_frames=5, guidance_scale=6.0)  # fmt: skip


# -- CogVideoX: batch CFG ----------------------------------------------------------------------------
def cogvideox_pipe():
    t = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2, text_embed_dim=32,
        num_layers=4, sample_width=4, sample_height=4, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=6,
    )  # fmt: skip
    return _pipeline(diffusers.CogVideoXPipeline, t, 6, diffusers.CogVideoXDDIMScheduler())


def cogvideox_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "frames", kw, **_pair(50, 1, 6, 32), height=32, width=32, num_frames=9, guidance_scale=6.0)


# -- LTX-Video: batch CFG ----------------------------------------------------------------------------
def ltx_pipe():
    t = diffusers.LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=4, caption_channels=32,
    )  # fmt: skip
    return _pipeline(diffusers.LTXPipeline, t, 7, FLOW())


def ltx_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "frames", kw, **_masked_pair(60, 1, 6, 32), height=64, width=64, num_frames=9,
                guidance_scale=3.0)  # fmt: skip


# -- Qwen-Image: true CFG with true_cfg_scale --------------------------------------------------------
def qwenimage_pipe():
    t = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    return _pipeline(diffusers.QwenImagePipeline, t, 8, FLOW())


def qwenimage_call(pipe, seed=0, true_cfg=True, **kw):
    if true_cfg:
        kw.update(negative_prompt_embeds=emb(72, 1, 5, 16), negative_prompt_embeds_mask=ones(1, 5, dtype=torch.long),
                  true_cfg_scale=4.0)  # fmt: skip
    return _run(pipe, seed, "images", kw, prompt_embeds=emb(70, 1, 6, 16), prompt_embeds_mask=ones(1, 6, dtype=torch.long),
                height=32, width=32)  # fmt: skip


# -- Sana: batch CFG ---------------------------------------------------------------------------------
def sana_pipe():
    t = diffusers.SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=4, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8, sample_size=32,
    )  # fmt: skip
    return _pipeline(diffusers.SanaPipeline, t, 9, FLOW(shift=3.0))


def sana_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, **_masked_pair(80, 1, 6, 8), height=128, width=128, guidance_scale=4.5,
                use_resolution_binning=False, negative_prompt=None)  # fmt: skip


# -- Lumina2: true CFG -------------------------------------------------------------------------------
def lumina2_pipe():
    t = diffusers.Lumina2Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, hidden_size=8, num_layers=4, num_attention_heads=1, num_kv_heads=1,
        multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=[4, 2, 2], cap_feat_dim=8,
    )  # fmt: skip
    return _pipeline(diffusers.Lumina2Pipeline, t, 10, FLOW())


def lumina2_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, **_masked_pair(90, 1, 6, 8, dtype=torch.bool), height=32, width=32,
                guidance_scale=4.0)  # fmt: skip


# -- Z-Image: batch CFG over lists of latents --------------------------------------------------------
def z_image_pipe():
    t = diffusers.ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=4, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    )  # fmt: skip
    return _pipeline(diffusers.ZImagePipeline, t, 11, FLOW())


def z_image_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, prompt_embeds=[emb(100, 6, 16)], negative_prompt_embeds=[emb(101, 5, 16)],
                height=32, width=32, guidance_scale=4.0)  # fmt: skip


# -- Mochi: batch CFG --------------------------------------------------------------------------------
def mochi_pipe():
    t = diffusers.MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=4, pooled_projection_dim=16, in_channels=12,
        out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4, activation_fn="swiglu",
        max_sequence_length=16,
    )  # fmt: skip
    return _pipeline(diffusers.MochiPipeline, t, 12, FLOW())


def mochi_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "frames", kw, **_masked_pair(110, 1, 6, 32), height=32, width=32, num_frames=7,
                guidance_scale=4.5)  # fmt: skip


# -- Cosmos Predict2: true CFG -----------------------------------------------------------------------
class _NoGuardrail(diffusers.ModelMixin, diffusers.ConfigMixin):
    """Stands in for cosmos_guardrail's checker (the pipeline refuses to run without one)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("_device_tracker", torch.zeros(1), persistent=False)

    def check_text_safety(self, prompt):
        return True

    def check_video_safety(self, frames):
        return frames


def cosmos_pipe():
    # concat_padding_mask resizes the mask with torchvision, which the test environment lacks
    t = diffusers.CosmosTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=4, mlp_ratio=2,
        text_embed_dim=32, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type="learnable",
    )  # fmt: skip
    return _pipeline(
        diffusers.Cosmos2TextToImagePipeline, t, 13, FLOW(use_karras_sigmas=True), safety_checker=_NoGuardrail()
    )


def cosmos_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, **_pair(120, 1, 6, 32), height=32, width=32, guidance_scale=7.0)


# -- HiDream-I1: batch CFG ---------------------------------------------------------------------------
def hidream_pipe():
    t = diffusers.HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, num_single_layers=3, attention_head_dim=8,
        num_attention_heads=4, caption_channels=[32, 16], text_emb_dim=64, num_routed_experts=4, num_activated_experts=2,
        axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1, 2, 3, 4),
    )  # fmt: skip
    pipe = _pipeline(diffusers.HiDreamImagePipeline, t, 14, FLOW(shift=3.0))
    pipe.default_sample_size = 4  # the pipeline rescales every request to this many latent pixels squared (x 8)
    return pipe


def hidream_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, prompt_embeds_t5=emb(130, 1, 6, 32), prompt_embeds_llama3=emb(131, 5, 1, 6, 16),
                pooled_prompt_embeds=emb(132, 1, 64), negative_prompt_embeds_t5=emb(133, 1, 6, 32),
                negative_prompt_embeds_llama3=emb(134, 5, 1, 6, 16), negative_pooled_prompt_embeds=emb(135, 1, 64),
                height=32, width=32, guidance_scale=5.0)  # fmt: skip


# -- Chroma: true CFG --------------------------------------------------------------------------------
def chroma_pipe():
    t = diffusers.ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32, approximator_layers=1,
        approximator_num_channels=16,
    )  # fmt: skip
    return _pipeline(diffusers.ChromaPipeline, t, 15, FLOW())


def chroma_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, **_masked_pair(140, 1, 6, 32), height=32, width=32, guidance_scale=4.0)


# -- FLUX.2: guidance-distilled ----------------------------------------------------------------------
def flux2_pipe():
    t = diffusers.Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
    )  # fmt: skip
    return _pipeline(diffusers.Flux2Pipeline, t, 16, FLOW())


def flux2_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, prompt_embeds=emb(150, 1, 6, 16), height=32, width=32, guidance_scale=4.0)


# -- CogView4: true CFG ------------------------------------------------------------------------------
def cogview4_pipe():
    t = diffusers.CogView4Transformer2DModel(
        patch_size=2, in_channels=4, num_layers=4, attention_head_dim=4, num_attention_heads=4, out_channels=4,
        text_embed_dim=32, time_embed_dim=8, condition_dim=4,
    )  # fmt: skip
    scheduler = FLOW(base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True,
                     time_shift_type="linear")  # fmt: skip
    return _pipeline(diffusers.CogView4Pipeline, t, 17, scheduler)


def cogview4_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, **_pair(160, 1, 16, 32), height=32, width=32, guidance_scale=5.0)


# -- AuraFlow: batch CFG -----------------------------------------------------------------------------
def auraflow_pipe():
    t = diffusers.AuraFlowTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_mmdit_layers=2, num_single_dit_layers=3, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, out_channels=4, pos_embed_max_size=256,
    )  # fmt: skip
    return _pipeline(diffusers.AuraFlowPipeline, t, 18, FLOW())


def auraflow_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, **_masked_pair(170, 1, 6, 32), height=32, width=32, guidance_scale=5.0)


# -- SkyReels-V2: true CFG, UniPC on flow sigmas -----------------------------------------------------
def skyreels_pipe():
    t = diffusers.SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16, text_dim=32,
        freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )  # fmt: skip
    scheduler = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0
    )
    return _pipeline(diffusers.SkyReelsV2Pipeline, t, 19, scheduler)


def skyreels_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "frames", kw, **_pair(180, 1, 5, 32), height=32, width=32, num_frames=5, guidance_scale=5.0)


# -- Allegro: batch CFG, Euler ancestral (stochastic) ------------------------------------------------
def allegro_pipe():
    t = diffusers.AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=4, cross_attention_dim=24,
        sample_width=8, sample_height=8, sample_frames=8, caption_channels=24,
    )  # fmt: skip
    return _pipeline(diffusers.AllegroPipeline, t, 20, diffusers.EulerAncestralDiscreteScheduler())


def allegro_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "frames", kw, **_masked_pair(190, 1, 6, 24), height=32, width=32, num_frames=8,
                guidance_scale=6.0, negative_prompt=None, clean_caption=False)  # fmt: skip


# -- HunyuanImage 2.1: the pipeline's guider (two calls per step) ------------------------------------
def hunyuan_image_pipe():
    t = diffusers.HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=8, num_layers=2, num_single_layers=3,
        num_refiner_layers=1, patch_size=(1, 1), guidance_embeds=False, text_embed_dim=32, text_embed_2_dim=32,
        rope_axes_dim=(4, 4),
    )  # fmt: skip
    return _pipeline(diffusers.HunyuanImagePipeline, t, 21, FLOW(shift=5.0))


def hunyuan_image_call(pipe, seed=0, **kw):
    return _run(pipe, seed, "images", kw, **_masked_pair(200, 1, 6, 32, mask_name="prompt_embeds_mask"),
                prompt_embeds_2=emb(202, 1, 6, 32), prompt_embeds_mask_2=ones(1, 6),
                negative_prompt_embeds_2=emb(203, 1, 6, 32), negative_prompt_embeds_mask_2=ones(1, 6),
                height=128, width=128)  # fmt: skip
