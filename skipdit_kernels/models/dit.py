"""DiT and Skip-DiT, drop-in for the official models (same constructor arguments and state_dict).

DiT (Peebles & Xie) is a stack of adaLN-Zero transformer blocks over patch tokens. Skip-DiT adds
U-Net-style long skips: the outputs of blocks 0..depth/2-1 are kept on a stack, and block
i >= depth/2 first replaces its input x by

    skip_linears[j](LayerNorm_fp32(cat([x, skips.pop()], -1))),   j = i - depth/2

Both models are skip stacks (``cache.SkipStack``), so Skip-Cache works on them through
``enable_skip_cache``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..cache import SkipCache, SkipCacheState, forward_stack
from .layers import DiTBlock, FinalLayer, LabelEmbedder, PatchEmbed, SkipProjection, TimestepEmbedder, sincos_pos_embed_2d
from .presets import preset_config


class DiT(nn.Module):
    long_skips = False

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
        self._skip_cache: SkipCacheState | None = None

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

    # -- Skip-Cache --------------------------------------------------------------------------

    def enable_skip_cache(self, config: SkipCache | None = None) -> "DiT":
        """Make each forward one denoising step under ``config`` (default: the official schedule)."""
        config = config if config is not None else SkipCache()
        if not isinstance(config, SkipCache):
            raise ValueError(f"enable_skip_cache expects a SkipCache, got {type(config).__name__}")
        self._skip_cache = SkipCacheState(config, self.depth, residual=not self.long_skips)
        return self

    def disable_skip_cache(self) -> "DiT":
        self._skip_cache = None
        return self

    def reset_skip_cache(self) -> None:
        """Forget cached features; call between requests (a rising timestep also resets)."""
        if self._skip_cache is not None:
            self._skip_cache.reset()

    @property
    def skip_cache(self) -> SkipCacheState | None:
        return self._skip_cache

    # -- the skip stack ----------------------------------------------------------------------

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, y = self._check_inputs(x, t, y)
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        return h, c.to(h.dtype)

    def run_block(self, i: int, h: torch.Tensor, c: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        return self.blocks[i](h, c)

    def finish(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.unpatchify(self.final_layer(h, c))

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        p, grid, c = self.patch_size, self.x_embedder.grid_size, self.out_channels
        x = x.reshape(x.shape[0], grid, grid, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, grid * p, grid * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) latents, t: (N,) original-scale timesteps, y: (N,) class labels."""
        return forward_stack(self, x, t, y, self._skip_cache)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float, guide_all_channels: bool = False
    ) -> torch.Tensor:
        """Classifier-free guidance over a batch whose second half carries the null label.

        The official code guides only the first 3 channels (kept for exact reproduction);
        ``guide_all_channels=True`` guides every latent channel.
        """
        if x.shape[0] % 2:
            raise ValueError(f"forward_with_cfg needs an even batch (cond + uncond halves), got {x.shape[0]}")
        half = x[: x.shape[0] // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y)
        guided = self.in_channels if guide_all_channels else 3
        eps, rest = out[:, :guided], out[:, guided:]
        cond, uncond = eps.chunk(2, dim=0)
        half_eps = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)

    def _check_inputs(self, x: torch.Tensor, t, y) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        n, channels, height, width = x.shape
        if channels != self.in_channels:
            raise ValueError(f"x has {channels} channels (shape {tuple(x.shape)}); the model expects {self.in_channels}")
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"x resolution {height}x{width} is not divisible by the patch size {self.patch_size}")
        if height != self.input_size or width != self.input_size:
            raise ValueError(
                f"x resolution {height}x{width} does not match the model's input_size {self.input_size} "
                f"(its position embedding is fixed)"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"t must have shape ({n},) to match x {tuple(x.shape)}, got {tuple(t.shape)}")
        y = torch.as_tensor(y, device=x.device)
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) to match x {tuple(x.shape)}, got {tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"y must hold integer class labels, got {y.dtype}")
        top = self.num_classes if self.y_embedder.has_null_class else self.num_classes - 1
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > top):
            raise ValueError(f"class labels must be in 0..{top}, got min {int(y.min())} max {int(y.max())}")
        return t, y


class SkipDiT(DiT):
    """DiT with Skip-DiT's long skip connections (the official ``DiT_skip``)."""

    long_skips = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.depth % 2:
            raise ValueError(f"SkipDiT needs an even depth to pair its blocks, got {self.depth}")
        self.skip_norms = nn.ModuleList(
            nn.LayerNorm(2 * self.hidden_size, elementwise_affine=True, eps=1e-6) for _ in range(self.depth // 2)
        )
        self.skip_linears = nn.ModuleList(SkipProjection(self.hidden_size) for _ in range(self.depth // 2))

    def run_block(self, i: int, h: torch.Tensor, c: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if skip is None:
            return self.blocks[i](h, c)
        j = i - self.depth // 2
        return self.blocks[i](h, c, fusion=(skip, self.skip_norms[j], self.skip_linears[j].linear))
