"""``skipdit convert``: add Skip-DiT's long skips to a pretrained DiT or Latte (then fine-tune it with
``skipdit train --init-from OUT --stage skip``, then ``--stage all``)."""

from __future__ import annotations

import os
import time

from skipdit_kernels.commands._common import CommandError, positive_int


def configure(parser) -> None:
    parser.add_argument(
        "--ckpt",
        required=True,
        help="a DiT checkpoint (official keys, .pt/.pth/.safetensors), an official "
        "class-to-video Latte checkpoint, or a diffusers folder (DiTTransformer2DModel or "
        "LatteTransformer3DModel, or a pipeline folder with transformer/)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="the skip model: a .safetensors (or .pt) file; a folder for a "
        "diffusers Latte (LatteT2VSkip, save_pretrained)",
    )
    parser.add_argument(
        "--init",
        choices=["identity", "official"],
        default="identity",
        help="skip-branch initialisation: 'identity' keeps the output close to the original's at step 0 "
        "(fitted on calibration inputs); 'official' as Skip-DiT's code (default: identity)",
    )
    parser.add_argument(
        "--calibration",
        default=None,
        help="'digits' (the bundled digits, for 16x16 one-channel pixel "
        "models) or a .pt / .safetensors file with 'images' (N, C, H, W clean latents); default: "
        "standard normal latents",
    )
    parser.add_argument("--calibration-samples", type=positive_int, default=256)
    parser.add_argument(
        "--num-heads", type=positive_int, default=None, help="for a checkpoint of a size that is not official"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=2)


def _calibration(args):
    import torch

    if args.calibration is None:
        return None
    if args.calibration == "digits":
        from skipdit_kernels.training.data import load_digits_tensors

        x = load_digits_tensors()[0]
    elif os.path.isfile(args.calibration):
        from skipdit_kernels.commands.train import _load_data

        x = _load_data(args.calibration)[0]
    else:
        raise CommandError(f"--calibration {args.calibration}: neither 'digits' nor a file")
    g = torch.Generator().manual_seed(args.seed)
    return x[torch.randperm(len(x), generator=g)[: args.calibration_samples]]


def run(args) -> int:
    import torch

    from skipdit_kernels.training.convert import convert_checkpoint

    if not os.path.exists(args.ckpt):
        raise CommandError(f"--ckpt {args.ckpt}: no such file or folder")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise CommandError(f"--out {args.out}: cannot write into {parent}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    config = {"num_heads": args.num_heads} if args.num_heads else {}
    conversion = convert_checkpoint(args.ckpt, args.out, init=args.init, calibration=_calibration(args), **config)
    print(f"{conversion.summary()}; wrote {args.out} in {time.perf_counter() - started:.1f} s")
    return 0
