from __future__ import annotations

import warnings

import numpy as np
import torch

from skipdit_kernels import DiT, SkipCache, SkipDiT, load_checkpoint
from skipdit_kernels.images import decode_latents, save_grid
from skipdit_kernels.sampling import sample

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def configure(parser) -> None:
    parser.add_argument("--preset", default=None, help="model size, e.g. DiT-XL/2 (inferred from --ckpt if omitted)")
    parser.add_argument("--ckpt", default=None, help="checkpoint (.pt, .pth or .safetensors)")
    parser.add_argument("--random-init", action="store_true", help="no checkpoint: random weights (for testing)")
    parser.add_argument("--skip", action="store_true", help="with --random-init: a SkipDiT rather than a DiT")
    parser.add_argument("--image-size", type=int, default=None, help="image side in pixels (default: the model's)")
    parser.add_argument("--num-classes", type=int, default=None, help="with --random-init (default 1000)")
    parser.add_argument("--labels", type=int, nargs="+", default=[207, 360, 387, 974, 88, 979, 417, 279])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--method", choices=["ddpm", "ddim"], default="ddpm")
    parser.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--cache", type=int, default=0, help="Skip-Cache interval (0 = off)")
    parser.add_argument("--forecast", default="0", choices=["0", "1", "2", "3", "auto"],
                        help="Skip-Cache forecast order (0 = reuse; auto = best for the sampler)")
    parser.add_argument("--shallow", type=int, default=None, help="Skip-Cache shallow blocks (default 4, or depth/2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--vae", default=None, help="local AutoencoderKL folder, to decode latents to images")
    parser.add_argument("--out", default="samples.png", help=".png for an image grid, .npz for latents")
    parser.add_argument("--no-progress", action="store_true")


def build_model(args):
    if args.ckpt and args.random_init:
        raise ValueError("give either --ckpt or --random-init, not both")
    if args.ckpt:
        if args.preset:
            cls = SkipDiT if "skip" in args.preset.lower() else DiT
            from skipdit_kernels.models.checkpoint import infer_config, read_state_dict

            _, shape_config = infer_config(read_state_dict(args.ckpt))
            model = cls.from_preset(
                args.preset, input_size=shape_config["input_size"], num_classes=shape_config["num_classes"],
                in_channels=shape_config["in_channels"], learn_sigma=shape_config["learn_sigma"],
            )  # fmt: skip
            return load_checkpoint(args.ckpt, model)
        return load_checkpoint(args.ckpt)
    if not args.random_init:
        raise ValueError("no weights: pass --ckpt PATH, or --random-init to sample from random weights")
    warnings.warn("sampling from randomly initialised weights: the output is noise-like", stacklevel=2)
    cls = SkipDiT if args.skip or (args.preset and "skip" in args.preset.lower()) else DiT
    size = args.image_size or 256
    in_channels = 4
    torch.manual_seed(args.seed)
    return cls.from_preset(args.preset or "DiT-XL/2", input_size=size // 8, in_channels=in_channels,
                           num_classes=args.num_classes or 1000)


def run(args) -> int:
    if not args.out.endswith((".png", ".npz")):
        raise ValueError(f"--out must end in .png or .npz, got {args.out!r}")
    if args.out.endswith(".png") and not args.vae and args.random_init:
        raise ValueError("random-init models make 4-channel latents: pass --vae DIR for images, or use --out x.npz")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(args)
    if args.out.endswith(".png") and not args.vae and model.in_channels not in (1, 3):
        raise ValueError(f"{model.in_channels}-channel latents need --vae DIR to become images; or use --out x.npz")
    cache = None
    if args.cache:
        shallow = args.shallow or min(4, model.depth // 2)
        forecast = args.forecast if args.forecast == "auto" else int(args.forecast)
        cache = SkipCache(interval=args.cache, shallow_blocks=shallow, forecast=forecast)
    latents, info = sample(
        model, args.labels, image_size=args.image_size, steps=args.steps, method=args.method,
        cfg_scale=args.cfg, cache=cache, seed=args.seed, device=device, dtype=DTYPES[args.dtype],
        progress=not args.no_progress, return_info=True,
    )  # fmt: skip
    print(
        f"{len(args.labels)} samples, {info.steps} {info.method} steps ({info.full_steps} full, "
        f"{info.cached_steps} cached) in {info.seconds:.2f} s on {device}"
        + (f"; Skip-Cache forecast order {info.forecast}" if info.forecast else "")
    )
    if args.out.endswith(".npz"):
        np.savez(args.out, latents=latents.cpu().numpy(), labels=np.asarray(args.labels))
    else:
        images = decode_latents(latents, args.vae) if args.vae else latents
        save_grid(images, args.out, nrow=min(len(args.labels), 8))
    print(f"wrote {args.out}")
    return 0
