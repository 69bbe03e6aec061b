"""Skip-Cache vs cache-dit's DBCache inside diffusers pipelines, at equal blocks computed per step.

For each case (a tiny-to-small random HunyuanDiT or DiT pipeline, a scheduler, a Skip-Cache
schedule) three identical pipelines run: uncached, Skip-Cache (``apply_skip_cache``) and cache-dit's
DBCache with ``Fn_compute_blocks = Bn_compute_blocks = shallow_blocks`` and a static
``steps_computation_mask`` equal to the Skip-Cache plan (so both compute the same blocks on the same
steps; checked by counting block calls). Wall time per pipeline call is timed round-robin (one
interleaved run; the speed ratios are medians of per-round ratios); fidelity is the PSNR of each
cached output against the uncached one (the final latents; data range: the uncached latents' range).
Weights are random (diffusers' default init, fixed seed): the PSNRs say how well each cache tracks
the uncached trajectory of these models, not image quality.

cache-dit is a benchmark-only dependency (``pip install cache-dit``); without it the cache-dit rows
are skipped and the report says so.

    python bench/bench_diffusers.py [--rounds 7] [--quick]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffusers  # noqa: E402

import report  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.cache.forecast import resolve_forecast  # noqa: E402
from skipdit_kernels.integrations import diffusers as sd  # noqa: E402
from skipdit_kernels.metrics import psnr  # noqa: E402

try:
    import cache_dit
except ImportError as exc:  # reported in the results
    cache_dit = None
    CACHE_DIT_ERROR = f"cache-dit not importable: {exc}"
else:
    CACHE_DIT_ERROR = None


def hunyuan_pipe(scheduler, layers: int, hidden: int, sample: int):
    torch.manual_seed(0)
    heads = 4
    transformer = diffusers.HunyuanDiT2DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=4, patch_size=2, sample_size=sample,
        hidden_size=hidden, num_layers=layers, cross_attention_dim=64, cross_attention_dim_t5=64,
        pooled_projection_dim=64, text_len=77, text_len_t5=256,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    pipe = diffusers.HunyuanDiTPipeline(
        vae=vae, text_encoder=None, tokenizer=None, transformer=transformer.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False, text_encoder_2=None, tokenizer_2=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
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


def _wrap_decode(decode, store):
    def wrapped(z, *args, **kwargs):
        store["x"] = z.detach().clone()
        return decode(z, *args, **kwargs)

    return wrapped


CASES = [
    # name, builder, size, scheduler, steps, Skip-Cache schedule
    ("HunyuanDiT 12L/128 64 tok, DDPM-50 (reuse)", hunyuan_pipe, (12, 128, 16),
     lambda: diffusers.DDPMScheduler(), 50, sk.SkipCache.preset("video", forecast="auto")),
    ("HunyuanDiT 12L/128 64 tok, DDIM-50 (forecast auto)", hunyuan_pipe, (12, 128, 16),
     lambda: diffusers.DDIMScheduler(), 50, sk.SkipCache.preset("video", forecast="auto")),
    ("DiT 12L/192 64 tok, DDIM-50 (forecast auto)", dit_pipe, (12, 192, 16),
     lambda: diffusers.DDIMScheduler(), 50, sk.SkipCache(interval=2, shallow_blocks=2, forecast="auto")),
    ("DiT 12L/192 64 tok, DDPM-50 (reuse)", dit_pipe, (12, 192, 16),
     lambda: diffusers.DDPMScheduler(), 50, sk.SkipCache(interval=2, shallow_blocks=2, forecast="auto")),
]  # fmt: skip


def count_blocks(blocks, fn) -> int:
    calls = [0]
    handles = [b.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) for b in blocks]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return calls[0]


def run_case(name, builder, size, make_scheduler, steps, cache, rounds):
    base, call, _ = builder(make_scheduler(), *size)
    pipes = {"uncached": base}
    scheduler = base.scheduler
    scheduler.set_timesteps(steps)
    plan = cache.with_forecast(0).full_steps([float(t) for t in scheduler.timesteps])  # the plan ignores the order
    order = resolve_forecast(cache.forecast, stochastic=sd.scheduler_is_stochastic(scheduler))
    variants = {"skip-cache (reuse)": cache.with_forecast(0)}
    if order:
        variants[f"skip-cache (forecast {order})"] = cache.with_forecast(order)
    for label, c in variants.items():
        pipe = copy.deepcopy(base)
        sd.apply_skip_cache(pipe, c)
        pipes[label] = pipe
    cd_note = CACHE_DIT_ERROR
    if cache_dit is not None:
        pipe = copy.deepcopy(base)
        try:
            cache_dit.enable_cache(
                pipe,
                cache_config=cache_dit.DBCacheConfig(
                    Fn_compute_blocks=cache.shallow_blocks, Bn_compute_blocks=cache.shallow_blocks,
                    max_warmup_steps=0, steps_computation_mask=[int(f) for f in plan],
                    steps_computation_policy="static", num_inference_steps=steps, enable_separate_cfg=False,
                    residual_diff_threshold=1e9, max_cached_steps=-1, max_continuous_cached_steps=-1,
                ),
            )  # fmt: skip
            pipes["cache-dit DBCache"] = pipe
        except Exception as exc:  # noqa: BLE001 - reported in the results
            cd_note = f"cache-dit failed on {type(base).__name__}: {type(exc).__name__}: {exc}"
    outputs, blocks = {}, {}
    for label, pipe in pipes.items():
        block_list = pipe.transformer.blocks if hasattr(pipe.transformer, "blocks") else pipe.transformer.transformer_blocks
        try:
            blocks[label] = count_blocks(block_list, lambda: outputs.__setitem__(label, call(pipe, steps)))
        except Exception as exc:  # noqa: BLE001
            if label != "cache-dit DBCache":
                raise
            cd_note = f"cache-dit failed while running {type(base).__name__}: {type(exc).__name__}: {exc}"
            del pipes[label]
    ref = outputs["uncached"]
    data_range = float(ref.max() - ref.min())
    times = report.time_fns({label: (lambda pipe=pipe: call(pipe, steps)) for label, pipe in pipes.items()},
                            min_rounds=rounds, max_rounds=rounds, budget_s=0.0, warmup=0)  # warmed up by the runs above
    rows = []
    for label in pipes:
        if "error" in times[label]:
            raise RuntimeError(f"{name} {label}: {times[label]['error']}")
        row = dict(case=name, method=label, blocks_per_call=blocks[label], median_s=times[label]["median_s"],
                   min_s=times[label]["min_s"], max_s=times[label]["max_s"],
                   speedup_vs_uncached=report.round_ratio(times, label, "uncached")["ratio"],
                   psnr_db=None if label == "uncached" else psnr(outputs[label], ref, data_range=data_range))  # fmt: skip
        if "cache-dit DBCache" in pipes:
            row["speed_vs_cache_dit"] = report.round_ratio(times, label, "cache-dit DBCache")["ratio"]
        rows.append(row)
    return rows, cd_note, plan


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=None, help="override every case's step count")
    parser.add_argument("--quick", action="store_true", help="two cases, 3 rounds (a smoke run)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    cases = CASES[1:3] if args.quick else CASES
    rounds = 3 if args.quick else args.rounds
    env = report.environment()
    all_rows, notes = [], {}
    for case in cases:
        name, builder, size, scheduler, steps, cache = case
        steps = args.steps or steps
        name = name.replace("-50", f"-{steps}")
        rows, note, plan = run_case(name, builder, size, scheduler, steps, cache, rounds=rounds)
        all_rows += rows
        notes[name] = dict(cache_dit=note, full_steps=sum(plan), steps=len(plan))
        for r in rows:
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    env.update(diffusers=diffusers.__version__, cache_dit=getattr(cache_dit, "__version__", None), rounds=rounds)
    notes_md = [
        f"diffusers {env['diffusers']}, cache-dit {env['cache_dit']}; {rounds} interleaved rounds. Ratios are medians "
        "of per-round ratios; PSNR of the final latents against the uncached call (random weights).",
    ] + [f"{case}: {note['full_steps']}/{note['steps']} full steps" + (f"; {note['cache_dit']}" if note["cache_dit"] else "")
         for case, note in notes.items()]
    columns = [("case", "case"), ("method", "method"), ("blocks_per_call", "blocks/call"), ("median_s", "median s/call"),
               ("min_s", "min"), ("max_s", "max"), ("speedup_vs_uncached", "speedup vs uncached"),
               ("speed_vs_cache_dit", "speed vs cache-dit"), ("psnr_db", "PSNR dB")]
    stem = report.write_results(f"diffusers-{env['date']}", all_rows, columns, meta=notes, env=env,
                                notes=notes_md, out_dir=args.out,
                                title="Skip-Cache vs cache-dit DBCache in diffusers pipelines")
    print("wrote", stem + ".md")


if __name__ == "__main__":
    main()
