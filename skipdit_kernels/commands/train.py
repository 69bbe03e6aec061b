"""``skipdit train``: train a DiT / SkipDiT (any preset or custom size) or the digit classifier."""

from __future__ import annotations

import json
import os
import time

from skipdit_kernels.commands._common import (
    CommandError,
    check_output_dir,
    check_output_file,
    nonnegative_int,
    positive_int,
)

# Without --preset: the size of the bundled models (a few minutes of CPU training on the digits).
BUNDLED_SIZE = {"patch_size": 4, "hidden_size": 96, "depth": 8, "num_heads": 4}


def configure(parser) -> None:
    parser.add_argument("--model", choices=["skipdit", "dit", "classifier"], default="skipdit")
    parser.add_argument(
        "--preset",
        default=None,
        help="official size, e.g. DiT-S/2 (custom sizes below override; "
        "default: the bundled models' size, patch 4, hidden 96, depth 8, 4 heads)",
    )
    parser.add_argument(
        "--input-size", type=positive_int, default=None, help="image side (pixel-space models; default 16)"
    )
    parser.add_argument("--patch-size", type=positive_int, default=None)
    parser.add_argument("--in-channels", type=positive_int, default=None, help="default 1 (digits)")
    parser.add_argument("--hidden-size", type=positive_int, default=None)
    parser.add_argument("--depth", type=positive_int, default=None)
    parser.add_argument("--num-heads", type=positive_int, default=None)
    parser.add_argument("--num-classes", type=positive_int, default=None, help="default: from the data")
    parser.add_argument("--class-dropout", type=float, default=0.1, help="label dropout for classifier-free guidance")
    parser.add_argument("--no-learn-sigma", action="store_true")
    parser.add_argument(
        "--data",
        default="digits",
        help="'digits' (bundled), an image folder root/<class>/<img>, "
        "or a .pt / .safetensors file holding 'images' (N,C,H,W in [-1,1]) and 'labels'",
    )
    parser.add_argument("--steps", type=positive_int, default=3000)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (DiT: 1e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (DiT: 0.9999, for long runs)")
    parser.add_argument("--no-ema-warmup", action="store_true", help="plain EMA from step 0")
    parser.add_argument("--grad-clip", type=float, default=None)
    parser.add_argument("--epochs", type=positive_int, default=30, help="classifier only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="run folder: model.safetensors, train_state.pt, log.jsonl")
    parser.add_argument("--save-every", type=positive_int, default=500)
    parser.add_argument("--log-every", type=positive_int, default=50)
    parser.add_argument(
        "--eval-every",
        type=nonnegative_int,
        default=0,
        help="Frechet distance of EMA samples every N steps (digits data; uses the bundled classifier or --classifier)",
    )
    parser.add_argument("--eval-samples", type=positive_int, default=100)
    parser.add_argument("--eval-steps", type=positive_int, default=20, help="DDIM steps of the evaluation samples")
    parser.add_argument("--classifier", default=None, help="classifier .safetensors for --eval-every")
    parser.add_argument("--export", default=None, help="also write the final EMA weights here in fp16 (.safetensors)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds a train_state.pt")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--init-from",
        default=None,
        help="fine-tune: start from this model (skipdit convert's output, a "
        "model.safetensors, or a run folder / train_state.pt of an earlier stage); the model is built "
        "from it (--model, --preset and the sizes are ignored)",
    )
    parser.add_argument(
        "--stage",
        choices=["all", "skip"],
        default="all",
        help="'skip': train only the long-skip branches (the rest frozen, bit-identical); 'all': everything (default)",
    )
    parser.add_argument(
        "--accumulation",
        type=positive_int,
        default=1,
        help="gradient accumulation micro-batches per step "
        "(--batch-size is the global batch of one step, all ranks and micro-batches together)",
    )
    parser.add_argument(
        "--activation-checkpointing", action="store_true", help="recompute block activations in the backward"
    )
    parser.add_argument(
        "--fsdp", action="store_true", help="under torchrun: shard the model with FSDP (fully_shard) instead of DDP"
    )


def check_request(args) -> None:
    """What can be refused from the options alone, before data is read or a model built: the run
    folder and the export path are writable, --data names something that exists."""
    check_output_dir("--out", args.out)
    if args.export:
        check_output_file("--export", args.export)
    if args.model != "classifier" and args.data != "digits" and not os.path.exists(args.data):
        raise CommandError(
            f"--data {args.data}: no such file or folder (give 'digits', an image folder "
            "root/<class>/<image>, or a .pt / .safetensors file holding 'images' and 'labels')"
        )


def _load_data(spec: str):
    from skipdit_kernels.training.data import load_tensor_file

    if spec == "digits" or os.path.isdir(spec):
        return spec
    try:
        return load_tensor_file(spec)
    except ValueError as exc:
        raise CommandError(f"--data {exc}") from exc


def _print_resume(step: int, path: str) -> None:
    print(f"resuming from {path} at step {step}", flush=True)


def _classifier_eval(args):
    """eval_fn: Frechet distance (classifier features) of EMA samples vs all digits, and their accuracy."""
    import torch

    from skipdit_kernels.evaluation import bundled
    from skipdit_kernels.evaluation.metrics import classifier_accuracy, classifier_features, frechet_distance
    from skipdit_kernels.sampling import sample
    from skipdit_kernels.training.data import load_digits_tensors

    if args.classifier:
        from safetensors.torch import load_file

        from skipdit_kernels.evaluation.metrics import DigitClassifier

        clf = DigitClassifier()
        clf.load_state_dict({k: v.float() for k, v in load_file(args.classifier).items()})
        clf.eval()
    else:
        clf = bundled.load_bundled("classifier")
    real_x, _ = load_digits_tensors()
    real = classifier_features(clf, real_x)
    labels = torch.arange(args.eval_samples) % 10

    def eval_fn(ema, step):
        started = time.perf_counter()
        x = sample(ema, labels, steps=args.eval_steps, method="ddim", cfg_scale=1.0, seed=1234, progress=False)
        x = x.clamp(-1, 1)
        return dict(
            fd=frechet_distance(classifier_features(clf, x), real),
            accuracy=classifier_accuracy(clf, x, labels),
            eval_seconds=round(time.perf_counter() - started, 2),
        )

    return eval_fn


def _run_classifier(args) -> int:
    import torch

    from skipdit_kernels.evaluation.bundled import save_half
    from skipdit_kernels.evaluation.metrics import DigitClassifier
    from skipdit_kernels.training.data import digits_split
    from skipdit_kernels.training.loop import train_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_data, test_data = digits_split(seed=args.seed)
    model = DigitClassifier()
    started = time.perf_counter()
    info = train_classifier(
        model, train_data, test_data, epochs=args.epochs, seed=args.seed, progress=not args.no_progress
    )
    os.makedirs(args.out, exist_ok=True)
    from skipdit_kernels.io.files import save_safetensors

    save_safetensors(
        model.state_dict(),
        os.path.join(args.out, "model.safetensors"),
        metadata={"skipdit_config": json.dumps(model.config)},
    )
    with open(os.path.join(args.out, "log.jsonl"), "w") as f:
        for row in info["history"]:
            f.write(json.dumps(row) + "\n")
    if args.export:
        save_half(model, args.export, {"test_accuracy": str(info["test_accuracy"])})
    print(
        f"classifier: held-out accuracy {info['test_accuracy']:.4f} ({len(test_data[0])} images), "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


def run(args) -> int:
    import torch

    check_request(args)
    if args.model == "classifier":
        return _run_classifier(args)
    from skipdit_kernels.training.data import as_tensors
    from skipdit_kernels.training.loop import build_model, model_for_init, train

    data = _load_data(args.data)
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = as_tensors(data, size=args.input_size or 16, channels=args.in_channels or 1)
    config = dict(
        input_size=args.input_size or x.shape[-1],
        in_channels=args.in_channels or x.shape[1],
        num_classes=args.num_classes or int(y.max()) + 1,
        class_dropout_prob=args.class_dropout,
        learn_sigma=not args.no_learn_sigma,
    )
    for key, default in BUNDLED_SIZE.items():
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
        elif args.preset is None:
            config[key] = default
    torch.manual_seed(args.seed)
    if args.init_from:
        model = model_for_init(args.init_from)
    else:
        model = build_model(args.model, args.preset, **config)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{type(model).__name__} {json.dumps(model.config)}: {n_params / 1e6:.2f} M parameters, "
        f"{len(x)} training images",
        flush=True,
    )
    eval_fn = _classifier_eval(args) if args.eval_every else None
    result = train(
        model, (x, y), steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        ema_decay=args.ema_decay, ema_warmup=not args.no_ema_warmup, grad_clip=args.grad_clip, seed=args.seed,
        out_dir=args.out, save_every=args.save_every, log_every=args.log_every, resume=not args.no_resume,
        eval_fn=eval_fn, eval_every=args.eval_every, progress=not args.no_progress, threads=args.threads,
        stage=args.stage, init_from_path=args.init_from, accumulation=args.accumulation,
        activation_checkpointing=args.activation_checkpointing, fsdp=args.fsdp, on_resume=_print_resume,
    )  # fmt: skip
    if args.export:
        from skipdit_kernels.evaluation.bundled import save_half

        save_half(result.ema, args.export, {"step": str(result.step)})
    last = result.log[-1] if result.log else {}
    loss = (
        f", loss {last['loss']:.4f} (mean of the last {last['steps_averaged']} steps, as the progress bar and "
        f"log.jsonl)"
        if last
        else ""
    )
    print(
        f"done: step {result.step}, {result.seconds:.0f} s this run"
        + loss
        + (f", FD {last['fd']:.2f}" if "fd" in last else ""),
        flush=True,
    )
    return 0
