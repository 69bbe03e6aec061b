"""Train a DiT or SkipDiT with DiT's recipe: AdamW, EMA, eps-MSE + variational-bound loss, class
dropout for classifier-free guidance; safetensors checkpoints, exact resume, seeded.

Files written to ``out_dir``:

- ``model.safetensors``: the EMA weights with the model config (load with ``load_checkpoint``);
- ``train_state.pt``: model, EMA, optimizer, step and RNG states; tensors and plain containers only,
  so ``torch.load(path, weights_only=True)`` reads it;
- ``log.jsonl``: one JSON line per logged step (loss, mse, vb, seconds, eval metrics).

Resuming from ``train_state.pt`` continues the exact same run: the batch indices, timesteps, noise
and class-dropout draws come from saved RNG states, so the losses after a resume equal those of an
uninterrupted run (same device and thread count).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .data import as_tensors
from .models import save_checkpoint
from .sampling import GaussianDiffusion

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
LOG_FILE = "log.jsonl"


@dataclass
class TrainResult:
    model: torch.nn.Module  # the trained (online) model
    ema: torch.nn.Module  # the EMA copy, eval mode
    step: int
    losses: list[float] = field(default_factory=list)  # per step run in this call
    log: list[dict] = field(default_factory=list)  # logged rows of this call
    seconds: float = 0.0


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """With ``warmup``, min(decay, (1 + step) / (10 + step)): short runs are not dominated by init."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


def _atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_state(path: str, model, ema, optimizer, step: int, generator: torch.Generator, extra: dict | None = None) -> None:
    _atomic_save(
        {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "rng": {"torch": torch.get_rng_state(), "data": generator.get_state()},
            "config": dict(getattr(model, "config", {}) or {}),
            "train": dict(extra or {}),
        },
        path,
    )


def load_state(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


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
) -> TrainResult:
    """Train ``model`` in place for a total of ``steps`` optimizer steps (counting resumed ones).

    ``data``: "digits" (bundled, 16x16 in [-1,1]), an image folder ``root/<class>/<img>``, an
    ``(images, labels)`` pair or a ``TensorDataset``; images in [-1, 1], (N, C, H, W) matching the
    model. Batches are drawn uniformly with replacement; timesteps uniformly from [0, 1000).
    ``eval_fn(ema_model, step) -> dict`` runs every ``eval_every`` steps (and at the end) and its
    numbers go into the log. With ``out_dir``, checkpoints are written every ``save_every`` steps
    and at the end, and an existing ``train_state.pt`` there is resumed when ``resume``.
    """
    if threads:
        torch.set_num_threads(threads)
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    device = next(model.parameters()).device
    x_all, y_all = as_tensors(data, size=image_size or getattr(model, "input_size", None),
                              channels=getattr(model, "in_channels", 1))
    expect = (getattr(model, "in_channels", x_all.shape[1]), getattr(model, "input_size", x_all.shape[2]))
    if x_all.shape[1] != expect[0] or x_all.shape[2] != expect[1] or x_all.shape[3] != expect[1]:
        raise ValueError(f"data images {tuple(x_all.shape[1:])} do not fit the model ({expect[0]}, {expect[1]}, {expect[1]})")
    if int(y_all.max()) >= getattr(model, "num_classes", int(y_all.max()) + 1):
        raise ValueError(f"labels up to {int(y_all.max())} but the model has {model.num_classes} classes")
    x_all, y_all = x_all.to(device), y_all.to(device)

    diffusion = GaussianDiffusion.create("", learn_sigma=getattr(model, "learn_sigma", True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = copy.deepcopy(model).requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    step = 0

    out = os.fspath(out_dir) if out_dir is not None else None
    if out is not None:
        os.makedirs(out, exist_ok=True)
        state_path = os.path.join(out, STATE_FILE)
        if resume and os.path.exists(state_path):
            state = load_state(state_path)
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            step = int(state["step"])
            torch.set_rng_state(state["rng"]["torch"])
            generator.set_state(state["rng"]["data"])
        elif not resume and os.path.exists(os.path.join(out, LOG_FILE)):
            os.remove(os.path.join(out, LOG_FILE))
    hparams = dict(batch_size=batch_size, lr=lr, weight_decay=weight_decay, ema_decay=ema_decay,
                   ema_warmup=ema_warmup, seed=seed, total_steps=steps)

    def checkpoint() -> None:
        if out is None:
            return
        save_state(os.path.join(out, STATE_FILE), model, ema, optimizer, step, generator, hparams)
        tmp = os.path.join(out, MODEL_FILE + ".tmp.safetensors")
        save_checkpoint(ema, tmp, metadata={"step": str(step), "ema_decay": str(ema_decay)})
        os.replace(tmp, os.path.join(out, MODEL_FILE))

    def write_log(row: dict) -> None:
        result.log.append(row)
        if out is not None:
            with open(os.path.join(out, LOG_FILE), "a") as f:
                f.write(json.dumps(row) + "\n")

    result = TrainResult(model=model, ema=ema, step=step)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=min(step, steps), desc="train", unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    window: list[torch.Tensor] = []
    model.train()
    try:
        while step < steps:
            idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=generator).to(device)
            t = torch.randint(0, diffusion.num_steps, (batch_size,), generator=generator).to(device)
            noise = torch.randn((batch_size, *x_all.shape[1:]), generator=generator).to(device)
            terms = diffusion.training_losses(model, x_all[idx], t, model_kwargs=dict(y=y_all[idx]), noise=noise)
            loss = terms["loss"].mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}: {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            update_ema(ema, model, ema_decay_at(step, ema_decay, ema_warmup))
            step += 1
            value = loss.item()
            result.losses.append(value)
            window.append(torch.stack([terms["loss"].mean(), terms["mse"].mean(), terms["vb"].mean()]).detach())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            evaluate = eval_fn is not None and eval_every and (step % eval_every == 0 or step == steps)
            if step % log_every == 0 or step == steps or evaluate:
                mean = torch.stack(window).mean(0).tolist()
                window = []
                row = dict(step=step, loss=mean[0], mse=mean[1], vb=mean[2],
                           seconds=round(time.perf_counter() - started, 2))
                if evaluate:
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
    from .models import DiT, SkipDiT

    cls = {"skipdit": SkipDiT, "dit": DiT}[kind.lower()]
    return cls.from_preset(preset, **config) if preset else cls(**config)


def train_classifier(model: torch.nn.Module, train_data, test_data, *, epochs: int = 30, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0, shift: int = 1, progress: bool = False) -> dict:
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
            b = perm[i:i + batch_size]
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
