"""Tiny random pipelines of the diffusers families Skip-Cache declares, built offline.

Each family has ``<name>_pipe()`` (the pipeline with a tiny random transformer, every weight drawn
from N(0, 0.2) so no block is a no-op; no text encoders, tokenizers or VAE) and ``<name>_call(pipe,
seed, **kw)`` (a call with fixed random prompt embeddings, ``STEPS`` steps, latents out). The
transformer configs follow diffusers' own pipeline tests (tests/pipelines/<family>/), with enough
blocks that a cached step skips some.
"""

from __future__ import annotations

import diffusers
import torch

STEPS = 4


def randomize(module: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere (diffusers zero-initialises adaLN and gate layers, which would make
    the middle blocks no-ops and a cache trivially exact)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


def emb(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- FLUX.1 -----------------------------------------------------------------------------------------
def flux_pipe(guidance_embeds=True):
    t = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    )
    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=randomize(t, 1),
    )


def flux_call(pipe, seed=0, true_cfg=False, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    extra = {}
    if true_cfg:
        extra = dict(
            negative_prompt_embeds=emb(12, 1, 6, 32), negative_pooled_prompt_embeds=emb(13, 1, 32), true_cfg_scale=3.0
        )
    return pipe(
        prompt_embeds=emb(10, 1, 6, 32),
        pooled_prompt_embeds=emb(11, 1, 32),
        height=32,
        width=32,
        guidance_scale=3.5,
        generator=gen(seed),
        output_type="latent",
        **extra,
        **kw,
    ).images


# -- SD3 ---------------------------------------------------------------------------------------------
def sd3_pipe():
    t = diffusers.SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=5,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    return diffusers.StableDiffusion3Pipeline(
        transformer=randomize(t, 2),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def sd3_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(20, 1, 6, 32),
        pooled_prompt_embeds=emb(21, 1, 64),
        negative_prompt_embeds=emb(22, 1, 6, 32),
        negative_pooled_prompt_embeds=emb(23, 1, 64),
        height=32,
        width=32,
        guidance_scale=4.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).images


# -- Wan 2.x -----------------------------------------------------------------------------------------
def _wan_transformer(seed, in_channels=16, image_dim=None):
    t = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=4,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=image_dim,
    )
    return randomize(t, seed)


def wan_pipe(two_experts=False):
    return diffusers.WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=_wan_transformer(3),
        transformer_2=_wan_transformer(4) if two_experts else None,
        boundary_ratio=0.95 if two_experts else None,
    )


def wan_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(30, 1, 5, 32),
        negative_prompt_embeds=emb(31, 1, 5, 32),
        height=32,
        width=32,
        num_frames=5,
        guidance_scale=5.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).frames


# -- HunyuanVideo ------------------------------------------------------------------------------------
def hunyuan_video_pipe():
    t = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=2,
        num_single_layers=3,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    )
    return diffusers.HunyuanVideoPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=randomize(t, 5),
        vae=None,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=None,
        tokenizer_2=None,
    )


def hunyuan_video_call(pipe, seed=0, true_cfg=False, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    extra = {}
    if true_cfg:
        extra = dict(
            negative_prompt_embeds=emb(43, 1, 6, 16),
            negative_pooled_prompt_embeds=emb(44, 1, 8),
            negative_prompt_attention_mask=torch.ones(1, 6),
            true_cfg_scale=3.0,
        )
    return pipe(
        prompt_embeds=emb(40, 1, 6, 16),
        pooled_prompt_embeds=emb(41, 1, 8),
        prompt_attention_mask=torch.ones(1, 6),
        height=32,
        width=32,
        num_frames=5,
        guidance_scale=6.0,
        generator=gen(seed),
        output_type="latent",
        **extra,
        **kw,
    ).frames


# -- CogVideoX ---------------------------------------------------------------------------------------
def cogvideox_pipe():
    t = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=32,
        num_layers=4,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=6,
    )
    return diffusers.CogVideoXPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=randomize(t, 6),
        scheduler=diffusers.CogVideoXDDIMScheduler(),
    )


def cogvideox_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(50, 1, 6, 32),
        negative_prompt_embeds=emb(51, 1, 6, 32),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=6.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).frames


# -- LTX-Video ---------------------------------------------------------------------------------------
def ltx_pipe():
    t = diffusers.LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=4,
        caption_channels=32,
    )
    return diffusers.LTXPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        transformer=randomize(t, 7),
    )


def ltx_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(60, 1, 6, 32),
        prompt_attention_mask=torch.ones(1, 6),
        negative_prompt_embeds=emb(61, 1, 6, 32),
        negative_prompt_attention_mask=torch.ones(1, 6),
        height=64,
        width=64,
        num_frames=9,
        guidance_scale=3.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).frames


# -- QwenImage ---------------------------------------------------------------------------------------
def qwenimage_pipe():
    t = diffusers.QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=4,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    return diffusers.QwenImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        transformer=randomize(t, 8),
    )


def qwenimage_call(pipe, seed=0, true_cfg=True, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    extra = {}
    if true_cfg:
        extra = dict(
            negative_prompt_embeds=emb(72, 1, 5, 16),
            negative_prompt_embeds_mask=torch.ones(1, 5, dtype=torch.long),
            true_cfg_scale=4.0,
        )
    return pipe(
        prompt_embeds=emb(70, 1, 6, 16),
        prompt_embeds_mask=torch.ones(1, 6, dtype=torch.long),
        height=32,
        width=32,
        generator=gen(seed),
        output_type="latent",
        **extra,
        **kw,
    ).images


# -- Sana --------------------------------------------------------------------------------------------
def sana_pipe():
    t = diffusers.SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=32,
    )
    return diffusers.SanaPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=randomize(t, 9),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def sana_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(80, 1, 6, 8),
        prompt_attention_mask=torch.ones(1, 6),
        negative_prompt_embeds=emb(81, 1, 6, 8),
        negative_prompt_attention_mask=torch.ones(1, 6),
        height=128,
        width=128,
        guidance_scale=4.5,
        generator=gen(seed),
        output_type="latent",
        use_resolution_binning=False,
        negative_prompt=None,
        **kw,
    ).images


# -- Lumina2 -----------------------------------------------------------------------------------------
def lumina2_pipe():
    t = diffusers.Lumina2Transformer2DModel(
        sample_size=4,
        patch_size=2,
        in_channels=4,
        hidden_size=8,
        num_layers=4,
        num_attention_heads=1,
        num_kv_heads=1,
        multiple_of=16,
        ffn_dim_multiplier=None,
        norm_eps=1e-5,
        scaling_factor=1.0,
        axes_dim_rope=[4, 2, 2],
        cap_feat_dim=8,
    )
    return diffusers.Lumina2Pipeline(
        transformer=randomize(t, 10),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
    )


def lumina2_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(90, 1, 6, 8),
        prompt_attention_mask=torch.ones(1, 6, dtype=torch.bool),
        negative_prompt_embeds=emb(91, 1, 6, 8),
        negative_prompt_attention_mask=torch.ones(1, 6, dtype=torch.bool),
        height=32,
        width=32,
        guidance_scale=4.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).images


# -- Z-Image -----------------------------------------------------------------------------------------
def z_image_pipe():
    t = diffusers.ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=4,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    )
    return diffusers.ZImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        transformer=randomize(t, 11),
    )


def z_image_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=[emb(100, 6, 16)],
        negative_prompt_embeds=[emb(101, 5, 16)],
        height=32,
        width=32,
        guidance_scale=4.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).images


# -- Mochi -------------------------------------------------------------------------------------------
def mochi_pipe():
    t = diffusers.MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=4,
        pooled_projection_dim=16,
        in_channels=12,
        out_channels=None,
        qk_norm="rms_norm",
        text_embed_dim=32,
        time_embed_dim=4,
        activation_fn="swiglu",
        max_sequence_length=16,
    )
    return diffusers.MochiPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        transformer=randomize(t, 12),
    )


def mochi_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(110, 1, 6, 32),
        prompt_attention_mask=torch.ones(1, 6),
        negative_prompt_embeds=emb(111, 1, 6, 32),
        negative_prompt_attention_mask=torch.ones(1, 6),
        height=32,
        width=32,
        num_frames=7,
        guidance_scale=4.5,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).frames


# -- Cosmos (Predict2 text-to-image) -----------------------------------------------------------------
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
    t = diffusers.CosmosTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=4,
        mlp_ratio=2,
        text_embed_dim=32,
        adaln_lora_dim=4,
        max_size=(4, 32, 32),
        patch_size=(1, 2, 2),
        rope_scale=(2.0, 1.0, 1.0),
        concat_padding_mask=False,
        extra_pos_embed_type="learnable",
    )
    return diffusers.Cosmos2TextToImagePipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=randomize(t, 13),
        vae=None,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
        safety_checker=_NoGuardrail(),
    )


def cosmos_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(120, 1, 6, 32),
        negative_prompt_embeds=emb(121, 1, 6, 32),
        height=32,
        width=32,
        guidance_scale=7.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).images


# -- HiDream-I1 --------------------------------------------------------------------------------------
def hidream_pipe():
    t = diffusers.HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_single_layers=3,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=[32, 16],
        text_emb_dim=64,
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(4, 2, 2),
        max_resolution=(32, 32),
        llama_layers=(0, 1, 2, 3, 4),
    )
    pipe = diffusers.HiDreamImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
        text_encoder_4=None,
        tokenizer_4=None,
        transformer=randomize(t, 14),
    )
    pipe.default_sample_size = 4  # the pipeline rescales every request to this many latent pixels squared (x 8)
    return pipe


def hidream_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds_t5=emb(130, 1, 6, 32),
        prompt_embeds_llama3=emb(131, 5, 1, 6, 16),
        pooled_prompt_embeds=emb(132, 1, 64),
        negative_prompt_embeds_t5=emb(133, 1, 6, 32),
        negative_prompt_embeds_llama3=emb(134, 5, 1, 6, 16),
        negative_pooled_prompt_embeds=emb(135, 1, 64),
        height=32,
        width=32,
        guidance_scale=5.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).images


# -- Chroma ------------------------------------------------------------------------------------------
def chroma_pipe():
    t = diffusers.ChromaTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=[4, 4, 8],
        approximator_hidden_dim=32,
        approximator_layers=1,
        approximator_num_channels=16,
    )
    return diffusers.ChromaPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        transformer=randomize(t, 15),
    )


def chroma_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(140, 1, 6, 32),
        prompt_attention_mask=torch.ones(1, 6),
        negative_prompt_embeds=emb(141, 1, 6, 32),
        negative_prompt_attention_mask=torch.ones(1, 6),
        height=32,
        width=32,
        guidance_scale=4.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).images


# -- FLUX.2 ------------------------------------------------------------------------------------------
def flux2_pipe():
    t = diffusers.Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
    )
    return diffusers.Flux2Pipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        transformer=randomize(t, 16),
    )


def flux2_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(150, 1, 6, 16),
        height=32,
        width=32,
        guidance_scale=4.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).images


# -- CogView4 ----------------------------------------------------------------------------------------
def cogview4_pipe():
    t = diffusers.CogView4Transformer2DModel(
        patch_size=2,
        in_channels=4,
        num_layers=4,
        attention_head_dim=4,
        num_attention_heads=4,
        out_channels=4,
        text_embed_dim=32,
        time_embed_dim=8,
        condition_dim=4,
    )
    return diffusers.CogView4Pipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=randomize(t, 17),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
            base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
        ),
    )


def cogview4_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(160, 1, 16, 32),
        negative_prompt_embeds=emb(161, 1, 16, 32),
        height=32,
        width=32,
        guidance_scale=5.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).images


# -- AuraFlow ----------------------------------------------------------------------------------------
def auraflow_pipe():
    t = diffusers.AuraFlowTransformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=2,
        num_single_dit_layers=3,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        out_channels=4,
        pos_embed_max_size=256,
    )
    return diffusers.AuraFlowPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=randomize(t, 18),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
    )


def auraflow_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(170, 1, 6, 32),
        prompt_attention_mask=torch.ones(1, 6),
        negative_prompt_embeds=emb(171, 1, 6, 32),
        negative_prompt_attention_mask=torch.ones(1, 6),
        height=32,
        width=32,
        guidance_scale=5.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).images


# -- SkyReels-V2 -------------------------------------------------------------------------------------
def skyreels_pipe():
    t = diffusers.SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=4,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    return diffusers.SkyReelsV2Pipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=randomize(t, 19),
        vae=None,
        scheduler=diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0
        ),
    )


def skyreels_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(180, 1, 5, 32),
        negative_prompt_embeds=emb(181, 1, 5, 32),
        height=32,
        width=32,
        num_frames=5,
        guidance_scale=5.0,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).frames


# -- Allegro -----------------------------------------------------------------------------------------
def allegro_pipe():
    t = diffusers.AllegroTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        cross_attention_dim=24,
        sample_width=8,
        sample_height=8,
        sample_frames=8,
        caption_channels=24,
    )
    return diffusers.AllegroPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=randomize(t, 20),
        scheduler=diffusers.EulerAncestralDiscreteScheduler(),
    )


def allegro_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(190, 1, 6, 24),
        prompt_attention_mask=torch.ones(1, 6),
        negative_prompt_embeds=emb(191, 1, 6, 24),
        negative_prompt_attention_mask=torch.ones(1, 6),
        height=32,
        width=32,
        num_frames=8,
        guidance_scale=6.0,
        generator=gen(seed),
        output_type="latent",
        negative_prompt=None,
        clean_caption=False,
        **kw,
    ).frames


# -- HunyuanImage 2.1 --------------------------------------------------------------------------------
def hunyuan_image_pipe():
    t = diffusers.HunyuanImageTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=4,
        attention_head_dim=8,
        num_layers=2,
        num_single_layers=3,
        num_refiner_layers=1,
        patch_size=(1, 1),
        guidance_embeds=False,
        text_embed_dim=32,
        text_embed_2_dim=32,
        rope_axes_dim=(4, 4),
    )
    return diffusers.HunyuanImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=randomize(t, 21),
    )


def hunyuan_image_call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(
        prompt_embeds=emb(200, 1, 6, 32),
        prompt_embeds_mask=torch.ones(1, 6),
        prompt_embeds_2=emb(201, 1, 6, 32),
        prompt_embeds_mask_2=torch.ones(1, 6),
        negative_prompt_embeds=emb(202, 1, 6, 32),
        negative_prompt_embeds_mask=torch.ones(1, 6),
        negative_prompt_embeds_2=emb(203, 1, 6, 32),
        negative_prompt_embeds_mask_2=torch.ones(1, 6),
        height=128,
        width=128,
        generator=gen(seed),
        output_type="latent",
        **kw,
    ).images
