"""Skip-Cache vs cache-dit's DBCache inside diffusers pipelines, at equal blocks computed per step.

For each case (a tiny-to-small random HunyuanDiT or DiT pipeline, a scheduler, a Skip-Cache
schedule) three identical pipelines run: uncached, Skip-Cache (``apply_skip_cache``) and cache-dit's
DBCache with ``Fn_compute_blocks = Bn_compute_blocks = shallow_blocks`` and a static
``steps_computation_mask`` equal to the Skip-Cache plan (so both compute the same blocks on the same
steps; checked by counting block calls). Wall time per pipeline call is timed round-robin (one
interleaved run; the speed ratios are medians of per-round ratios); fidelity is the PSNR of each
cached output against the uncached one (the final latents; data range: the uncached latents' range).
The "random" cases use random weights (diffusers' default init, fixed seed): their PSNRs say how
well each cache tracks the uncached trajectory of these models, not image quality; features of a
random model are not smooth across timesteps, so forecasting the deep state from the last full
steps does badly there. The "trained" cases use the bundled trained DiT (``load_bundled("dit")``,
16x16x1 digits, patch 4, hidden 96, depth 8, 10 classes) converted with ``dit_to_diffusers`` into a
``DiTPipeline`` with a tiny random 1-channel VAE (scaling factor 1, no resampling): the final latents
are the 16x16 images in [-1, 1], so these cases also score pixel fidelity (PSNR and SSIM of the
images clamped to [-1, 1], data range 2, per sample then averaged) and the digit accuracy of the
bundled classifier. Their schedulers follow DiT's conventions (linear betas 1e-4..0.02 over 1000
steps, diffusers' defaults, and no clipping of the predicted x0: ``clip_sample=False``, as DiT's
sampler; diffusers' default clipping makes DDIM's digits noisy). Every case runs reuse and the
forecast orders 1 and 2 (the one ``forecast="auto"`` picks for the scheduler is marked), and reuse and
that order again with ``fast_blocks=False`` (diffusers' own block forward), which splits a speed
difference into what the fused blocks give and what the cache gives. cache-dit runs as plain DBCache
(reuse) and with each of its forecasting calibrators on the same mask: TaylorSeer orders 1 and 2 and,
where the installed version has it, DMD; the summary compares against the best of them per case.

cache-dit is a benchmark-only dependency (``pip install cache-dit``); without it the cache-dit rows
are skipped and the report says so.

    python bench/e2e/bench_diffusers.py [--cases all|random|trained] [--match HunyuanDiT] [--rounds 7] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import diffusers  # noqa: E402
import report  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.cache.forecast import resolve_forecast  # noqa: E402
from skipdit_kernels.evaluation.bundled import load_bundled  # noqa: E402
from skipdit_kernels.evaluation.metrics import classifier_accuracy, fidelity, psnr  # noqa: E402
from skipdit_kernels.integrations import diffusers as sd  # noqa: E402
from skipdit_kernels.io.images import save_comparison  # noqa: E402

try:
    import cache_dit
except ImportError as exc:  # reported in the results
    cache_dit = None
    CACHE_DIT_ERROR = f"cache-dit not importable: {exc}"
else:
    CACHE_DIT_ERROR = None


def _hunyuan_pipeline(transformer, scheduler, latent_channels: int):
    """A HunyuanDiTPipeline around ``transformer`` with a tiny random VAE (only its scale factor, 8,
    matters: the calls return latents) and no text encoders (the calls pass prompt embeddings)."""
    vae = diffusers.AutoencoderKL(
        latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    pipe = diffusers.HunyuanDiTPipeline(
        vae=vae, text_encoder=None, tokenizer=None, transformer=transformer.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False, text_encoder_2=None, tokenizer_2=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hunyuan_pipe(scheduler, layers: int, hidden: int, sample: int):
    torch.manual_seed(0)
    heads = 4
    transformer = diffusers.HunyuanDiT2DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=4, patch_size=2, sample_size=sample,
        hidden_size=hidden, num_layers=layers, cross_attention_dim=64, cross_attention_dim_t5=64,
        pooled_projection_dim=64, text_len=77, text_len_t5=256,
    )  # fmt: skip
    pipe = _hunyuan_pipeline(transformer, scheduler, latent_channels=4)
    g = torch.Generator().manual_seed(1)
    embeds = dict(
        prompt_embeds=torch.randn(1, 77, 64, generator=g), negative_prompt_embeds=torch.randn(1, 77, 64, generator=g),
        prompt_attention_mask=torch.ones(1, 77, dtype=torch.long), negative_prompt_attention_mask=torch.ones(1, 77, dtype=torch.long),
        prompt_embeds_2=torch.randn(1, 256, 64, generator=g), negative_prompt_embeds_2=torch.randn(1, 256, 64, generator=g),
        prompt_attention_mask_2=torch.ones(1, 256, dtype=torch.long), negative_prompt_attention_mask_2=torch.ones(1, 256, dtype=torch.long),
    )  # fmt: skip

    def call(p, steps):
        return p(height=sample * 8, width=sample * 8, num_inference_steps=steps, guidance_scale=4.0, output_type="latent",
                 use_resolution_binning=False, generator=torch.Generator().manual_seed(2), **embeds).images  # fmt: skip

    return pipe, call, pipe.transformer.blocks


def dit_pipe(scheduler, layers: int, hidden: int, sample: int):
    torch.manual_seed(0)
    heads = 4
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=4, out_channels=8, num_layers=layers,
        sample_size=sample, patch_size=2, num_embeds_ada_norm=1000,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    pipe = diffusers.DiTPipeline(transformer.eval(), vae, scheduler)
    pipe.set_progress_bar_config(disable=True)
    latents = {}  # DiTPipeline always decodes: compare the latents it decodes (copies share this wrapper)
    vae.decode = _wrap_decode(vae.decode, latents)

    def call(p, steps):
        torch.manual_seed(2)  # DiTPipeline draws stochastic samplers' noise from the global generator
        p(class_labels=[207, 360], guidance_scale=4.0, num_inference_steps=steps, output_type="pt",
          generator=torch.Generator().manual_seed(2))  # fmt: skip
        return latents["x"]

    return pipe, call, pipe.transformer.transformer_blocks


TRAINED_LABELS = list(range(10)) * 2


def trained_dit_pipe(scheduler):
    """The bundled trained DiT as a diffusers DiTPipeline; returns (pipe, call, blocks)."""
    transformer = sd.dit_to_diffusers(load_bundled("dit"))
    null = transformer.config.num_embeds_ada_norm
    for block in transformer.transformer_blocks:
        # DiTPipeline passes ImageNet's null class 1000 whatever the label table's size: give the table
        # rows up to 1000, each past the classes a copy of this model's null row, as the pipeline means
        # (a table, not a hook: a hook on a block's submodule sends the fast blocks to diffusers' forward).
        table = block.norm1.emb.class_embedder.embedding_table
        rows = torch.cat([table.weight.data[:null], table.weight.data[null : null + 1].expand(1001 - null, -1)])
        block.norm1.emb.class_embedder.embedding_table = torch.nn.Embedding.from_pretrained(rows, freeze=True).eval()
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=1, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), scaling_factor=1.0,
    )  # fmt: skip
    pipe = diffusers.DiTPipeline(transformer, vae, scheduler)
    pipe.set_progress_bar_config(disable=True)
    latents = {}
    vae.decode = _wrap_decode(vae.decode, latents)

    def call(p, steps):
        torch.manual_seed(2)
        p(class_labels=TRAINED_LABELS, guidance_scale=4.0, num_inference_steps=steps, output_type="pt",
          generator=torch.Generator().manual_seed(2))  # fmt: skip
        return latents["x"]

    return pipe, call, pipe.transformer.transformer_blocks


HUNYUAN_WEIGHTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "hunyuandit-digits.safetensors"
)


def trained_hunyuan_pipe(scheduler):
    """The tiny HunyuanDiT trained on the digits (bench/results/training/hunyuandit/) in a
    HunyuanDiTPipeline; class c's prompt is the file's fixed random text embedding c, the negative
    prompt the null class's. Returns (pipe, call, blocks); the call returns the latents (the images)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(HUNYUAN_WEIGHTS, "pt") as f:
        config = json.loads(f.metadata()["config"])
    state = {k: v.float() for k, v in load_file(HUNYUAN_WEIGHTS).items()}
    prompts = {k.split(".", 1)[1]: state.pop(k) for k in list(state) if k.startswith("class_text.")}
    transformer = diffusers.HunyuanDiT2DModel(**config)
    transformer.load_state_dict(state, strict=True)
    torch.manual_seed(0)
    pipe = _hunyuan_pipeline(transformer, scheduler, latent_channels=1)
    labels, null = torch.tensor(TRAINED_LABELS), torch.full((len(TRAINED_LABELS),), 10)
    e1, e2 = prompts["prompt_embeds"], prompts["prompt_embeds_2"]
    ones1, ones2 = (
        torch.ones(len(labels), e1.shape[1], dtype=torch.long),
        torch.ones(len(labels), e2.shape[1], dtype=torch.long),
    )
    embeds = dict(
        prompt_embeds=e1[labels], negative_prompt_embeds=e1[null], prompt_attention_mask=ones1, negative_prompt_attention_mask=ones1,
        prompt_embeds_2=e2[labels], negative_prompt_embeds_2=e2[null], prompt_attention_mask_2=ones2, negative_prompt_attention_mask_2=ones2,
    )  # fmt: skip

    def call(p, steps):
        torch.manual_seed(2)
        return p(height=128, width=128, num_inference_steps=steps, guidance_scale=4.0, output_type="latent",
                 use_resolution_binning=False, generator=torch.Generator().manual_seed(2), **embeds).images  # fmt: skip

    return pipe, call, pipe.transformer.blocks


def _perturbed(transformer, std: float = 0.05):
    """Every weight drawn from N(0, std) (diffusers zero-initialises the gates and modulations of
    these families, which would make their blocks no-ops and every cache exact)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in transformer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return transformer.eval()


def _flow_call(pipe_kwargs, out: str):
    def call(p, steps):
        return getattr(p(**pipe_kwargs(), num_inference_steps=steps, generator=torch.Generator().manual_seed(2),
                         output_type="latent"), out)  # fmt: skip

    return call


def flux_pipe(scheduler, double: int, single: int, hidden: int, side: int):
    """FLUX.1 (guidance-distilled), random; no text encoders or VAE (prompt embeddings in, latents out)."""
    heads = hidden // 64
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=64,
        num_attention_heads=heads, joint_attention_dim=64, pooled_projection_dim=64, axes_dims_rope=[16, 24, 24],
        guidance_embeds=True,
    )  # fmt: skip
    pipe = diffusers.FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                  tokenizer_2=None, transformer=_perturbed(transformer))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(1)
    text, pooled = torch.randn(1, 32, 64, generator=gen), torch.randn(1, 64, generator=gen)
    kwargs = lambda: dict(prompt_embeds=text, pooled_prompt_embeds=pooled, height=16 * side, width=16 * side,  # noqa: E731
                          guidance_scale=3.5)  # fmt: skip
    return pipe, _flow_call(kwargs, "images"), None


def sd3_pipe(scheduler, layers: int, hidden: int, side: int):
    """SD3 (joint blocks, batch CFG), random; no text encoders or VAE."""
    heads = hidden // 64
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=side, patch_size=2, in_channels=16, num_layers=layers, attention_head_dim=64, num_attention_heads=heads,
        caption_projection_dim=hidden, joint_attention_dim=64, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=side,
    )  # fmt: skip
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=_perturbed(transformer), scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(1)
    text, pooled = torch.randn(2, 32, 64, generator=gen), torch.randn(2, 64, generator=gen)
    kwargs = lambda: dict(prompt_embeds=text[:1], negative_prompt_embeds=text[1:], pooled_prompt_embeds=pooled[:1],  # noqa: E731
                          negative_pooled_prompt_embeds=pooled[1:], height=8 * side, width=8 * side, guidance_scale=4.0)  # fmt: skip
    return pipe, _flow_call(kwargs, "images"), None


def wan_pipe(scheduler, layers: int, hidden: int, side: int):
    """Wan 2.1 text-to-video (true CFG: two transformer calls per step), random; no text encoder or VAE."""
    heads = hidden // 64
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=64, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=256, ffn_dim=4 * hidden, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )  # fmt: skip
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler,
                                 transformer=_perturbed(transformer))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(2, 32, 64, generator=gen)
    kwargs = lambda: dict(prompt_embeds=text[:1], negative_prompt_embeds=text[1:], height=8 * side, width=8 * side,  # noqa: E731
                          num_frames=9, guidance_scale=5.0)  # fmt: skip
    return pipe, _flow_call(kwargs, "frames"), None


def _wrap_decode(decode, store):
    def wrapped(z, *args, **kwargs):
        store["x"] = z.detach().clone()
        return decode(z, *args, **kwargs)

    return wrapped


CASES = [
    # kind, name, builder, size, scheduler, steps, Skip-Cache schedule
    (
        "random",
        "HunyuanDiT 12L/128 64 tok, DDPM-50",
        hunyuan_pipe,
        (12, 128, 16),
        lambda: diffusers.DDPMScheduler(),
        50,
        sk.SkipCache.preset("video", forecast="auto"),
    ),
    (
        "random",
        "HunyuanDiT 12L/128 64 tok, DDIM-50",
        hunyuan_pipe,
        (12, 128, 16),
        lambda: diffusers.DDIMScheduler(),
        50,
        sk.SkipCache.preset("video", forecast="auto"),
    ),
    (
        "random",
        "DiT 12L/192 64 tok, DDIM-50",
        dit_pipe,
        (12, 192, 16),
        lambda: diffusers.DDIMScheduler(),
        50,
        sk.SkipCache(interval=2, shallow_blocks=2, forecast="auto"),
    ),
    (
        "random",
        "DiT 12L/192 64 tok, DDPM-50",
        dit_pipe,
        (12, 192, 16),
        lambda: diffusers.DDPMScheduler(),
        50,
        sk.SkipCache(interval=2, shallow_blocks=2, forecast="auto"),
    ),
]
_TRAINED = "trained DiT 8L/96 16 tok x20"
_DDIM = lambda: diffusers.DDIMScheduler(clip_sample=False)  # noqa: E731
_DPM = lambda: diffusers.DPMSolverMultistepScheduler()  # noqa: E731 - DPM-Solver++(2M), deterministic
_DDPM = lambda: diffusers.DDPMScheduler(clip_sample=False)  # noqa: E731
for _steps in (50, 20):
    for _interval, _shallow in ((2, 1), (3, 1), (2, 2), (4, 1)):
        if _steps == 20 and (_interval, _shallow) != (2, 1):
            continue
        CASES.append(
            (
                "trained",
                f"{_TRAINED}, DDIM-{_steps}, i{_interval} s{_shallow}",
                trained_dit_pipe,
                (),
                _DDIM,
                _steps,
                sk.SkipCache(interval=_interval, shallow_blocks=_shallow, forecast="auto"),
            )
        )
    CASES.append(
        (
            "trained",
            f"{_TRAINED}, DPM++2M-{_steps}, i2 s1",
            trained_dit_pipe,
            (),
            _DPM,
            _steps,
            sk.SkipCache(interval=2, shallow_blocks=1, forecast="auto"),
        )
    )
    CASES.append(
        (
            "trained",
            f"{_TRAINED}, DDPM-{_steps}, i2 s1",
            trained_dit_pipe,
            (),
            _DDPM,
            _steps,
            sk.SkipCache(interval=2, shallow_blocks=1, forecast="auto"),
        )
    )
_HUNYUAN = "trained HunyuanDiT 10L/64 16 tok x20"
if os.path.exists(HUNYUAN_WEIGHTS):  # bench/training/train_hunyuandit.py writes it
    for _label, _scheduler, _steps in (
        ("DDIM", _DDIM, 50),
        ("DDIM", _DDIM, 20),
        ("DPM++2M", _DPM, 20),
        ("DDPM", _DDPM, 50),
    ):
        CASES.append(
            (
                "trained",
                f"{_HUNYUAN}, {_label}-{_steps}, video preset",
                trained_hunyuan_pipe,
                (),
                _scheduler,
                _steps,
                sk.SkipCache.preset("video", forecast="auto"),
            )
        )
    CASES.append(
        (
            "trained",
            f"{_HUNYUAN}, DDIM-50, i2 s1",
            trained_hunyuan_pipe,
            (),
            _DDIM,
            50,
            sk.SkipCache(interval=2, shallow_blocks=1, forecast="auto"),
        )
    )
# Flow-matching families without long skips (random weights; timesteps need no care: the schedule is the
# interval's alone, full steps at counter % interval == 0, so the cache-dit mask is the same plan).
_FLOW = lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)  # noqa: E731
_EVERY_OTHER = sk.SkipCache(interval=2, shallow_blocks=1, start_t=1e9, stop_t=-1, forecast="auto")
CASES += [
    ("random", "FLUX.1 4+8L/256 256 tok, FlowMatch-28, i2 s1", flux_pipe, (4, 8, 256, 16), _FLOW, 28, _EVERY_OTHER),
    ("random", "SD3 12L/256 256 tok, FlowMatch-28, i2 s1", sd3_pipe, (12, 256, 32), _FLOW, 28, _EVERY_OTHER),
    ("random", "Wan 2.1 12L/256 3x64 tok, FlowMatch-30, i2 s1", wan_pipe, (12, 256, 16), _FLOW, 30, _EVERY_OTHER),
]
# The cases whose images are saved side by side (PNGs next to the results).
PICTURE_CASES = (f"{_TRAINED}, DDIM-50, i2 s1", f"{_HUNYUAN}, DDIM-50, i2 s1")


def count_blocks(blocks, fn) -> int:
    calls = [0]
    handles = [b.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) for b in blocks]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return calls[0]


FORECAST_ORDERS = (1, 2)  # besides reuse, every case runs these orders


def cache_dit_calibrators() -> dict:
    """cache-dit's forecasting calibrators, by label: TaylorSeer orders 1 and 2 and, where the installed
    version has it, DMD (its exponential-basis forecast). An uncalibrated DBCache is plain reuse."""
    if cache_dit is None:
        return {}
    out = {
        f"cache-dit DBCache+TaylorSeer{k}": (lambda k=k: cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=k))
        for k in (1, 2)
    }
    if hasattr(cache_dit, "DMDCalibratorConfig"):
        out["cache-dit DBCache+DMD"] = cache_dit.DMDCalibratorConfig
    return out


def _enable_cache_dit(pipe, cache, plan, steps, separate_cfg, calibrator=None):
    cache_dit.enable_cache(
        pipe,
        cache_config=cache_dit.DBCacheConfig(
            Fn_compute_blocks=cache.shallow_blocks, Bn_compute_blocks=cache.shallow_blocks,
            max_warmup_steps=0, steps_computation_mask=[int(f) for f in plan],
            steps_computation_policy="static", num_inference_steps=steps, enable_separate_cfg=separate_cfg,
            residual_diff_threshold=1e9, max_cached_steps=-1, max_continuous_cached_steps=-1,
        ),
        calibrator_config=calibrator,
    )  # fmt: skip


def run_case(kind, name, builder, size, make_scheduler, steps, cache, rounds):
    base, call, _ = builder(make_scheduler(), *size)
    pipes = {"uncached": base}
    scheduler = base.scheduler
    scheduler.set_timesteps(steps)
    plan = cache.with_forecast(0).full_steps([float(t) for t in scheduler.timesteps])  # the plan ignores the order
    auto = resolve_forecast(cache.forecast, stochastic=sd.scheduler_is_stochastic(scheduler))
    variants = {}
    for order in (0, *FORECAST_ORDERS):
        label = "skip-cache reuse" if order == 0 else f"skip-cache forecast {order}"
        variants[label + (" (auto)" if order == auto else "")] = cache.with_forecast(order)
    for label, c in variants.items():
        pipe = copy.deepcopy(base)
        sd.apply_skip_cache(pipe, c)
        pipes[label] = pipe
    # The same schedules without the fast blocks (diffusers' own block forward): what the cache gives
    # apart from the fused kernels.
    for label, c in [
        ("skip-cache reuse, fast blocks off", cache.with_forecast(0)),
        (f"skip-cache forecast {auto}, fast blocks off", cache.with_forecast(auto)),
    ][: 1 if auto == 0 else 2]:
        pipe = copy.deepcopy(base)
        sd.apply_skip_cache(pipe, c, fast_blocks=False)
        pipes[label] = pipe
    cd_note = CACHE_DIT_ERROR
    calls = [0]  # transformer calls per step: 2 under true CFG, where cache-dit needs its separate-CFG contexts
    hook = base.transformer.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    call(base, 2)
    hook.remove()
    separate_cfg = calls[0] > 2
    if cache_dit is not None:
        for label, calibrator in {"cache-dit DBCache": None, **cache_dit_calibrators()}.items():
            pipe = copy.deepcopy(base)
            try:
                _enable_cache_dit(pipe, cache, plan, steps, separate_cfg, None if calibrator is None else calibrator())
                pipes[label] = pipe
            except Exception as exc:  # noqa: BLE001 - reported in the results
                cd_note = f"cache-dit ({label}) failed on {type(base).__name__}: {type(exc).__name__}: {exc}"
    outputs, blocks = {}, {}
    for label, pipe in list(pipes.items()):
        block_list = [b for name in sd.family_of(pipe.transformer).blocks for b in getattr(pipe.transformer, name)]
        try:
            blocks[label] = count_blocks(block_list, lambda: outputs.__setitem__(label, call(pipe, steps)))
        except Exception as exc:  # noqa: BLE001
            if not label.startswith("cache-dit"):
                raise
            cd_note = f"cache-dit failed while running {type(base).__name__}: {type(exc).__name__}: {exc}"
            del pipes[label]
    ref = outputs["uncached"]
    data_range = float(ref.max() - ref.min())
    pixels = {}
    if kind == "trained":  # the latents are the images
        classifier = load_bundled("classifier")
        labels = TRAINED_LABELS
        for label, x in outputs.items():
            pixels[label] = dict(accuracy=classifier_accuracy(classifier, x.clamp(-1, 1), labels))
            if label != "uncached":
                f = fidelity(x.clamp(-1, 1), ref.clamp(-1, 1), data_range=2.0)
                pixels[label].update(pixel_psnr_db=f["psnr_mean"], pixel_ssim=f["ssim_mean"])
    times = report.time_fns(
        {label: (lambda pipe=pipe: call(pipe, steps)) for label, pipe in pipes.items()},
        min_rounds=rounds,
        max_rounds=rounds,
        budget_s=0.0,
        warmup=0,
    )  # warmed up by the runs above
    rows = []
    for label in pipes:
        if "error" in times[label]:
            raise RuntimeError(f"{name} {label}: {times[label]['error']}")
        row = dict(case=name, kind=kind, method=label, blocks_per_call=blocks[label], median_s=times[label]["median_s"],
                   min_s=times[label]["min_s"], max_s=times[label]["max_s"],
                   speedup_vs_uncached=report.round_ratio(times, label, "uncached")["ratio"],
                   cpu_median_s=times[label]["cpu_median_s"],
                   cpu_speedup_vs_uncached=times["uncached"]["cpu_median_s"] / times[label]["cpu_median_s"],
                   psnr_db=None if label == "uncached" else psnr(outputs[label], ref, data_range=data_range),
                   **pixels.get(label, {}))  # fmt: skip
        if "cache-dit DBCache" in pipes:
            row["speed_vs_cache_dit"] = report.round_ratio(times, label, "cache-dit DBCache")["ratio"]
            row["cpu_vs_cache_dit"] = times["cache-dit DBCache"]["cpu_median_s"] / times[label]["cpu_median_s"]
            row["equals_cache_dit"] = bool(torch.equal(outputs[label], outputs["cache-dit DBCache"]))
        rows.append(row)
    return rows, cd_note, plan, {k: outputs[k] for k in pipes}


def _summary(rows) -> list[str]:
    """Per case: the forecast order ``forecast="auto"`` picks (or reuse) against cache-dit at its best
    (the calibrator with the highest PSNR on this case) and reuse; its speed against that cache-dit
    row split into the fast blocks (on vs off) and the cache (fast blocks off vs cache-dit)."""
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        by = {r["method"]: r for r in rows if r["case"] == case}
        auto = next((m for m in by if m.endswith("(auto)")), None)
        peers = [r for m, r in by.items() if m.startswith("cache-dit")]
        reuse = next(r for m, r in by.items() if m.startswith("skip-cache reuse"))
        if auto is None or not peers:
            continue
        cd = max(peers, key=lambda r: r["psnr_db"])
        a = by[auto]
        parts = [f"{auto}: {a['psnr_db'] - cd['psnr_db']:+.2f} dB vs {cd['method']} (cache-dit's best here), "
                 f"{a['psnr_db'] - reuse['psnr_db']:+.2f} dB vs reuse (latents)"]  # fmt: skip
        if "pixel_psnr_db" in a:
            parts.append(f"{a['pixel_psnr_db'] - cd['pixel_psnr_db']:+.2f} dB vs it, "
                         f"{a['pixel_psnr_db'] - reuse['pixel_psnr_db']:+.2f} dB vs reuse (pixels)")  # fmt: skip
        off = by.get(auto.replace(" (auto)", "") + ", fast blocks off")
        if off is not None:
            parts.append(f"time vs it {cd['median_s'] / a['median_s']:.3f}x = fast blocks {off['median_s'] / a['median_s']:.3f}x "
                         f"x cache {cd['median_s'] / off['median_s']:.3f}x (medians)")  # fmt: skip
        lines.append(f"- {case}: " + "; ".join(parts))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", choices=("all", "random", "trained"), default="all",
                        help="random-weight HunyuanDiT/DiT cases, the bundled trained DiT's, or both")  # fmt: skip
    parser.add_argument("--match", default="", help="only the cases whose name contains this text (e.g. HunyuanDiT)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=None, help="override every case's step count")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="one random and one trained case, 3 rounds (a smoke run)")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # Random weights leave denormal floats in diffusers' path, which slow it down and would flatter every
    # cache against the uncached call (and the fused blocks against diffusers' own): flush them to zero.
    torch.set_flush_denormal(True)
    cases = [c for c in CASES if args.cases in ("all", c[0]) and args.match in c[1]]
    if args.quick:
        cases = [c for c in cases if c[1] in (CASES[1][1], *PICTURE_CASES)]
    rounds = 3 if args.quick else args.rounds
    env = report.environment()
    all_rows, notes, pictures = [], {}, {}
    for case in cases:
        kind, name, builder, size, scheduler, steps, cache = case
        if args.steps:
            name, steps = name.replace(f"-{steps},", f"-{args.steps},"), args.steps
            if name in notes:
                continue
        rows, note, plan, outputs = run_case(kind, name, builder, size, scheduler, steps, cache, rounds=rounds)
        all_rows += rows
        notes[name] = dict(cache_dit=note, full_steps=sum(plan), steps=len(plan))
        if case[1] in PICTURE_CASES:
            pictures[name] = outputs
        for r in rows:
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    env.update(diffusers=diffusers.__version__, cache_dit=getattr(cache_dit, "__version__", None), rounds=rounds)
    which = "".join(
        f"{re.sub(r'[^a-z0-9]+', '-', w.lower()).strip('-')}-" for w in (args.cases, args.match) if w and w != "all"
    )
    name_stem = f"diffusers-{which}{env['date']}"
    stem = os.path.join(args.out, f"{name_stem}-{report.device_tag()}")
    os.makedirs(args.out, exist_ok=True)
    lines = [
        f"diffusers {env['diffusers']}, cache-dit {env['cache_dit']}; {rounds} interleaved rounds. Ratios are medians of per-round "
        "ratios; PSNR dB: the final latents against the uncached call's (data range: the uncached latents' range). "
        "Trained cases (the bundled DiT, or the HunyuanDiT of bench/assets; latents = the 16x16 images): px PSNR / SSIM of the images clamped to [-1, 1] "
        "(data range 2, per sample, averaged) and the bundled classifier's digit accuracy. iN sM: Skip-Cache interval N, "
        "M shallow blocks each side (cache-dit: Fn = Bn = M, the same full/cached step mask). (auto): the order "
        "forecast=\"auto\" picks for this scheduler.", "",
        "CPU: this process's CPU time per call (median), steadier than wall time on a loaded machine; CPU x: "
        "uncached (or cache-dit) CPU time / this one. = cache-dit: the output equals cache-dit's bit for bit.", "",
        "| case | method | blocks/call | median s/call (min-max) | speedup vs uncached | speed vs cache-dit | CPU s/call | CPU x uncached | CPU x cache-dit | = cache-dit | PSNR dB | px PSNR dB | px SSIM | digit acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in all_rows:
        vs = f"{r['speed_vs_cache_dit']:.3f}x" if "speed_vs_cache_dit" in r else "n/a"
        p = "ref" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        px = f"{r['pixel_psnr_db']:.2f}" if "pixel_psnr_db" in r else ("ref" if "accuracy" in r else "n/a")
        ss = f"{r['pixel_ssim']:.4f}" if "pixel_ssim" in r else ("ref" if "accuracy" in r else "n/a")
        acc = f"{r['accuracy']:.2f}" if "accuracy" in r else "n/a"
        cvs = f"{r['cpu_vs_cache_dit']:.3f}x" if "cpu_vs_cache_dit" in r else "n/a"
        same = str(r["equals_cache_dit"]).lower() if "equals_cache_dit" in r else "n/a"
        lines.append(f"| {r['case']} | {r['method']} | {r['blocks_per_call']} | {r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f}) | "
                     f"{r['speedup_vs_uncached']:.3f}x | {vs} | {r['cpu_median_s']:.3f} | {r['cpu_speedup_vs_uncached']:.3f}x | {cvs} | "
                     f"{same} | {p} | {px} | {ss} | {acc} |")  # fmt: skip
    lines += ["", "Forecast (auto) against cache-dit and reuse, per case:", "", *_summary(all_rows), ""]
    for case, note in notes.items():
        lines.append(
            f"- {case}: {note['full_steps']}/{note['steps']} full steps"
            + (f"; {note['cache_dit']}" if note["cache_dit"] else "")
        )
    for case, outputs in pictures.items():
        png = f"{stem}-{case.split(' ')[1].lower()}.png"  # the family's name
        order = ["uncached", "cache-dit DBCache", *(k for k in outputs if k.startswith("skip-cache reuse") and "fast blocks off" not in k),
                 *(k for k in outputs if k.endswith("(auto)") and "forecast" in k)]  # fmt: skip
        save_comparison([(k.replace("skip-cache ", "").replace(" (auto)", ""), outputs[k].clamp(-1, 1))
                         for k in order if k in outputs], png, nrow=5, scale=4)  # fmt: skip
        lines.append(f"\n{os.path.basename(png)}: {case}, {' | '.join(k for k in order if k in outputs)} | "
                     "the last panel's difference from uncached x10 (labels 0-4, 5-9, 0-4, 5-9 by row).")  # fmt: skip
    report.write_results(
        name_stem,
        all_rows,
        meta=dict(notes=notes, rounds=rounds),
        env=env,
        out_dir=args.out,
        title="Skip-Cache vs cache-dit DBCache in diffusers pipelines",
        body="\n".join(lines) + "\n",
    )
    print("wrote", stem + ".md")


if __name__ == "__main__":
    main()
