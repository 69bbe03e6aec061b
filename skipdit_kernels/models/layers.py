"""Building blocks of DiT, with the official parameter names, written against ``skipdit_kernels.ops``."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches of an image, projected to ``hidden_size`` tokens."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size
        self.patch_size = patch_size
        self.grid_size = input_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the (original-scale) timestep, then an MLP.

    The sinusoid frequencies are an fp32 buffer on the module's device (not in the state_dict, kept
    fp32 when the module is cast), so the forward makes no host-to-device copy and can be captured
    in a CUDA graph; the values are those the official code builds on the CPU at every call."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size
        self.register_buffer("freqs", self.frequencies(frequency_embedding_size), persistent=False)

    @staticmethod
    def frequencies(dim: int, max_period: float = 10000) -> torch.Tensor:
        half = dim // 2
        return torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(max_period) / half))

    @staticmethod
    def timestep_embedding(
        t: torch.Tensor, dim: int, max_period: float = 10000, freqs: torch.Tensor | None = None
    ) -> torch.Tensor:
        if freqs is None:
            freqs = TimestepEmbedder.frequencies(dim, max_period).to(t.device)
        angles = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        if dim % 2:
            embedding = F.pad(embedding, (0, 1))
        return embedding

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.freqs = self.frequencies(self.frequency_embedding_size).to(self.freqs.device)
        return self

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size, freqs=self.freqs)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embeddings; index ``num_classes`` is the null class used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.has_null_class = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + int(self.has_null_class), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def drop_labels(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (train and self.has_null_class) or force_drop_ids is not None:
            labels = self.drop_labels(labels, force_drop_ids)
        return self.embedding_table(labels)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)

    def mix_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """Attention up to, not including, the output projection (which the block fuses with its residual)."""
        batch, tokens, hidden = h.shape
        qkv = ops.linear(h, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.view(batch, tokens, 3, self.num_heads, hidden // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = ops.attention(q, k, v)
        return out.transpose(1, 2).reshape(batch, tokens, hidden)


def adaln_modulation(modulation: nn.Sequential, c: torch.Tensor) -> torch.Tensor:
    """The official ``adaLN_modulation(c)`` (SiLU, then Linear), its linear through the op layer."""
    linear = modulation[1]
    return ops.linear(F.silu(c), linear.weight, linear.bias)


class Mlp(nn.Module):
    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden, bias=True)
        self.fc2 = nn.Linear(mlp_hidden, hidden_size, bias=True)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block. With ``fusion`` it first applies Skip-DiT's long-skip fusion."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.eps = 1e-6
        self.attn = Attention(hidden_size, num_heads)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, fusion: "SkipFusionArgs | None" = None) -> torch.Tensor:
        return self.forward_modulated(x, adaln_modulation(self.adaLN_modulation, c), fusion)

    def forward_modulated(
        self, x: torch.Tensor, modulation: torch.Tensor, fusion: "SkipFusionArgs | None" = None
    ) -> torch.Tensor:
        """The block given ``adaLN_modulation(c)``, (N, 6 * hidden), one row per row of ``x``
        (Latte computes it once per video and repeats it over frames or patches)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=1)
        if fusion is None:
            h = ops.adaln_modulate(x, shift_msa, scale_msa, self.eps)
        else:
            skip, norm, linear = fusion
            x, h = ops.skip_fuse_adaln(
                x, skip, norm.weight, norm.bias, linear.weight, linear.bias, shift_msa, scale_msa, norm.eps
            )
        x = ops.linear_gated_residual(x, self.attn.mix_tokens(h), self.attn.proj.weight, self.attn.proj.bias, gate_msa)
        h = ops.adaln_modulate(x, shift_mlp, scale_mlp, self.eps)
        h = ops.linear_gelu(h, self.mlp.fc1.weight, self.mlp.fc1.bias)
        return ops.linear_gated_residual(x, h, self.mlp.fc2.weight, self.mlp.fc2.bias, gate_mlp)


SkipFusionArgs = tuple  # (skip tensor, skip LayerNorm module, skip nn.Linear)


class SkipProjection(nn.Module):
    """Holds the 2D -> D projection of a long skip (the official ``skip_linears.{j}.linear``)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(2 * hidden_size, hidden_size)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.eps = 1e-6
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = adaln_modulation(self.adaLN_modulation, c).chunk(2, dim=1)
        return ops.linear(ops.adaln_modulate(x, shift, scale, self.eps), self.linear.weight, self.linear.bias)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding, (grid_size**2, embed_dim): half the channels encode the
    row, half the column, each as [sin, cos] of the position times 1 / 10000**(2i/d)."""
    if embed_dim % 4:
        raise ValueError(f"hidden size {embed_dim} must be divisible by 4 for the 2-D position embedding")
    rows, cols = np.meshgrid(
        np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32), indexing="ij"
    )

    def encode(positions: np.ndarray) -> np.ndarray:
        quarter = embed_dim // 4
        omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    # The official grid is built with meshgrid(w, h), so its first half encodes the column index.
    return np.concatenate([encode(cols), encode(rows)], axis=1)


def sincos_pos_embed_1d(embed_dim: int, length: int) -> np.ndarray:
    """Fixed 1-D sin-cos embedding of positions 0..length-1, (length, embed_dim): [sin, cos] of the
    position times 1 / 10000**(2i/d) (Latte's temporal embedding)."""
    if embed_dim % 2:
        raise ValueError(f"hidden size {embed_dim} must be even for the 1-D position embedding")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2))
    angles = np.outer(np.arange(length, dtype=np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def unpatchify(x: torch.Tensor, patch_size: int, grid_size: int, channels: int) -> torch.Tensor:
    """Patch tokens (N, grid**2, p*p*C), row-major over the grid, -> images (N, C, grid*p, grid*p)."""
    p, g = patch_size, grid_size
    x = x.reshape(x.shape[0], g, g, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], channels, g * p, g * p)
