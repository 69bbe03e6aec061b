"""Train a tiny diffusers ``HunyuanDiT2DModel`` on the bundled 16x16 digits, for bench/e2e/bench_diffusers.py.

The benchmark's trained HunyuanDiT case needs a model whose features are smooth across timesteps (a
random one's are not, which makes forecasting meaningless). Class conditioning goes through the
model's own text inputs: each of the 10 classes, and the null class (index 10, for classifier-free
guidance; class dropout 0.1), has a fixed random "prompt" (``text_len`` tokens for the first text
stream, ``text_len_t5`` for the second; seed 1234), passed with all-ones masks exactly as
``HunyuanDiTPipeline`` passes ``prompt_embeds`` / ``prompt_embeds_2`` (and the null class's as the
negative prompt). The loss is DiT's (``GaussianDiffusion.training_losses``: eps MSE + variational
bound for the learned sigma, linear betas 1e-4..0.02 over 1000 steps, which diffusers' DDIM/DDPM
defaults match), with the rotary embedding, image-size ids and style the pipeline computes for a
128x128 call (latents 16x16 under a VAE of scale factor 8). AdamW, EMA with warm-up, gradient clip 1.

Run from the repository root; writes log.jsonl to bench/results/training/hunyuandit/ and the EMA weights in fp16 plus
the class prompts (``class_text.prompt_embeds`` (11, text_len, cross_attention_dim) and
``class_text.prompt_embeds_2`` (11, text_len_t5, cross_attention_dim_t5)) to --out; the model's
constructor arguments are the file's "config" metadata (JSON):

    PYTHONPATH=. python bench/training/train_hunyuandit.py --minutes 14 --threads 1 \\
        --out bench/assets/hunyuandit-digits.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

# the run's log and weights are results: bench/results/training/hunyuandit/
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "training", "hunyuandit")
NUM_CLASSES = 10
PROMPT_SEED = 1234
HEIGHT = 128  # the pipeline call's pixel size: latents 16x16 under a VAE of scale factor 8


def model_config(hidden: int, layers: int, heads: int, patch: int) -> dict:
    return dict(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=1, patch_size=patch,
                sample_size=16, hidden_size=hidden, num_layers=layers, mlp_ratio=4.0, learn_sigma=True,
                cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=32, text_len=4,
                text_len_t5=4, use_style_cond_and_image_meta_size=False)  # fmt: skip


def class_prompts(config: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(PROMPT_SEED)
    return {
        "prompt_embeds": torch.randn(NUM_CLASSES + 1, config["text_len"], config["cross_attention_dim"], generator=g),
        "prompt_embeds_2": torch.randn(NUM_CLASSES + 1, config["text_len_t5"], config["cross_attention_dim_t5"], generator=g),
    }  # fmt: skip


def pipeline_extras(model, batch: int) -> dict:
    """What HunyuanDiTPipeline passes besides the latents, timestep and text, for a HEIGHT x HEIGHT call."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid

    patch = model.config.patch_size
    grid = HEIGHT // 8 // patch
    crops = get_resize_crop_region_for_grid((grid, grid), 512 // 8 // patch)
    rotary = get_2d_rotary_pos_embed(model.inner_dim // model.num_heads, crops, (grid, grid), output_type="pt")
    return dict(image_meta_size=torch.tensor([[HEIGHT, HEIGHT, HEIGHT, HEIGHT, 0, 0]] * batch, dtype=torch.float32),
                style=torch.zeros(batch, dtype=torch.long), image_rotary_emb=rotary)  # fmt: skip


class ClassConditioned(torch.nn.Module):
    """(x, t, y) -> the HunyuanDiT's output, y a class index (NUM_CLASSES: the null class)."""

    def __init__(self, model, prompts: dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.prompts = prompts

    def forward(self, x, t, y):
        e1, e2 = self.prompts["prompt_embeds"][y], self.prompts["prompt_embeds_2"][y]
        return self.model(
            x, t.float(), encoder_hidden_states=e1, text_embedding_mask=torch.ones(e1.shape[:2], dtype=torch.long),
            encoder_hidden_states_t5=e2, text_embedding_mask_t5=torch.ones(e2.shape[:2], dtype=torch.long),
            **pipeline_extras(self.model, len(x)), return_dict=False,
        )[0]  # fmt: skip


def save(model, prompts: dict, config: dict, path: str, metadata: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    state.update({f"class_text.{k}": v.half().contiguous() for k, v in prompts.items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(state, path, metadata={"config": json.dumps(config), **metadata})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--minutes", type=float, default=14.0, help="stop after this much wall time")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--class-dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", required=True, help="the fp16 safetensors to write (EMA weights + class prompts)")
    args = p.parse_args()

    import diffusers

    from skipdit_kernels.sampling import GaussianDiffusion
    from skipdit_kernels.training.data import load_digits_tensors
    from skipdit_kernels.training.loop import ema_decay_at, update_ema

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    config = model_config(args.hidden_size, args.layers, args.heads, args.patch_size)
    model = diffusers.HunyuanDiT2DModel(**config)
    ema = copy.deepcopy(model).requires_grad_(False)
    prompts = class_prompts(config)
    net = ClassConditioned(model, prompts)
    diffusion = GaussianDiffusion.create("", learn_sigma=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    images, labels = load_digits_tensors(16)
    print(f"HunyuanDiT2DModel {json.dumps(config)}: {sum(q.numel() for q in model.parameters()) / 1e6:.3f} M parameters, "
          f"{len(images)} digits", flush=True)  # fmt: skip
    log = open(os.path.join(OUT, "log.jsonl"), "w")
    started, window, step = time.perf_counter(), [], 0
    model.train()
    while step < args.max_steps and time.perf_counter() - started < args.minutes * 60:
        step += 1
        idx = torch.randint(0, len(images), (args.batch_size,), generator=gen)
        y = labels[idx].clone()
        y[torch.rand(args.batch_size, generator=gen) < args.class_dropout] = NUM_CLASSES
        t = torch.randint(0, diffusion.num_steps, (args.batch_size,), generator=gen)
        noise = torch.randn(images[idx].shape, generator=gen)
        terms = diffusion.training_losses(net, images[idx], t, model_kwargs=dict(y=y), noise=noise)
        loss = terms["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, ema_decay_at(step - 1, args.ema_decay, True))
        window.append([loss.item(), terms["mse"].mean().item()])
        if step % args.log_every == 0:
            mean = torch.tensor(window).mean(0).tolist()
            window = []
            row = dict(
                step=step, loss=mean[0], mse=mean[1], seconds=round(time.perf_counter() - started, 2), lr=args.lr
            )
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(row, flush=True)
    ema.eval()
    save(ema, prompts, config, args.out, {"step": str(step), "ema_decay": str(args.ema_decay)})
    print(f"done: step {step}, {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
