"""DiT and Skip-DiT, drop-in for the official models (same constructor arguments and state_dict).

DiT (Peebles & Xie) is a stack of adaLN-Zero transformer blocks over patch tokens. Skip-DiT adds
U-Net-style long skips: the outputs of blocks 0..depth/2-1 are kept on a stack, and block
i >= depth/2 first replaces its input x by

    skip_linears[j](LayerNorm_fp32(cat([x, skips.pop()], -1))),   j = i - depth/2

Both are skip stacks (``skipdit_kernels.models.stack``; the whole contract is described in
``skipdit_kernels.cache.protocol``): their forward is the one traversal ``run_units`` over
``run_block``, which Skip-Cache and the executor also run (``skipdit_kernels.enable_skip_cache``,
``sample``); the models themselves know nothing of caching.
"""

from __future__ import annotations

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
    sincos_pos_embed_2d,
)
from .presets import preset_config
from .stack import Condition, run_units, skip_partners


class DiT(nn.Module):
    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.config = dict(
            input_size=input_size, patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size,
            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, class_dropout_prob=class_dropout_prob,
            num_classes=num_classes, learn_sigma=learn_sigma,
        )  # fmt: skip
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.num_classes = num_classes

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DiT":
        """One of the twelve official sizes, e.g. ``"DiT-XL/2"``; keyword arguments override."""
        return cls(**{**preset_config(name), **overrides})

    def initialize_weights(self) -> None:
        """The official initialisation: xavier Linears, sin-cos positions, zeroed adaLN and output."""

        def xavier_linear(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(xavier_linear)
        pos = sincos_pos_embed_2d(self.hidden_size, self.x_embedder.grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        patch_w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(patch_w.view(patch_w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for param in (*self.final_layer.adaLN_modulation[-1].parameters(), *self.final_layer.linear.parameters()):
            nn.init.zeros_(param)

    # -- the forward, as the official models.py reads ------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) latents, t: (N,) original-scale timesteps, y: (N,) integer class labels.
        Returns (N, out_channels, H, W). ValueError naming the offending input."""
        t, cond = self.check_inputs(x, t, Condition({"y": y}))
        h, c = self._embed(x, t, cond["y"], self.training)
        return self.finish(run_units(self, skip_partners(self), h, c), c)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float, guide_all_channels: bool = False
    ) -> torch.Tensor:
        """Classifier-free guidance over a batch whose second half carries the null label.

        The official code guides the first 3 channels (kept for exact reproduction with 4-channel
        latents; with fewer channels, all latent channels and never the learned variance);
        ``guide_all_channels=True`` guides every latent channel.
        """
        if x.shape[0] % 2:
            raise ValueError(f"forward_with_cfg needs an even batch (cond + uncond halves), got {x.shape[0]}")
        half = x[: x.shape[0] // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y)
        guided = self.guided_channels(guide_all_channels)
        eps, rest = out[:, :guided], out[:, guided:]
        cond, uncond = eps.chunk(2, dim=0)
        half_eps = ops.classifier_free_guidance(cond, uncond, cfg_scale)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        p, grid, c = self.patch_size, self.x_embedder.grid_size, self.out_channels
        x = x.reshape(x.shape[0], grid, grid, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, grid * p, grid * p)

    # -- the skip-stack contract (cache.protocol.SkipStack) -------------------------------------

    channel_dim = 1

    @property
    def num_units(self) -> int:
        return self.depth

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.input_size, self.input_size)

    def latent_shape_for(self, image_size: int) -> tuple[int, int, int]:
        """The latent of an ``image_size`` image (``conditioning.check_image_size``)."""
        check_image_size(image_size, self.in_channels, self.input_size)
        return self.latent_shape

    def skip_partner(self, i: int) -> int | None:
        return None

    def guided_channels(self, guide_all_channels: bool) -> int:
        return self.in_channels if guide_all_channels else min(3, self.in_channels)

    def condition(self, labels) -> Condition:
        """Class labels (a sequence or tensor of integers in 0..num_classes-1) as ``{"y": (N,)}``."""
        return Condition({"y": class_labels(labels, self.num_classes)})

    def null_condition(self, cond: Condition) -> Condition:
        if not self.y_embedder.has_null_class:
            raise ValueError(
                "classifier-free guidance needs a model trained with class dropout (a null class); "
                "this model has class_dropout_prob 0"
            )
        return Condition({"y": torch.full_like(cond["y"], self.num_classes)})

    def split_call(self, args: tuple, kwargs: dict):
        names = ("x", "t", "y")
        values = dict(zip(names, args), **kwargs)
        missing = [n for n in names if n not in values]
        if missing or len(values) != 3:
            raise TypeError(
                f"{type(self).__name__}.forward takes (x, t, y), got {len(args)} positional and {sorted(kwargs)}"
            )
        return values["x"], values["t"], Condition({"y": values["y"]})

    def wrap_output(self, out: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        return out

    def check_inputs(self, x: torch.Tensor, t, cond: Condition) -> tuple[torch.Tensor, Condition]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        n, channels, height, width = x.shape
        if channels != self.in_channels:
            raise ValueError(
                f"x has {channels} channels (shape {tuple(x.shape)}); the model expects {self.in_channels}"
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"x resolution {height}x{width} is not divisible by the patch size {self.patch_size}")
        if height != self.input_size or width != self.input_size:
            raise ValueError(
                f"x resolution {height}x{width} does not match the model's input_size {self.input_size} "
                f"(its position embedding is fixed)"
            )
        shape = f"x {tuple(x.shape)}"
        t = check_timesteps(t, n, x.device, shape)
        top = self.num_classes if self.y_embedder.has_null_class else self.num_classes - 1
        y = check_label_batch(cond["y"], n, top, x.device, shape)
        return t, Condition({"y": y})

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens plus positions, and the adaLN conditioning c = t_emb + y_emb (no label dropout)."""
        return self._embed(x, t, cond["y"], train=False)

    def _embed(self, x, t, y, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, train)
        return h, c.to(h.dtype)

    def run_block(self, i: int, h: torch.Tensor, c: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        return self.blocks[i](h, c)

    def finish(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.unpatchify(self.final_layer(h, c))


class SkipDiT(DiT):
    """DiT with Skip-DiT's long skip connections (the official ``DiT_skip``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.depth % 2:
            raise ValueError(f"SkipDiT needs an even depth to pair its blocks, got {self.depth}")
        self.skip_norms = nn.ModuleList(
            nn.LayerNorm(2 * self.hidden_size, elementwise_affine=True, eps=1e-6) for _ in range(self.depth // 2)
        )
        self.skip_linears = nn.ModuleList(SkipProjection(self.hidden_size) for _ in range(self.depth // 2))

    def skip_partner(self, i: int) -> int | None:
        return self.depth - 1 - i if i >= self.depth // 2 else None

    def run_block(self, i: int, h: torch.Tensor, c: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if skip is None:
            return self.blocks[i](h, c)
        j = i - self.depth // 2
        return self.blocks[i](h, c, fusion=(skip, self.skip_norms[j], self.skip_linears[j].linear))
