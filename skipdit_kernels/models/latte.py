"""Latte-skip for class-to-video (and unconditional video): drop-in for the official ``Latte_skip``
of Skip-DiT's class-to-video release (same constructor arguments and state_dict).

Latte (Ma et al.) factorises a video transformer into alternating *spatial* blocks (attention over
the patches of one frame, tokens (N*F, T, D)) and *temporal* blocks (attention over the frames of
one patch position, tokens (N*T, F, D)); the blocks are DiT's adaLN-Zero blocks. ``blocks`` is one
flat list, spatial at even and temporal at odd indices; the temporal position embedding is added
before the first temporal block. Latte-skip adds Skip-DiT's long skips at the level of a
(spatial, temporal) *pair*: pairs 0..P/2-1 push their output, and pair k >= P/2 first replaces its
input h by

    skip_linears[j](LayerNorm_fp32(cat([h, skips.pop()], -1))),   j = k - P/2

(the official code hard-codes j = (block index - 14) / 2, i.e. 14 pairs; this class takes any even
number of pairs). The pair is the unit of the skip stack (``skipdit_kernels.models.stack``): the
forward is the one traversal ``run_units`` over the pairs, which Skip-Cache also runs with the pair
as its shallow unit; the model knows nothing of caching.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from .. import ops
from .conditioning import check_image_size, check_label_batch, check_timesteps, class_labels
from .layers import (
    DiTBlock,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    SkipProjection,
    TimestepEmbedder,
    adaln_modulation,
    sincos_pos_embed_1d,
    sincos_pos_embed_2d,
    unpatchify,
)
from .stack import Condition, run_units, skip_partners

_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}

#: The official Latte sizes (``Latte_models``): depth in blocks (two per pair), hidden size, patch, heads.
LATTE_PRESETS: dict[str, dict[str, int]] = {
    f"Latte-{size}/{patch}": {"depth": depth, "hidden_size": hidden, "patch_size": patch, "num_heads": heads}
    for size, (depth, hidden, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}

#: ``extras`` of the official constructor: 1 unconditional (sky, taichi, ffs), 2 class-conditional (ucf101).
_EXTRAS = {1: "unconditional", 2: "class-conditional"}

_ATTENTION_MODES = ("math", "flash", "xformers")


def latte_preset(name: str) -> dict[str, int]:
    """Constructor arguments of a Latte size, e.g. ``"Latte-XL/2"``; ValueError naming the known ones."""
    if name not in LATTE_PRESETS:
        raise ValueError(f"unknown Latte preset {name!r}; expected one of {sorted(LATTE_PRESETS)}")
    return dict(LATTE_PRESETS[name])


def latte_preset_for(depth: int, hidden_size: int, patch_size: int) -> str | None:
    for name, cfg in LATTE_PRESETS.items():
        if (cfg["depth"], cfg["hidden_size"], cfg["patch_size"]) == (depth, hidden_size, patch_size):
            return name
    return None


class LatteContext(NamedTuple):
    """What the pairs and the final layer read: the adaLN conditioning c (N, hidden) and the video
    layout (N videos of ``frames`` frames)."""

    c: torch.Tensor
    batch: int
    frames: int


class LatteSkip(nn.Module):
    """The official ``Latte_skip`` (Skip-DiT class-to-video). Defaults are the official ones
    (Latte-XL/2 on 32x32 latents, 16 frames, ``extras=1``: unconditional; the ucf101 checkpoint is
    ``extras=2, num_classes=101``). ``depth`` counts blocks, two per (spatial, temporal) pair, and
    must be a multiple of 4 (an even number of pairs). ``attention_mode`` is accepted for
    compatibility; every mode computes the same attention here (``ops.attention``).
    ValueError naming the argument for a configuration the model cannot build."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_frames: int = 16,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        extras: int = 1,
        attention_mode: str = "math",
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        if depth < 4 or depth % 4:
            raise ValueError(
                f"LatteSkip needs an even number of (spatial, temporal) block pairs to pair its long skips: "
                f"depth (blocks) must be a positive multiple of 4, got depth {depth} ({depth / 2:g} pairs)"
            )
        if extras not in _EXTRAS:
            raise ValueError(
                f"extras={extras!r} is not supported; expected 1 (unconditional) or 2 (class-conditional) "
                "(the official extras=78 text-projection variant has no released checkpoint)"
            )
        if attention_mode not in _ATTENTION_MODES:
            raise ValueError(f"attention_mode must be one of {_ATTENTION_MODES}, got {attention_mode!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.config = dict(
            input_size=input_size, patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size,
            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, num_frames=num_frames,
            class_dropout_prob=class_dropout_prob, num_classes=num_classes, learn_sigma=learn_sigma,
            extras=extras, attention_mode=attention_mode,
        )  # fmt: skip
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.num_frames = num_frames
        self.num_classes = num_classes
        self.extras = extras

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        if extras == 2:
            self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        pairs = depth // 2
        self.skip_norms = nn.ModuleList(
            nn.LayerNorm(2 * hidden_size, elementwise_affine=True, eps=1e-6) for _ in range(pairs // 2)
        )
        self.skip_linears = nn.ModuleList(SkipProjection(hidden_size) for _ in range(pairs // 2))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.temp_embed = nn.Parameter(torch.zeros(1, num_frames, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LatteSkip":
        """A Latte size, e.g. ``"Latte-XL/2"`` (the released skip models' size); keyword arguments
        override (e.g. ``extras=2, num_classes=101`` for ucf101)."""
        return cls(**{**latte_preset(name), **overrides})

    def initialize_weights(self) -> None:
        """The official initialisation: xavier Linears, sin-cos positions (2-D over patches, 1-D
        over frames), zeroed adaLN and output."""

        def xavier_linear(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(xavier_linear)
        pos = sincos_pos_embed_2d(self.hidden_size, self.x_embedder.grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        temp = sincos_pos_embed_1d(self.hidden_size, self.num_frames)
        self.temp_embed.data.copy_(torch.from_numpy(temp).float().unsqueeze(0))
        patch_w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(patch_w.view(patch_w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.extras == 2:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for param in (*self.final_layer.adaLN_modulation[-1].parameters(), *self.final_layer.linear.parameters()):
            nn.init.zeros_(param)

    # -- the forward, as the official models/latte.py reads --------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, F, C, H, W) video latents, t: (N,) original-scale timesteps, y: (N,) integer class
        labels (``extras=2``; None for an unconditional model). Returns (N, F, out_channels, H, W).
        ValueError naming the offending input."""
        t, cond = self.check_inputs(x, t, self._condition_of(x, y))
        h, ctx = self._embed(x, t, cond, self.training)
        return self.finish(run_units(self, skip_partners(self), h, ctx), ctx)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float, guide_all_channels: bool = False
    ) -> torch.Tensor:
        """Classifier-free guidance over a batch whose second half carries the null label. The
        official code guides the first 4 channels (all latent channels of its 4-channel latents;
        with fewer, all latent channels and never the learned variance)."""
        if x.shape[0] % 2:
            raise ValueError(f"forward_with_cfg needs an even batch (cond + uncond halves), got {x.shape[0]}")
        half = x[: x.shape[0] // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y)
        guided = self.guided_channels(guide_all_channels)
        eps, rest = out[:, :, :guided], out[:, :, guided:]
        cond, uncond = eps.chunk(2, dim=0)
        half_eps = ops.classifier_free_guidance(cond, uncond, cfg_scale)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=2)

    # -- the skip-stack contract (cache.protocol.SkipStack) -------------------------------------

    channel_dim = 2

    @property
    def num_units(self) -> int:
        """(spatial, temporal) block pairs."""
        return self.depth // 2

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (self.num_frames, self.in_channels, self.input_size, self.input_size)

    def latent_shape_for(self, image_size: int) -> tuple[int, int, int, int]:
        """The latent of ``image_size`` frames (``conditioning.check_image_size``)."""
        check_image_size(image_size, self.in_channels, self.input_size)
        return self.latent_shape

    def skip_partner(self, i: int) -> int | None:
        return self.num_units - 1 - i if i >= self.num_units // 2 else None

    def guided_channels(self, guide_all_channels: bool) -> int:
        return self.in_channels if guide_all_channels else min(4, self.in_channels)

    def condition(self, conditioning) -> Condition:
        """Class labels (``extras=2``: integers in 0..num_classes-1) as ``{"y": (N,)}``; for an
        unconditional model the number of videos N (a condition of N samples without tensors)."""
        if self.extras == 2:
            return Condition({"y": class_labels(conditioning, self.num_classes)})
        if isinstance(conditioning, bool) or not isinstance(conditioning, int) or conditioning < 1:
            raise ValueError(
                f"an unconditional LatteSkip (extras=1) takes the number of videos as its conditioning, "
                f"got {conditioning!r}"
            )
        return Condition(batch=conditioning)

    def null_condition(self, cond: Condition) -> Condition:
        if self.extras != 2:
            raise ValueError(
                "classifier-free guidance needs a class-conditional model; this LatteSkip is unconditional (extras=1)"
            )
        if not self.y_embedder.has_null_class:
            raise ValueError(
                "classifier-free guidance needs a model trained with class dropout (a null class); "
                "this model has class_dropout_prob 0"
            )
        return Condition({"y": torch.full_like(cond["y"], self.num_classes)})

    def split_call(self, args: tuple, kwargs: dict):
        names = ("x", "t", "y")
        values = dict(zip(names, args), **kwargs)
        if "x" not in values or "t" not in values or set(values) - set(names) or len(args) > 3:
            raise TypeError(
                f"{type(self).__name__}.forward takes (x, t, y), got {len(args)} positional and {sorted(kwargs)}"
            )
        return values["x"], values["t"], self._condition_of(values["x"], values.get("y"))

    def wrap_output(self, out: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        return out

    def _condition_of(self, x, y) -> Condition:
        if self.extras == 2:
            if y is None:
                raise ValueError("this LatteSkip is class-conditional (extras=2): y (class labels) is required")
            return Condition({"y": y})
        if y is not None:
            raise ValueError("this LatteSkip is unconditional (extras=1): y must be None")
        return Condition(batch=x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else 0)

    def check_inputs(self, x: torch.Tensor, t, cond: Condition) -> tuple[torch.Tensor, Condition]:
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(f"x must be a (N, F, C, H, W) video tensor, got {getattr(x, 'shape', type(x).__name__)}")
        n, frames, channels, height, width = x.shape
        shape = f"x {tuple(x.shape)}"
        if channels != self.in_channels:
            raise ValueError(
                f"x has {channels} channels ({shape}, (N, F, C, H, W)); the model expects {self.in_channels}"
            )
        if frames != self.num_frames:
            raise ValueError(
                f"x has {frames} frames ({shape}, (N, F, C, H, W)), but the temporal embedding temp_embed "
                f"{tuple(self.temp_embed.shape)} holds {self.num_frames}"
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"x resolution {height}x{width} is not divisible by the patch size {self.patch_size}")
        if height != self.input_size or width != self.input_size:
            raise ValueError(
                f"x resolution {height}x{width} does not match the model's input_size {self.input_size} "
                f"(its position embedding is fixed)"
            )
        t = check_timesteps(t, n, x.device, shape)
        if self.extras == 2:
            if set(cond.keys()) != {"y"} or cond.static:
                raise ValueError(f"a class-conditional LatteSkip takes the condition {{'y'}}, got {cond}")
            top = self.num_classes if self.y_embedder.has_null_class else self.num_classes - 1
            return t, Condition({"y": check_label_batch(cond["y"], n, top, x.device, shape)})
        if cond.tensors or cond.static or cond.batch != n:
            raise ValueError(
                f"an unconditional LatteSkip takes a condition of {n} samples without tensors for {shape}, got {cond}"
            )
        return t, cond

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, LatteContext]:
        """Patch tokens of every frame plus positions, (N*F, T, hidden), and the adaLN conditioning
        c = t_emb (+ y_emb), (N, hidden), without label dropout."""
        return self._embed(x, t, cond, train=False)

    def _embed(self, x, t, cond, train: bool) -> tuple[torch.Tensor, LatteContext]:
        n, frames = x.shape[:2]
        h = self.x_embedder(x.reshape(n * frames, *x.shape[2:])) + self.pos_embed
        c = self.t_embedder(t)
        if self.extras == 2:
            c = c + self.y_embedder(cond["y"], train)
        return h, LatteContext(c.to(h.dtype), n, frames)

    def run_block(self, i: int, h: torch.Tensor, ctx: LatteContext, skip: torch.Tensor | None) -> torch.Tensor:
        """Pair i: (fusion with ``skip``), the spatial block over (N*F, T, D), the temporal block
        over (N*T, F, D) (after adding temp_embed in pair 0); returns (N*F, T, D)."""
        spatial, temporal = self.blocks[2 * i], self.blocks[2 * i + 1]
        n, frames = ctx.batch, ctx.frames
        tokens, hidden = h.shape[1], h.shape[2]
        fusion = None
        if skip is not None:
            j = i - self.num_units // 2
            fusion = (skip, self.skip_norms[j], self.skip_linears[j].linear)
        # adaLN rows are per video; the official code repeats c per frame / patch before the Linear.
        h = spatial.forward_modulated(
            h, adaln_modulation(spatial.adaLN_modulation, ctx.c).repeat_interleave(frames, 0), fusion
        )
        h = h.view(n, frames, tokens, hidden).transpose(1, 2).reshape(n * tokens, frames, hidden)
        if i == 0:
            h = h + self.temp_embed
        h = temporal.forward_modulated(
            h, adaln_modulation(temporal.adaLN_modulation, ctx.c).repeat_interleave(tokens, 0)
        )
        return h.view(n, tokens, frames, hidden).transpose(1, 2).reshape(n * frames, tokens, hidden)

    def finish(self, h: torch.Tensor, ctx: LatteContext) -> torch.Tensor:
        out = self.final_layer(h, ctx.c.repeat_interleave(ctx.frames, 0))
        frames = unpatchify(out, self.patch_size, self.x_embedder.grid_size, self.out_channels)
        return frames.reshape(ctx.batch, ctx.frames, *frames.shape[1:])
