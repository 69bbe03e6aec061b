"""``skipdit sample-ddp``: sampling on every rank of a ``torchrun`` launch (or one plain process):
data parallel into one FID-ready .npz, resumable; or one request split over the ranks: with
``--cfg-parallel`` its conditional and unconditional halves, with ``--sequence-parallel N`` its
tokens over N ranks (both: 2 x N ranks). See docs/distributed.md."""

from __future__ import annotations

import os
import sys
import time

from skipdit_kernels.commands._common import (
    add_cache_options,
    cache_from_args,
    check_output_dir,
    positive_int,
    torch_dtype,
)
from skipdit_kernels.commands._timing import add_threads_option


def configure(parser) -> None:
    model = parser.add_argument_group("model (one of --bundled, --ckpt, --random-init)")
    model.add_argument("--bundled", choices=["skipdit", "dit"], default=None, help="a model shipped with the package")
    model.add_argument("--ckpt", default=None, help="checkpoint (.pt, .pth or .safetensors)")
    model.add_argument("--preset", default=None, help="model size, e.g. DiT-XL/2 (inferred from --ckpt if omitted)")
    model.add_argument("--random-init", action="store_true", help="random weights, seeded by --seed (for testing)")
    model.add_argument("--skip", action="store_true", help="with --random-init: a SkipDiT rather than a DiT")
    model.add_argument("--num-classes", type=int, default=None, help="with --random-init (default 1000)")
    parser.add_argument(
        "--num-samples", type=int, default=None, help="how many samples (data parallel; e.g. 50000 for FID-50K)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="samples per sampling call (per rank at a time)")
    parser.add_argument(
        "--labels",
        type=int,
        nargs="+",
        default=None,
        help="class labels: --num-samples of them (default: uniform random, seeded), or the request's with --cfg-parallel",
    )
    parser.add_argument(
        "--cfg-parallel",
        action="store_true",
        help="one request for --labels: the first half of the ranks runs the conditional, the second the unconditional half (2 ranks, or 2 x --sequence-parallel)",
    )
    parser.add_argument(
        "--sequence-parallel",
        type=positive_int,
        default=None,
        metavar="N",
        help="one request for --labels with its tokens sharded over N ranks (Ulysses attention; N must divide the heads)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="image side in pixels (default: the model's)")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--method", choices=["ddpm", "ddim"], default="ddpm")
    parser.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale (1 = off)")
    add_cache_options(parser)
    parser.add_argument(
        "--seed", type=int, default=0, help="global seed: each batch's seeds derive from it and the batch index"
    )
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--vae", default=None, help="local AutoencoderKL folder: the .npz then holds uint8 images")
    parser.add_argument(
        "--out-dir",
        required=True,
        help="rank 0 writes samples.npz (arr_0, labels) and, data parallel, batches/ and run.json for resuming",
    )
    parser.add_argument(
        "--backend", choices=["auto", "nccl", "gloo"], default="auto", help="auto: nccl with CUDA, else gloo"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds a rank waits for the others before failing (must exceed one batch's sampling time)",
    )
    add_threads_option(parser)
    parser.add_argument("--no-progress", action="store_true")


def _model(args):
    if args.bundled:
        if args.ckpt or args.random_init:
            raise ValueError("give one of --bundled, --ckpt, --random-init")
        from skipdit_kernels.evaluation.bundled import load_bundled

        return load_bundled(args.bundled)
    from skipdit_kernels.commands.sample import build_model

    return build_model(args)


def run(args) -> int:
    import numpy as np
    import torch.distributed as dist

    from skipdit_kernels.integrations import distributed as ddp

    one_request = args.cfg_parallel or args.sequence_parallel is not None
    if one_request and not args.labels:
        raise ValueError("--cfg-parallel and --sequence-parallel sample one request: give its --labels")
    if not one_request and args.num_samples is None:
        raise ValueError("give --num-samples (or --cfg-parallel / --sequence-parallel with --labels)")
    check_output_dir("--out-dir", args.out_dir)
    from skipdit_kernels.commands._timing import pin_threads

    rank = os.environ.get("RANK", "0")
    threads = pin_threads(args.threads, processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    try:
        info = ddp.init_distributed(None if args.backend == "auto" else args.backend, timeout_s=args.timeout)
        model = _model(args).eval()
        cache = cache_from_args(args, model)
        common = dict(image_size=args.image_size, steps=args.steps, method=args.method, cfg_scale=args.cfg, cache=cache,
                      seed=args.seed, dtype=torch_dtype(args.dtype), progress=not args.no_progress, info=info)  # fmt: skip
        started = time.perf_counter()
        if one_request:
            split = (args.sequence_parallel or 1) * (2 if args.cfg_parallel else 1)
            if info.world_size != split:
                raise ValueError(f"{_split_name(args)} runs on {split} ranks, this run has {info.world_size}")
            latents = ddp.sample_sequence_parallel(model, args.labels, cfg_parallel=args.cfg_parallel, **common)
            path = None
            if info.rank == 0:
                from skipdit_kernels.cache import as_skip_stack
                from skipdit_kernels.io.images import load_vae

                stack = as_skip_stack(model)
                kind = ddp.output_kind(stack, tuple(latents.shape[1:]), args.vae)
                vae = load_vae(args.vae, latents.device) if args.vae else None
                os.makedirs(args.out_dir, exist_ok=True)
                path = os.path.join(args.out_dir, "samples.npz")
                np.savez(path, arr_0=ddp.fid_array(latents, kind, vae), labels=np.asarray(args.labels, dtype=np.int64))
            count = len(args.labels)
        else:
            path = ddp.sample_ddp(model, args.num_samples, args.out_dir, batch_size=args.batch_size, labels=args.labels,
                                  vae=args.vae, **common)  # fmt: skip
            count = args.num_samples
        if info.rank == 0:
            mode = _split_name(args) if one_request else f"data parallel over {info.world_size} rank(s)"
            print(f"{count} samples, {mode}, {time.perf_counter() - started:.1f} s, {threads} per rank; wrote {path}")
        return 0
    except ddp.DistributedSamplingError as exc:
        print(f"skipdit sample-ddp (rank {rank}): error: {exc}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _split_name(args) -> str:
    parts = (["CFG-parallel"] if args.cfg_parallel else []) + (
        [f"sequence-parallel over {args.sequence_parallel}"] if args.sequence_parallel is not None else []
    )
    return " x ".join(parts)
