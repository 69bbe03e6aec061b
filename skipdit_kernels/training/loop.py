"""Train a DiT, SkipDiT or LatteSkip with DiT's recipe: AdamW, EMA, eps-MSE + variational-bound loss,
class dropout for classifier-free guidance; safetensors checkpoints, exact resume, seeded; one
process or many (DDP under ``torchrun``, optionally FSDP); from scratch or in Skip-DiT's two stages
after ``skipdit_kernels.training.convert`` (``stage="skip"``: only the skip branches train, ``"all"``: everything).

Files written to ``out_dir`` (by rank 0, each atomically: written aside, then renamed):

- ``model.safetensors``: the EMA weights with the model config (load with ``load_checkpoint``);
- ``train_state.pt``: model, EMA, optimizer, step and stage; tensors and plain containers only,
  so ``torch.load(path, weights_only=True)`` reads it;
- ``log.jsonl``: one JSON line per logged step (loss, mse, vb, seconds, world size, eval metrics).

What a step draws does not depend on the number of processes: the global batch of ``batch_size``
samples (its indices: consecutive slices of one seeded permutation of the data per epoch, so an
epoch visits every sample once), its timesteps, noise and label dropout all come from a generator
seeded by (seed, step); rank r of W trains on rows [r B/W, (r+1) B/W) of it and DDP averages the
gradients. One process and W processes therefore follow the same trajectory up to the rounding
of the gradient reduction, and a run resumes exactly, on the same or another world size.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models import save_checkpoint
from ..sampling import GaussianDiffusion
from .data import as_tensors

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
LOG_FILE = "log.jsonl"
STAGES = ("all", "skip")


@dataclass
class TrainResult:
    model: torch.nn.Module  # the trained (online) model
    ema: torch.nn.Module  # the EMA copy, eval mode
    step: int
    losses: list[float] = field(default_factory=list)  # per step run in this call (global batch means)
    log: list[dict] = field(default_factory=list)  # logged rows of this call
    seconds: float = 0.0
    resumed_from: int | None = None  # the step a resumed run started at


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, only_trainable: bool = False) -> None:
    """ema = decay * ema + (1 - decay) * model; with ``only_trainable``, parameters that do not
    require grad are left untouched (frozen weights stay bit-identical in the EMA)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        if not only_trainable or p.requires_grad:
            e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """With ``warmup``, min(decay, (1 + step) / (10 + step)): short runs are not dominated by init."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


def _atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_state(
    path: str, model, ema, optimizer, step: int, extra: dict | None = None, optimizer_state: dict | None = None
) -> None:
    _atomic_save(
        {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
            "step": step,
            "config": dict(getattr(model, "config", {}) or {}),
            "train": dict(extra or {}),
        },
        path,
    )


def load_state(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def set_stage(model: torch.nn.Module, stage: str) -> list[str]:
    """Freeze for a fine-tuning stage: ``"skip"`` trains only the long-skip branches
    (``skip_norms.*``, ``skip_linears.*``), ``"all"`` every parameter that is not a fixed buffer-like
    parameter (the sin-cos position embeddings stay frozen, as in DiT). Returns the trainable
    names; ValueError for an unknown stage or a model without skip branches in stage "skip"."""
    from .convert import is_skip_parameter

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    names = []
    for name, p in model.named_parameters():
        fixed = name in ("pos_embed", "temp_embed")
        p.requires_grad_(not fixed and (stage == "all" or is_skip_parameter(name)))
        if p.requires_grad:
            names.append(name)
    if not names:
        raise ValueError(f"stage {stage!r}: {type(model).__name__} has no skip branches to train (convert it first)")
    return names


def init_from(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module | None:
    """Load the weights of ``path`` into ``model`` for a next stage: a ``train_state.pt`` (or a run
    folder holding one): its online weights, and returns an EMA model with its EMA weights; a model
    file (``.safetensors`` / ``.pt``, e.g. ``skipdit convert``'s output or a stage's
    ``model.safetensors``): its weights, returns None (the EMA starts from them)."""
    from ..models.checkpoint import check_state_dict, read_checkpoint

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, STATE_FILE)
    if os.path.basename(path) == STATE_FILE:
        state = load_state(path)
        check_state_dict(model, state["model"])
        model.load_state_dict(state["model"])
        ema = copy.deepcopy(model)
        ema.load_state_dict(state["ema"])
        return ema.requires_grad_(False)
    state_dict, config = read_checkpoint(path)
    check_state_dict(model, state_dict, config)
    model.load_state_dict(state_dict)
    return None


def model_for_init(path: str | os.PathLike) -> torch.nn.Module:
    """A model of the architecture ``init_from(model, path)`` loads (built from the checkpoint's
    shapes and carried config; its weights are loaded by ``init_from``, e.g. through ``train``)."""
    from ..models import load_checkpoint
    from ..models.checkpoint import infer_config

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, STATE_FILE)
    if os.path.basename(path) == STATE_FILE:
        state = load_state(path)
        cls, config = infer_config(state["model"], state.get("config"))
        return cls(**config)
    return load_checkpoint(path)


# -- the data order and the per-step draws (independent of the world size) --------------------------


def epoch_permutation(num: int, epoch: int, seed: int) -> torch.Tensor:
    return torch.randperm(num, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def global_batch_indices(num: int, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """The dataset indices of step ``step``'s global batch: positions [step B, (step+1) B) of the
    stream of per-epoch permutations (every epoch visits each sample exactly once)."""
    start = step * batch_size
    out, filled = [], 0
    while filled < batch_size:
        epoch, offset = divmod(start + filled, num)
        take = min(batch_size - filled, num - offset)
        out.append(epoch_permutation(num, epoch, seed)[offset : offset + take])
        filled += take
    return torch.cat(out)


class RankShard:
    """Which rows of a global batch this rank trains on: [rank B/W, (rank+1) B/W). ValueError when
    the global batch does not split evenly into ``world_size`` ranks times ``accumulation`` micro-batches."""

    def __init__(self, batch_size: int, world_size: int = 1, rank: int = 0, accumulation: int = 1):
        if batch_size % (world_size * accumulation):
            raise ValueError(
                f"the global batch {batch_size} must be divisible by world size {world_size} x "
                f"gradient accumulation {accumulation}"
            )
        self.local = batch_size // world_size
        self.start = rank * self.local
        self.micro = self.local // accumulation

    def micro_batches(self):
        for k in range(self.start, self.start + self.local, self.micro):
            yield slice(k, k + self.micro)


def distributed_context() -> tuple[int, int]:
    """(world size, rank): torch.distributed's when initialised, else torchrun's environment, else (1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise the default process group under torchrun (gloo on CPU, NCCL with CUDA) when
    WORLD_SIZE > 1 and none exists; returns (world size, rank)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    return distributed_context()


def _fully_shard(model: torch.nn.Module) -> None:
    """FSDP2: shard every transformer block, then the rest of the model."""
    from torch.distributed.fsdp import fully_shard

    from ..models.layers import DiTBlock

    for block in [m for m in model.modules() if isinstance(m, DiTBlock)]:
        fully_shard(block)
    fully_shard(model)


_FULL = dict(full_state_dict=True, cpu_offload=True)


def _gather_sharded(model, ema, optimizer, names: list[str]):
    """Unsharded copies of an FSDP model and its EMA and the optimizer state in the plain
    ``optimizer.state_dict()`` layout (parameters by index), so a checkpoint does not depend on
    how it was trained. A collective: every rank calls it; the tensors are complete on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(**_FULL)
    copies = []
    for m in (model, ema):
        full = get_model_state_dict(m, options=options)
        plain = type(m)(**m.config)
        if full:
            plain.load_state_dict(full)
        copies.append(plain)
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    index = {n: i for i, n in enumerate(names)}
    plain_optim = {
        "state": {index[n]: v for n, v in optim.get("state", {}).items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optim.get("param_groups", [])],
    }
    return copies[0], copies[1], plain_optim


def _load_sharded_optimizer(model, optimizer, saved: dict, names: list[str]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    full = {
        "state": {names[i]: v for i, v in saved["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(
        model, optimizer, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    )


def _checkpointed_blocks(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Activation checkpointing of every transformer block (``forward_modulated``: DiT's and Latte's
    blocks), undone on exit."""
    from torch.utils.checkpoint import checkpoint

    from ..models.layers import DiTBlock

    @contextlib.contextmanager
    def ctx():
        blocks = [m for m in model.modules() if isinstance(m, DiTBlock)]
        for block in blocks:
            inner = block.forward_modulated
            block.forward_modulated = lambda *a, _f=inner, **k: checkpoint(_f, *a, use_reentrant=False, **k)
        try:
            yield
        finally:
            for block in blocks:
                del block.forward_modulated

    return ctx()


@contextlib.contextmanager
def _loop_label_dropout(model: torch.nn.Module):
    """The loop draws label dropout itself (from the step's generator, world-size independent); the
    embedder's own draw is turned off meanwhile."""
    embedder = getattr(model, "y_embedder", None)
    if embedder is None or not embedder.has_null_class:
        yield None
        return
    prob = embedder.dropout_prob
    embedder.dropout_prob = 0.0
    try:
        yield prob
    finally:
        embedder.dropout_prob = prob


def _channel_first(model):
    """The loss works on (N, C, ...); a video model (channel_dim 2) takes (N, F, C, H, W)."""
    if getattr(model, "channel_dim", 1) == 1:
        return model
    return lambda x, t, **kw: model(x.transpose(1, 2), t, **kw).transpose(1, 2)


def _check_data(model, x_all: torch.Tensor, y_all: torch.Tensor | None) -> None:
    expect = tuple(getattr(model, "latent_shape", x_all.shape[1:]))
    if tuple(x_all.shape[1:]) != expect:
        raise ValueError(f"data samples {tuple(x_all.shape[1:])} do not fit the model's latent shape {expect}")
    classes = getattr(model, "num_classes", None)
    if y_all is not None and classes is not None and int(y_all.max()) >= classes:
        raise ValueError(f"labels up to {int(y_all.max())} but the model has {classes} classes")


def train(
    model: torch.nn.Module,
    data="digits",
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    ema_decay: float = 0.999,
    ema_warmup: bool = True,
    grad_clip: float | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    save_every: int | None = None,
    log_every: int = 50,
    resume: bool = True,
    eval_fn: Callable[[torch.nn.Module, int], dict] | None = None,
    eval_every: int = 0,
    progress: bool = True,
    threads: int | None = 2,
    image_size: int | None = None,
    stage: str = "all",
    init_from_path: str | os.PathLike | None = None,
    accumulation: int = 1,
    activation_checkpointing: bool = False,
    fsdp: bool = False,
    on_resume: Callable[[int, str], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place for a total of ``steps`` optimizer steps (counting resumed ones).

    ``data``: "digits" (bundled, 16x16 in [-1,1]), an image folder ``root/<class>/<img>`` (for a
    video model a folder of clips ``root/<class>/<clip>/<frame>``), a folder of pre-encoded
    latents (``data.encode_latents``), an ``(samples, labels)`` pair or a ``TensorDataset``:
    samples (N, *model.latent_shape) (images (N, C, H, W) in [-1, 1] or latents; videos
    (N, F, C, H, W) for a LatteSkip), labels (N,) or None for an unconditional model; timesteps uniform in [0, 1000). ``batch_size`` is the global batch
    of one optimizer step (all ranks, all ``accumulation`` micro-batches together).
    ``eval_fn(ema_model, step) -> dict`` runs every ``eval_every`` steps (and at the end, rank 0)
    and its numbers go into the log. With ``out_dir``, checkpoints are written every
    ``save_every`` steps and at the end, and an existing ``train_state.pt`` there is resumed when
    ``resume`` (its stage must be ``stage``).

    Fine-tuning: ``init_from_path`` (see ``init_from``) loads the starting weights unless a run is
    resumed; ``stage`` "skip" trains only the skip branches: the other parameters get no gradient
    and no optimizer state, and stay bit-identical (online and EMA); "all" trains everything.

    Scale: under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP (or, with ``fsdp``,
    sharded with ``fully_shard``); rank 0 writes the files; a rank that raises exits with its error
    and torchrun stops the other ranks (they are not left waiting in a collective);
    ``accumulation`` micro-batches per step (bf16 autocast is not offered: the fused ops take one dtype per call and refuse the mixed
    dtypes autocast produces; train a bf16 model by casting it, or fp32);
    ``activation_checkpointing``: recompute every block's activations in the backward.
    ``on_resume(step, path)`` is called (rank 0) when a saved run is resumed. With FSDP the
    returned ``model`` and ``ema`` stay sharded (the checkpoint files hold the full tensors).
    """
    import torch.distributed as dist

    if threads:
        torch.set_num_threads(threads)
    if steps < 0 or batch_size < 1 or accumulation < 1:
        raise ValueError(
            f"steps must be >= 0, batch_size and accumulation >= 1, got {steps}, {batch_size}, {accumulation}"
        )
    world, rank = init_distributed()
    shard = RankShard(batch_size, world, rank, accumulation)
    device = next(model.parameters()).device
    if isinstance(data, (str, os.PathLike, torch.utils.data.TensorDataset)):
        size = image_size or getattr(model, "input_size", None)
        x_all, y_all = as_tensors(
            data, size=size, channels=getattr(model, "in_channels", 1), frames=getattr(model, "num_frames", None)
        )
    else:
        x_all, y_all = data
        x_all = torch.as_tensor(x_all).float()
        y_all = None if y_all is None else torch.as_tensor(y_all).long()
    _check_data(model, x_all, y_all)
    if getattr(model, "channel_dim", 1) == 2:  # videos (N, F, C, H, W): the loss splits channels on dim 1
        x_all = x_all.transpose(1, 2)

    diffusion = GaussianDiffusion.create("", learn_sigma=getattr(model, "learn_sigma", True))
    step, ema = 0, None
    out = os.fspath(out_dir) if out_dir is not None else None
    state = None
    state_path = os.path.join(out, STATE_FILE) if out is not None else None
    if out is not None:
        if rank == 0:
            os.makedirs(out, exist_ok=True)
        if resume and os.path.exists(state_path):
            state = load_state(state_path)
            saved_stage = state.get("train", {}).get("stage", "all")
            if saved_stage != stage:
                raise ValueError(
                    f"{state_path} is a stage {saved_stage!r} run; resume it with stage {saved_stage!r} "
                    f"or start stage {stage!r} in another folder with init_from_path={out!r}"
                )
        elif rank == 0 and not resume and os.path.exists(os.path.join(out, LOG_FILE)):
            os.remove(os.path.join(out, LOG_FILE))
    if state is None and init_from_path is not None:
        ema = init_from(model, init_from_path)
    trainable = set(set_stage(model, stage))
    if ema is None:
        ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        step = int(state["step"])
        if on_resume is not None and rank == 0:
            on_resume(step, state_path)

    net, sharded = model, fsdp and world > 1
    if sharded:  # the EMA is sharded like the model, so its update stays local to each shard
        for m in (model, ema):
            _fully_shard(m)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    names = [n for n, _ in model.named_parameters() if n in trainable]
    params = [p for n, p in model.named_parameters() if n in trainable]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if state is not None:
        if sharded:
            _load_sharded_optimizer(model, optimizer, state["optimizer"], names)
        else:
            optimizer.load_state_dict(state["optimizer"])
    loss_fn = _channel_first(net)
    hparams = dict(
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        ema_decay=ema_decay,
        ema_warmup=ema_warmup,
        seed=seed,
        total_steps=steps,
        stage=stage,
        accumulation=accumulation,
    )

    def checkpoint() -> None:
        if out is None:
            return
        full_model, full_ema, optim_state = model, ema, None
        if sharded:  # every rank takes part in gathering the full tensors
            full_model, full_ema, optim_state = _gather_sharded(model, ema, optimizer, names)
        if rank == 0:
            save_state(state_path, full_model, full_ema, optimizer, step, hparams, optim_state)
            tmp = os.path.join(out, MODEL_FILE + ".tmp.safetensors")
            save_checkpoint(full_ema, tmp, metadata={"step": str(step), "ema_decay": str(ema_decay), "stage": stage})
            os.replace(tmp, os.path.join(out, MODEL_FILE))
        if world > 1:
            dist.barrier()

    def write_log(row: dict) -> None:
        result.log.append(row)
        if out is not None and rank == 0:
            with open(os.path.join(out, LOG_FILE), "a") as f:
                f.write(json.dumps(row) + "\n")

    result = TrainResult(model=model, ema=ema, step=step, resumed_from=step if state is not None else None)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=min(step, steps), desc=f"train ({stage})", unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    window: list[torch.Tensor] = []
    checkpointing = _checkpointed_blocks(model) if activation_checkpointing else contextlib.nullcontext()
    model.train()
    try:
        with _loop_label_dropout(model) as drop_prob, checkpointing:
            while step < steps:
                g = torch.Generator().manual_seed(seed * 1_000_003 + step + 1)
                idx = global_batch_indices(x_all.shape[0], step, batch_size, seed)
                t = torch.randint(0, diffusion.num_steps, (batch_size,), generator=g)
                noise = torch.randn((batch_size, *x_all.shape[1:]), generator=g)
                y = None if y_all is None else y_all[idx].clone()
                if drop_prob and y is not None:
                    y[torch.rand(batch_size, generator=g) < drop_prob] = model.num_classes
                totals = torch.zeros(3, dtype=torch.float64, device=device)
                optimizer.zero_grad(set_to_none=True)
                micro = list(shard.micro_batches())
                for k, rows in enumerate(micro):
                    sync = k == len(micro) - 1 or world == 1 or fsdp
                    with contextlib.nullcontext() if sync else net.no_sync():
                        kwargs = {} if y is None else {"y": y[rows].to(device)}
                        terms = diffusion.training_losses(
                            loss_fn,
                            x_all[idx[rows]].to(device),
                            t[rows].to(device),
                            model_kwargs=kwargs,
                            noise=noise[rows].to(device),
                        )
                        loss = terms["loss"].float().sum() / shard.local
                    loss.backward()
                    totals += torch.stack([terms[n].detach().double().sum() for n in ("loss", "mse", "vb")])
                if world > 1:
                    dist.all_reduce(totals)
                totals /= batch_size
                if not torch.isfinite(totals[0]):
                    raise FloatingPointError(f"non-finite loss at step {step}: {totals[0].item()}")
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                update_ema(ema, model, ema_decay_at(step, ema_decay, ema_warmup), only_trainable=stage == "skip")
                step += 1
                value = totals[0].item()
                result.losses.append(value)
                window.append(totals.float())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{torch.stack(window)[:, 0].mean().item():.4f}"
                    )  # the window the log will hold
                evaluate = eval_fn is not None and eval_every and (step % eval_every == 0 or step == steps)
                if step % log_every == 0 or step == steps or evaluate:
                    mean = torch.stack(window).mean(0).tolist()
                    row = dict(
                        step=step,
                        loss=mean[0],
                        mse=mean[1],
                        vb=mean[2],
                        steps_averaged=len(window),
                        seconds=round(time.perf_counter() - started, 2),
                        world_size=world,
                    )
                    window = []
                    if evaluate and (rank == 0 or sharded):  # a sharded EMA samples on every rank
                        ema.eval()
                        row.update(eval_fn(ema, step))
                    write_log(row)
                if save_every and step % save_every == 0:
                    checkpoint()
    finally:
        if bar is not None:
            bar.close()
        model.eval()
        ema.eval()
    checkpoint()
    result.step = step
    result.seconds = time.perf_counter() - started
    return result


def build_model(kind: str = "skipdit", preset: str | None = None, **config) -> torch.nn.Module:
    """A fresh DiT / SkipDiT: a preset (e.g. "DiT-S/2") with overrides, or custom sizes."""
    from ..models import DiT, SkipDiT

    cls = {"skipdit": SkipDiT, "dit": DiT}[kind.lower()]
    return cls.from_preset(preset, **config) if preset else cls(**config)


def train_classifier(
    model: torch.nn.Module,
    train_data,
    test_data,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    shift: int = 1,
    progress: bool = False,
) -> dict:
    """Train a digit classifier (cross-entropy, AdamW, random +-``shift`` pixel translations)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    (x, y), (xt, yt) = train_data, test_data
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * math.ceil(len(x) / batch_size))
    history = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            b = perm[i : i + batch_size]
            xb = x[b]
            if shift:
                dx, dy = torch.randint(-shift, shift + 1, (2,), generator=g).tolist()
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        history.append(dict(epoch=epoch + 1, loss=loss.item(), test_accuracy=acc))
        if progress:
            print(f"epoch {epoch + 1}: loss {loss.item():.4f} test acc {acc:.4f}", flush=True)
    return dict(test_accuracy=history[-1]["test_accuracy"], history=history)
