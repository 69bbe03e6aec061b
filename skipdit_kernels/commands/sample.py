"""``skipdit sample``: images or latents from a DiT / Skip-DiT checkpoint, a bundled model, or random weights.

Model class: ``--bundled skipdit|dit|video`` samples a model shipped with the package (the 16x16
digit SkipDiT / DiT, the class-to-video LatteSkip; labels 0-9); with ``--ckpt`` the checkpoint decides (SkipDiT when it has ``skip_linears.*`` keys);
``--preset`` names a size only (the official names, ``DiT-S/2`` ... ``DiT-XL/8``, as the Skip-DiT
release uses them too). With ``--random-init``, ``--skip`` builds a SkipDiT. Every option is checked
before the model is built or sampling starts."""

from __future__ import annotations

from skipdit_kernels.commands._common import (
    DTYPE_NAMES,
    CommandError,
    add_cache_options,
    cache_from_args,
    check_input_file,
    check_output_file,
    guidance_scale,
    notice,
    positive_int,
    resolve_device,
    torch_dtype,
)
from skipdit_kernels.commands._timing import add_threads_option

# --bundled NAME -> the embedded model's name (skipdit_kernels.evaluation.bundled)
BUNDLED = {"skipdit": "skipdit", "dit": "dit", "video": "latte"}
IMAGENET_LABELS = [207, 360, 387, 974, 88, 979, 417, 279]  # DiT's sample.py

DTYPES = tuple(DTYPE_NAMES)
VAE_FACTOR = 8  # DiT's sd-vae-ft-* autoencoders: 4-channel latents, 8x smaller than the image
MIN_PANEL = 64  # --scale auto: the smallest factor that shows each image at least this many pixels wide


def configure(parser) -> None:
    parser.add_argument(
        "--bundled",
        choices=list(BUNDLED),
        default=None,
        help="a model shipped with the package: the 16x16 digit SkipDiT or DiT, or the class-to-video "
        "LatteSkip (8 frames of a moving digit); labels 0-9, default 0 1 ... 9",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="model size, DiT-S/2 ... DiT-XL/8 (default: inferred from --ckpt; DiT-XL/2 with --random-init)",
    )
    parser.add_argument(
        "--ckpt", default=None, help="checkpoint (.pt, .pth or .safetensors); its keys decide DiT or SkipDiT"
    )
    parser.add_argument("--random-init", action="store_true", help="no checkpoint: random weights (for testing)")
    parser.add_argument("--skip", action="store_true", help="with --random-init: a SkipDiT rather than a DiT")
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="image side in pixels (default: the model's; latent models: 8 x latent side)",
    )
    parser.add_argument("--num-classes", type=positive_int, default=None, help="with --random-init (default 1000)")
    parser.add_argument(
        "--labels",
        type=int,
        nargs="+",
        default=None,
        help=f"class labels (default: 0 1 ... 9 with --bundled, else {' '.join(map(str, IMAGENET_LABELS))})",
    )
    parser.add_argument("--steps", type=positive_int, default=250)
    parser.add_argument("--method", choices=["ddpm", "ddim"], default="ddpm")
    parser.add_argument(
        "--cfg", type=guidance_scale, default=4.0, help="classifier-free guidance scale, >= 1 (1 = off)"
    )
    add_cache_options(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument(
        "--vae", default=None, help="local AutoencoderKL folder (needs diffusers), to decode latents to images"
    )
    parser.add_argument(
        "--out",
        default=None,
        help=".png for an image grid, .gif/.mp4 for a video grid (video models), .npz for latents "
        "(default samples.png; samples.gif with --bundled video)",
    )
    add_threads_option(parser)
    parser.add_argument(
        "--scale",
        type=positive_int,
        default=None,
        help=f"PNG upscaling factor, nearest neighbour (default: smallest giving {MIN_PANEL}-pixel images)",
    )
    parser.add_argument("--no-progress", action="store_true")


def check_request(args) -> None:
    """What can be refused from the options alone, before torch or the model is loaded (fills in the
    defaults that depend on other options: --out, --labels)."""
    sources = [
        name
        for name, given in (("--bundled", args.bundled), ("--ckpt", args.ckpt), ("--random-init", args.random_init))
        if given
    ]
    if len(sources) > 1:
        raise CommandError(f"give one of --bundled, --ckpt, --random-init, not {' and '.join(sources)}")
    if not sources:
        raise CommandError(
            "no weights: pass --bundled skipdit|dit|video, --ckpt PATH, or --random-init to sample from random weights"
        )
    if args.out is None:
        args.out = "samples.gif" if args.bundled == "video" else "samples.png"
    if args.labels is None:
        args.labels = list(range(10)) if args.bundled else IMAGENET_LABELS
    if args.ckpt:
        check_input_file("--ckpt", args.ckpt, "a checkpoint file (.pt, .pth or .safetensors)")
    if args.bundled and args.preset:
        raise CommandError("--preset goes with --ckpt or --random-init; a bundled model has its own size")
    if args.skip and not args.random_init:
        raise CommandError("--skip goes with --random-init; with --ckpt the checkpoint decides DiT or SkipDiT")
    if args.num_classes is not None and not args.random_init:
        raise CommandError("--num-classes goes with --random-init; a checkpoint has its own")
    if not args.out.lower().endswith((".png", ".gif", ".mp4", ".npz")):
        raise CommandError(
            f"--out must end in .png (images), .gif or .mp4 (videos) or .npz (latents), got {args.out!r}"
        )
    if args.out.endswith(".npz") and (args.vae or args.scale):
        raise CommandError(f"--out {args.out} saves latents; --vae and --scale apply to image and video output only")
    if args.out.endswith(".png") and args.random_init and not args.vae:
        raise CommandError("random-init models make 4-channel latents: pass --vae DIR for images, or use --out x.npz")
    if args.vae:
        from skipdit_kernels.io.images import check_vae

        check_vae(args.vae)
    if args.preset:
        check_preset(args.preset)
    check_output_file("--out", args.out)
    if args.random_init:
        from skipdit_kernels.models.presets import preset_config

        check_image_size(
            args.image_size or 256, preset_config(args.preset or "DiT-XL/2")["patch_size"], VAE_FACTOR, None
        )


def check_preset(name: str) -> None:
    from skipdit_kernels.models.presets import PRESETS

    if name not in PRESETS:
        hint = (
            "; a SkipDiT comes from its checkpoint, or from --skip with --random-init" if "skip" in name.lower() else ""
        )
        raise CommandError(f"unknown --preset {name!r}; valid: {', '.join(PRESETS)}{hint}")


def check_image_size(image_size: int, patch: int, factor: int, model_side: int | None) -> None:
    """``--image-size`` against a model: pixels / ``factor`` must be a whole latent side divisible by
    the patch size, and equal the model's side when the model is fixed (``model_side``)."""
    what = f"{factor}x-downsampled latents" if factor > 1 else "pixel-space images"
    if model_side is not None and image_size != model_side * factor:
        raise CommandError(
            f"--image-size {image_size}: this model makes {model_side * factor}-pixel images "
            f"({what}, side {model_side}); omit --image-size or give {model_side * factor}"
        )
    step = factor * patch
    if image_size % step:
        lower, upper = image_size // step * step, (image_size // step + 1) * step
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise CommandError(
            f"--image-size {image_size}: must be a multiple of {step} ({what}, patch size {patch}); "
            f"nearest valid: {nearest}"
        )


def build_model(args):
    import torch

    from skipdit_kernels import DiT, SkipDiT, load_checkpoint
    from skipdit_kernels.models.presets import preset_config

    if args.bundled:
        from skipdit_kernels.evaluation.bundled import load_bundled

        return load_bundled(BUNDLED[args.bundled])
    if args.ckpt:
        overrides = preset_config(args.preset) if args.preset else {}
        return load_checkpoint(args.ckpt, **overrides)
    notice("sample", "--random-init: random weights, the samples will be noise-like")
    cls = SkipDiT if args.skip else DiT
    torch.manual_seed(args.seed)
    return cls.from_preset(
        args.preset or "DiT-XL/2",
        input_size=(args.image_size or 256) // VAE_FACTOR,
        in_channels=4,
        num_classes=args.num_classes or 1000,
    )


def auto_scale(side: int) -> int:
    return max(1, -(-MIN_PANEL // side))


def run(args) -> int:
    from skipdit_kernels.commands._timing import pin_threads

    check_request(args)
    device = resolve_device(args.device)
    threads = pin_threads(args.threads)
    model = build_model(args)
    pixel_model = model.in_channels in (1, 3)
    video_model = len(model.latent_shape) == 4
    if args.image_size is not None:
        check_image_size(args.image_size, model.patch_size, 1 if pixel_model else VAE_FACTOR, model.input_size)
    wanted = (".gif", ".mp4", ".npz") if video_model else (".png", ".npz")
    if not args.out.lower().endswith(wanted):
        raise CommandError(
            f"--out {args.out}: a {'video' if video_model else 'image'} model writes {' or '.join(wanted)}"
        )
    if not args.out.endswith(".npz") and not args.vae and not pixel_model:
        raise CommandError(f"{model.in_channels}-channel latents need --vae DIR to become pixels; or use --out x.npz")
    if video_model and not args.out.endswith(".npz"):
        from skipdit_kernels.io.images import check_video_path

        check_video_path(args.out)

    import numpy as np

    from skipdit_kernels.io.images import decode_latents, save_grid, save_video_grid
    from skipdit_kernels.sampling import sample

    cache = cache_from_args(args, model)
    dtype = torch_dtype(args.dtype)
    latents, info = sample(
        model, args.labels, image_size=args.image_size, steps=args.steps, method=args.method,
        cfg_scale=args.cfg, cache=cache, seed=args.seed, device=device, dtype=dtype,
        progress=not args.no_progress, return_info=True,
    )  # fmt: skip
    print(
        f"{len(args.labels)} samples, {info.steps} {info.method} steps ({info.full_steps} full, "
        f"{info.cached_steps} cached) in {info.seconds:.2f} s on {device}"
        + (f", {threads}" if device.type == "cpu" else "")
        + (f"; Skip-Cache forecast order {info.forecast}" if info.forecast else "")
    )
    if args.out.endswith(".npz"):
        np.savez(args.out, latents=latents.cpu().numpy(), labels=np.asarray(args.labels))
    else:
        images = decode_latents(latents, args.vae) if args.vae else latents
        save = save_video_grid if video_model else save_grid
        save(images, args.out, nrow=min(len(args.labels), 8), scale=args.scale or auto_scale(images.shape[-1]))
    print(f"wrote {args.out}")
    return 0
