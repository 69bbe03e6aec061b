"""Make a pretrained DiT or Latte a Skip-DiT: add the long skips, carry every backbone weight over.

Skip-DiT ("Accelerating Vision Diffusion Transformers with Skip Branches", arXiv 2411.17616) converts
standard DiTs by adding, for a stack of L units, L/2 skip branches: unit i >= L/2 first replaces its
input x by ``skip_linears[j](LayerNorm(cat([x, skip])))``, j = i - L/2, where ``skip`` is the output
of unit L-1-i. The backbone (every block, embedder and the final layer) is the pretrained model's,
unchanged; only ``skip_norms`` and ``skip_linears`` are new, and they are then fine-tuned (stage
``skip`` of ``skipdit_kernels.training.loop``, then stage ``all``).

Conversions (each returns the new model and a ``Conversion`` record of carried and new tensors):

- ``convert_dit(DiT) -> SkipDiT`` (official DiT keys: a checkpoint through ``load_checkpoint``);
- ``convert_latte(state_dict) -> LatteSkip`` from an official class-to-video ``Latte`` state_dict;
- ``convert_diffusers_dit(DiTTransformer2DModel) -> SkipDiT`` (through ``dit_from_diffusers``);
- ``convert_diffusers_latte(LatteTransformer3DModel) -> LatteT2VSkip``;
- ``convert_checkpoint(path, out)``: any of the above from a file or a diffusers folder.

Initialisation of the new branches (``init``):

- ``"official"``: as the official Skip-DiT code leaves them: LayerNorm weight 1, bias 0; the
  projection with torch's default ``nn.Linear`` init (kaiming-uniform, ``DiT_skip`` and
  ``LatteT2V_skip`` build their skip modules after ``initialize_weights``) or xavier-uniform with a
  zero bias (class-to-video ``Latte_skip``, which builds them before). The converted model's output
  at step 0 is far from the original's: every deep unit starts from a random mix of x and skip.
- ``"identity"`` (the default): the branch starts as close to "no skip" as its form allows: the
  LayerNorm weight 1, bias 0; the projection's skip half zero and its x half diagonal,
  ``W[c, c] = a_c``, with bias ``b_c``, where (a_c, b_c) is the least-squares line of the
  original input x_c on its normalised value ``LN(cat(x, s))_c`` over the original model's own
  activations on calibration inputs (every unit run without fusion: one forward pass, no
  gradient). The fused input is then x up to the per-token normalisation, which no linear map
  after the LayerNorm can undo (the token's standard deviation over cat(x, s) varies); on the
  bundled digit DiT this leaves a 0.17-0.18 relative output change at step 0, against 1.4 for
  ``"official"`` (bench/results/convert-*.md).

Layering: this module uses the models and (for the diffusers conversions) the diffusers integration;
nothing here touches caching.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import DiT, LatteSkip, SkipDiT

INITS = ("identity", "official")
SKIP_PREFIXES = ("skip_norms.", "skip_linears.")


@dataclass
class Conversion:
    """What a conversion did: ``carried`` backbone keys (copied bit-exactly), ``new`` keys (the skip
    branches, initialised by ``init``), ``ignored`` source keys the skip model has no place for
    (none for the supported sources), and, when calibration inputs were given, the relative error
    ||converted - original|| / ||original|| of the model output at step 0 on them."""

    source: str
    target: str
    init: str
    carried: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    relative_error: float | None = None

    def summary(self) -> str:
        error = "" if self.relative_error is None else f"; output change at step 0: {self.relative_error:.3g} relative"
        return (
            f"{self.source} -> {self.target}: {len(self.carried)} tensors carried exactly, {len(self.new)} new "
            f"(skip branches, init {self.init!r}){error}"
        )


def is_skip_parameter(name: str) -> bool:
    """True for the parameters of the long-skip branches (``skip_norms.*``, ``skip_linears.*``)."""
    return name.startswith(SKIP_PREFIXES)


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


def _carry(target: nn.Module, source_state: dict[str, torch.Tensor], source: str, init: str) -> Conversion:
    """Copy every source tensor into ``target`` (bit-exact, in the target's dtype when the source's
    is the same); ValueError when a target key outside the skip branches is missing or mis-shaped."""
    expected = target.state_dict()
    new = sorted(k for k in expected if k not in source_state)
    wrong = [k for k in new if not is_skip_parameter(k)]
    ignored = sorted(k for k in source_state if k not in expected)
    misshaped = [k for k in source_state if k in expected and source_state[k].shape != expected[k].shape]
    if wrong or misshaped or ignored:
        parts = [
            f"missing {wrong[:5]}" if wrong else "",
            f"mis-shaped {misshaped[:5]}" if misshaped else "",
            f"unexpected {ignored[:5]}" if ignored else "",
        ]
        raise ValueError(f"cannot convert {source} to {type(target).__name__}: " + "; ".join(p for p in parts if p))
    carried = sorted(source_state)
    target.load_state_dict({**expected, **source_state}, strict=True)
    return Conversion(source=source, target=type(target).__name__, init=init, carried=carried, new=new)


# -- initialisation of the skip branches ------------------------------------------------------------


def _official_init(model: nn.Module, xavier: bool) -> None:
    for norm in model.skip_norms:
        norm.reset_parameters()
    for proj in model.skip_linears:
        if xavier:
            nn.init.xavier_uniform_(proj.linear.weight)
            nn.init.zeros_(proj.linear.bias)
        else:
            proj.linear.reset_parameters()


@torch.no_grad()
def unit_activations(model, x: torch.Tensor, t: torch.Tensor, cond: dict) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run a skip stack (``cache.protocol``'s embed / run_block / finish) *without* its long skips,
    i.e. as the backbone it was converted from: returns the input of every unit (a list of L
    tensors, each (rows, tokens, hidden)) and the model output."""
    h, ctx = model.embed(x, t, cond)
    inputs = []
    for i in range(model.num_units):
        inputs.append(h)
        h = model.run_block(i, h, ctx, None)
    inputs.append(h)  # the input of the final layer (the output of the last unit)
    return inputs, model.finish(h, ctx)


@torch.no_grad()
def skip_stack_output(model, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """The model output through its long skips (the skip model's forward, via the stack contract)."""
    h, ctx = model.embed(x, t, cond)
    half, skips = model.num_units // 2, []
    for i in range(model.num_units):
        h = model.run_block(i, h, ctx, skips.pop() if i >= half else None)
        if i < half:
            skips.append(h)
    return model.finish(h, ctx)


@torch.no_grad()
def _identity_init(model, calibration: tuple) -> None:
    x, t, cond = calibration
    inputs, _ = unit_activations(model, x, t, cond)
    half, units = model.num_units // 2, model.num_units
    for j in range(half):
        i = half + j
        fused_in = inputs[i].double().flatten(0, -2)  # x: the input of unit i
        skip = inputs[units - i].double().flatten(0, -2)  # the output of unit L-1-i = the input of unit L-i
        norm, linear = model.skip_norms[j], model.skip_linears[j].linear
        norm.reset_parameters()
        z = F.layer_norm(torch.cat([fused_in, skip], -1), norm.normalized_shape, eps=norm.eps)
        hidden = fused_in.shape[-1]
        zx = z[:, :hidden]  # the x half after the normalisation: (x - mean) / std per token
        # per channel c, the least-squares line x_c ~= a_c zx_c + b_c
        zx_c, x_c = zx - zx.mean(0), fused_in - fused_in.mean(0)
        scale = (zx_c * x_c).sum(0) / (zx_c * zx_c).sum(0).clamp_min(1e-12)
        weight = torch.zeros(hidden, 2 * hidden, dtype=torch.float64)
        weight[:, :hidden] = torch.diag(scale)
        bias = fused_in.mean(0) - scale * zx.mean(0)
        linear.weight.copy_(weight.to(linear.weight.dtype))
        linear.bias.copy_(bias.to(linear.bias.dtype))


def initialize_skips(
    model, init: str = "identity", calibration: tuple | None = None, *, official_xavier: bool = False
) -> float | None:
    """Initialise the skip branches of a converted skip stack in place (see the module docstring).

    ``calibration``: ``(x_t, t, cond)`` inputs of the model's forward (``cond`` as its ``condition``
    returns), e.g. from ``calibration_inputs``; required for ``"identity"``. Returns the
    relative output change at step 0 on the calibration inputs (None without them)."""
    _check_init(init)
    if init == "official":
        _official_init(model, official_xavier)
    else:
        if calibration is None:
            raise ValueError(
                "init='identity' fits the skip projections on calibration inputs: pass calibration=(x_t, t, cond)"
            )
        _identity_init(model, calibration)
    return None if calibration is None else step0_relative_error(model, calibration)


@torch.no_grad()
def step0_relative_error(model, inputs: tuple) -> float:
    """||skip model(x) - backbone(x)|| / ||backbone(x)|| on ``inputs`` = (x_t, t, cond), where the
    backbone is the same model run without its long skips (the original model it was converted from)."""
    x, t, cond = inputs
    _, original = unit_activations(model, x, t, cond)
    converted = skip_stack_output(model, x, t, cond)
    return float((converted.double() - original.double()).norm() / original.double().norm().clamp_min(1e-30))


def calibration_inputs(
    model, x0: torch.Tensor | None = None, cond=None, *, num: int = 32, seed: int = 0, num_timesteps: int = 1000
) -> tuple:
    """Noisy inputs for ``initialize_skips``: ``x0`` (N, *latent_shape) clean latents (default:
    standard normal, the distribution of x_T), noised to uniform random timesteps in
    [0, num_timesteps) with DiT's linear schedule; ``cond``: what ``model.condition`` takes (default:
    random class labels for a class-conditional model; a text model needs its ``cond``)."""
    from ..sampling import GaussianDiffusion

    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    if x0 is None:
        x0 = torch.randn((num, *model.latent_shape), generator=g)
    num = x0.shape[0]
    if cond is None:
        classes = getattr(model, "num_classes", None)
        if getattr(model, "extras", 2) == 2 and classes:
            cond = torch.randint(0, classes, (num,), generator=g).tolist()
        elif hasattr(model, "extras"):
            cond = num
        else:
            raise ValueError(f"{type(model).__name__} needs calibration conditioning (cond=...)")
    t = torch.randint(0, num_timesteps, (num,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    diffusion = GaussianDiffusion.create("", learn_sigma=True)
    x_t = diffusion.q_sample(x0.float(), t, noise)
    cond = {k: v.to(device) for k, v in model.condition(cond).items()}
    return x_t.to(device), t.to(device).float(), cond


# -- conversions ------------------------------------------------------------------------------------


def _finish(model, conversion: Conversion, init: str, calibration, calibrate: Callable, official_xavier: bool):
    if isinstance(calibration, torch.Tensor):  # clean latents
        calibration = calibration_inputs(model, calibration)
    elif calibration is None:  # also for "official": the step-0 change is reported
        calibration = calibrate(model)
    conversion.relative_error = initialize_skips(model, init, calibration, official_xavier=official_xavier)
    return model.eval(), conversion


def convert_dit(
    dit: DiT, init: str = "identity", calibration: tuple | torch.Tensor | None = None
) -> tuple[SkipDiT, Conversion]:
    """A ``SkipDiT`` with every tensor of ``dit`` (same config, dtype and device) and new skip branches.
    ``calibration``: (x_t, t, cond) inputs, or clean latents (N, C, H, W) to noise
    (``calibration_inputs``); default: ``calibration_inputs(model)`` (standard normal latents). It
    fits the identity init and measures the step-0 output change (``Conversion.relative_error``)."""
    _check_init(init)
    if isinstance(dit, SkipDiT):
        raise ValueError("the model already has long skips (a SkipDiT); nothing to convert")
    if type(dit) is not DiT:
        raise TypeError(f"convert_dit converts a skipdit_kernels DiT, got {type(dit).__name__}")
    param = next(dit.parameters())
    model = SkipDiT(**dit.config).to(device=param.device, dtype=param.dtype)
    conversion = _carry(model, dit.state_dict(), "DiT", init)
    return _finish(model, conversion, init, calibration, calibration_inputs, official_xavier=False)


def convert_latte(
    state_dict: dict[str, torch.Tensor],
    init: str = "identity",
    calibration: tuple | torch.Tensor | None = None,
    **config,
) -> tuple[LatteSkip, Conversion]:
    """A ``LatteSkip`` from an official class-to-video ``Latte`` state_dict (the keys of Latte's
    models/latte.py, without skip branches). ``config``: constructor arguments the shapes cannot
    settle (e.g. ``num_heads`` for a size that is not official)."""
    from ..models.checkpoint import infer_config

    _check_init(init)
    if "temp_embed" not in state_dict:
        raise ValueError("not a Latte state_dict: it has no temp_embed")
    if any(is_skip_parameter(k) for k in state_dict):
        raise ValueError("the Latte state_dict already has long skips (a Latte-skip); nothing to convert")
    # infer_config reads a Latte-skip's shapes; the skip key it looks for carries no shape.
    _, inferred = infer_config({**state_dict, "skip_linears.0.linear.weight": torch.empty(0)}, config)
    dtype = next(iter(state_dict.values())).dtype
    model = LatteSkip(**inferred).to(dtype)
    conversion = _carry(model, dict(state_dict), "Latte", init)
    return _finish(model, conversion, init, calibration, calibration_inputs, official_xavier=True)


def convert_diffusers_dit(
    transformer, init: str = "identity", calibration: tuple | torch.Tensor | None = None
) -> tuple[SkipDiT, Conversion]:
    """A ``SkipDiT`` from a diffusers ``DiTTransformer2DModel``, through ``dit_from_diffusers`` (see
    its notes on diffusers' timestep frequencies); the carried keys are the DiT's."""
    from ..integrations.diffusers import dit_from_diffusers

    model, conversion = convert_dit(dit_from_diffusers(transformer), init, calibration)
    conversion.source = "DiTTransformer2DModel"
    return model, conversion


def convert_diffusers_latte(transformer, init: str = "identity", calibration: tuple | torch.Tensor | None = None):
    """A ``LatteT2VSkip`` (official ``LatteT2V_skip``) from a diffusers ``LatteTransformer3DModel``
    with the same config. ``calibration``: (x_t, t, cond) with text embeddings in cond (default:
    random latents and random text embeddings of 8 tokens, enough to fit the projections' scale)."""
    from ..integrations.latte_t2v import LatteT2VSkip

    _check_init(init)
    if isinstance(transformer, LatteT2VSkip):
        raise ValueError("the transformer already has long skips (a LatteT2VSkip); nothing to convert")
    if type(transformer).__name__ != "LatteTransformer3DModel":
        raise TypeError(f"convert_diffusers_latte converts a LatteTransformer3DModel, got {type(transformer).__name__}")
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    param = next(transformer.parameters())
    model = LatteT2VSkip(**config).to(device=param.device, dtype=param.dtype)
    state = transformer.state_dict()
    # The official checkpoint format keeps PixArt's unused null caption as a buffer; it is not a weight.
    state.setdefault("caption_projection.y_embedding", model.caption_projection.y_embedding.detach().clone())
    conversion = _carry(model, state, "LatteTransformer3DModel", init)
    conversion.carried.remove("caption_projection.y_embedding")

    def calibrate(m):
        g = torch.Generator().manual_seed(0)
        text = torch.randn(8, 8, m.config.caption_channels, generator=g)
        return calibration_inputs(m, cond=text.to(param.device, param.dtype), num=8)

    return _finish(model, conversion, init, calibration, calibrate, official_xavier=False)


def convert_checkpoint(
    path: str | os.PathLike,
    out: str | os.PathLike,
    init: str = "identity",
    calibration: torch.Tensor | None = None,
    **config,
) -> Conversion:
    """Convert a checkpoint file (a DiT or an official class-to-video Latte: ``.pt`` / ``.pth`` /
    ``.safetensors``) or a diffusers folder (a ``DiTTransformer2DModel`` or
    ``LatteTransformer3DModel``: its own folder, or a pipeline folder with ``transformer/``) and
    write the skip model to ``out``: a ``.safetensors`` (or ``.pt``) file for SkipDiT / LatteSkip, a
    diffusers folder for LatteT2VSkip. ``calibration``: clean latents (N, *latent_shape) for the
    identity fit, e.g. the bundled digits for a pixel-space model (default: standard normal
    latents). ``config``: constructor arguments the checkpoint cannot settle. Returns the
    ``Conversion``; ValueError (``CheckpointError``) for anything it cannot convert."""
    from ..models import load_checkpoint, save_checkpoint
    from ..models.checkpoint import read_checkpoint

    path, out = os.fspath(path), os.fspath(out)
    if os.path.isdir(path):
        transformer = _load_diffusers(path)
        if type(transformer).__name__ == "DiTTransformer2DModel":
            model, conversion = convert_diffusers_dit(transformer, init, calibration)
        else:
            model, conversion = convert_diffusers_latte(transformer, init, calibration)
            model.save_pretrained(out)
            return conversion
    else:
        state_dict, carried = read_checkpoint(path)
        if "temp_embed" in state_dict:
            model, conversion = convert_latte(state_dict, init, calibration, **{**(carried or {}), **config})
        else:
            dit = load_checkpoint(path, **config)
            if type(dit) is not DiT:
                raise ValueError(f"{path} already has long skips ({type(dit).__name__}); nothing to convert")
            model, conversion = convert_dit(dit, init, calibration)
    save_checkpoint(model, out, metadata={"converted_from": conversion.source, "skip_init": init})
    return conversion


def _load_diffusers(folder: str):
    """The transformer of a diffusers folder (its own, or a pipeline's ``transformer/``)."""
    import json

    for sub in ("", "transformer"):
        config_path = os.path.join(folder, sub, "config.json")
        if os.path.isfile(config_path):
            with open(config_path) as f:
                name = json.load(f).get("_class_name")
            if name == "DiTTransformer2DModel":
                from diffusers import DiTTransformer2DModel as cls
            elif name == "LatteTransformer3DModel":
                from diffusers import LatteTransformer3DModel as cls
            else:
                raise ValueError(
                    f"{config_path}: {name!r} is neither a DiTTransformer2DModel nor a LatteTransformer3DModel"
                )
            return cls.from_pretrained(os.path.join(folder, sub))
    raise ValueError(f"{folder} is a folder without a diffusers config.json (nor transformer/config.json)")
