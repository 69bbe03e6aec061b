"""An official-style eager Skip-DiT for benchmarks: how the reference implementation computes.

Written for this repository after the public DiT / Skip-DiT designs (timm-style blocks: LayerNorm
without affine, modulate, qkv reshape + permute + SDPA, tanh-GELU MLP; Skip-DiT's long skips as
Linear(FP32 LayerNorm(cat([x, skip]))). The embedders are the package's (plain torch, identical in
function). Parameter names follow the official checkpoints, so a SkipDiT's state_dict loads into it
(plus the skip LayerNorms, kept here as skip_linears.{j}.norm).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from skipdit_kernels.models.layers import LabelEmbedder, PatchEmbed, TimestepEmbedder


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FP32LayerNorm(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(
            x.dtype
        )


class SkipLinear(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = FP32LayerNorm(2 * dim, eps=1e-6)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x, skip):
        return self.linear(self.norm(torch.cat([x, skip], dim=-1)))


class FinalLayer(nn.Module):
    def __init__(self, dim, patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class OfficialSkipDiT(nn.Module):
    def __init__(
        self,
        input_size=32,
        patch_size=2,
        in_channels=4,
        hidden_size=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        num_classes=1000,
        learn_sigma=True,
    ):
        super().__init__()
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patch_size, self.depth = patch_size, depth
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, 0.1)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.skip_linears = nn.ModuleList(SkipLinear(hidden_size) for _ in range(depth // 2))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def unpatchify(self, x):
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        skips = []
        half = self.depth // 2
        for i, block in enumerate(self.blocks):
            if i >= half:
                x = self.skip_linears[i - half](x, skips.pop())
            x = block(x, c)
            if i < half:
                skips.append(x)
        return self.unpatchify(self.final_layer(x, c))

    @classmethod
    def from_skipdit(cls, model) -> "OfficialSkipDiT":
        """Same weights as a package SkipDiT (its skip_norms become skip_linears.{j}.norm)."""
        cfg = model.config
        official = cls(
            input_size=cfg["input_size"], patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
            hidden_size=cfg["hidden_size"], depth=cfg["depth"], num_heads=cfg["num_heads"],
            mlp_ratio=cfg["mlp_ratio"], num_classes=cfg["num_classes"], learn_sigma=cfg["learn_sigma"],
        )  # fmt: skip
        state = dict(model.state_dict())
        for key in [k for k in state if k.startswith("skip_norms.")]:
            _, j, name = key.split(".")
            state[f"skip_linears.{j}.norm.{name}"] = state.pop(key)
        official.load_state_dict(state, strict=True)
        return official.to(next(model.parameters()).dtype)
