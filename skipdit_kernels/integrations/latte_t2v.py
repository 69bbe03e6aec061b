"""Text-to-video Latte-skip: diffusers' ``LatteTransformer3DModel`` (Latte-1's layout) plus the long
skips of Skip-DiT's official text-to-video model (``LatteT2V_skip``, text-to-video/models/latte_t2v_skip.py).

Latte-1 runs ``num_layers`` (spatial, temporal) pairs: ``transformer_blocks[i]`` (self-attention
over the patches of a frame, cross-attention to the projected text embeddings, adaLN-single) then
``temporal_transformer_blocks[i]`` (self-attention over the frames of a patch position), with
``temp_pos_embed`` added before the first temporal block. The skip variant adds, for
P = num_layers pairs, ``skip_norms[j]`` (fp32 LayerNorm over 2*hidden) and
``skip_linears[j].linear`` (2*hidden -> hidden), j < P/2: pairs 0..P/2-1 push their output and pair
i >= P/2 first replaces its input by ``skip_linears[j](skip_norms[j](cat([h, skips.pop()])))``,
j = i - P/2 (the official code hard-codes 14 of 28). State dict keys are the official ones, so
``LatteT2VSkip.from_pretrained(folder, subfolder="transformer")`` loads a released checkpoint.

The class implements the skip-stack contract (``skipdit_kernels.cache.protocol``) itself: its
forward is the one traversal ``run_units`` over the pairs, which ``sample()`` and
``enable_skip_cache`` also run with the pair as the unit. Its conditioning is a dict of text
embeddings (no text encoder is bundled):

    {"encoder_hidden_states": (N, L, caption_channels),      # e.g. T5 embeddings of the prompts
     "encoder_attention_mask": (N, L) 1 = keep, 0 = drop,    # optional
     "negative_encoder_hidden_states": (N or 1, L, caption_channels),  # for CFG: the negative prompt's
     "negative_encoder_attention_mask": (N or 1, L)}         # optional
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

try:
    from diffusers.configuration_utils import register_to_config
    from diffusers.models.modeling_outputs import Transformer2DModelOutput
    from diffusers.models.transformers.latte_transformer_3d import LatteTransformer3DModel
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("LatteT2VSkip needs diffusers (pip install diffusers)") from exc

from .. import ops
from ..models.conditioning import check_timesteps
from ..models.layers import SkipProjection, unpatchify
from ..models.stack import Condition, run_units, skip_partners

_TEXT = "encoder_hidden_states"
_MASK = "encoder_attention_mask"
_NEG_TEXT = "negative_encoder_hidden_states"
_NEG_MASK = "negative_encoder_attention_mask"

#: The transformer of Latte-1 (maxin-cn/Latte-1, transformer/config.json), which the official
#: text-to-video skip model extends.
LATTE_1_CONFIG = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    cross_attention_dim=1152, attention_bias=True, sample_size=64, patch_size=2, activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    caption_channels=4096, video_length=16,
)  # fmt: skip


class T2VContext(NamedTuple):
    t_spatial: torch.Tensor  # (N*F, 6*hidden) adaLN-single rows of the spatial blocks
    t_temporal: torch.Tensor  # (N*T, 6*hidden) of the temporal blocks
    embedded_timestep: torch.Tensor  # (N, hidden) for the output layer
    text: torch.Tensor  # (N*F, L, hidden) projected text, per frame
    text_bias: torch.Tensor | None  # (N*F, 1, L) additive cross-attention bias, or None
    batch: int
    frames: int


class LatteT2VSkip(LatteTransformer3DModel):
    """``LatteTransformer3DModel`` with Skip-DiT's long skips (official ``LatteT2V_skip``); the
    same constructor arguments (``LATTE_1_CONFIG`` is the released size). ``num_layers`` (pairs)
    must be even. ValueError naming the argument otherwise."""

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: int | None = None,
        out_channels: int | None = None,
        num_layers: int = 2,
        dropout: float = 0.0,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        sample_size: int = 64,
        patch_size: int | None = None,
        activation_fn: str = "geglu",
        num_embeds_ada_norm: int | None = None,
        norm_type: str = "layer_norm",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        caption_channels: int = None,
        video_length: int = 16,
    ):
        if num_layers < 2 or num_layers % 2:
            raise ValueError(
                f"LatteT2VSkip needs an even number of (spatial, temporal) pairs to pair its long skips, "
                f"got num_layers {num_layers}"
            )
        if norm_type != "ada_norm_single":
            raise ValueError(
                f"LatteT2VSkip is Latte-1's adaLN-single transformer: norm_type must be 'ada_norm_single', got {norm_type!r}"
            )
        super().__init__(
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim, in_channels=in_channels,
            out_channels=out_channels, num_layers=num_layers, dropout=dropout, cross_attention_dim=cross_attention_dim,
            attention_bias=attention_bias, sample_size=sample_size, patch_size=patch_size, activation_fn=activation_fn,
            num_embeds_ada_norm=num_embeds_ada_norm, norm_type=norm_type,
            norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps, caption_channels=caption_channels,
            video_length=video_length,
        )  # fmt: skip
        inner = num_attention_heads * attention_head_dim
        self.skip_norms = nn.ModuleList(nn.LayerNorm(2 * inner, eps=1e-6) for _ in range(num_layers // 2))
        self.skip_linears = nn.ModuleList(SkipProjection(inner) for _ in range(num_layers // 2))
        # The official model's older diffusers CaptionProjection keeps PixArt's learned null caption
        # (120 tokens) as a buffer in the state_dict; the forward never reads it.
        self.caption_projection.register_buffer("y_embedding", torch.zeros(120, caption_channels))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        enable_temporal_attentions: bool = True,
        return_dict: bool = True,
    ):
        """hidden_states: (N, C, F, H, W) latents; timestep: (N,) or scalar; encoder_hidden_states:
        (N, L, caption_channels); encoder_attention_mask: (N, L), 1 keeps a text token. Returns
        (N, out_channels, F, H, W) as diffusers does (``Transformer2DModelOutput`` or a tuple).
        ValueError naming the offending input."""
        args = (hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, enable_temporal_attentions)
        x, t, cond = self.split_call(args, {"return_dict": return_dict})
        t, cond = self.check_inputs(x, t, cond)
        h, ctx = self.embed(x, t, cond)
        h = run_units(self, skip_partners(self), h, ctx)
        return self.wrap_output(self.finish(h, ctx), (), {"return_dict": return_dict})

    # -- the skip-stack contract (cache.protocol.SkipStack) -------------------------------------

    channel_dim = 1

    @property
    def num_units(self) -> int:
        return self.config.num_layers

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.config.in_channels

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        c = self.config
        return (c.in_channels, c.video_length, c.sample_size, c.sample_size)

    def skip_partner(self, i: int) -> int | None:
        return self.num_units - 1 - i if i >= self.num_units // 2 else None

    def guided_channels(self, guide_all_channels: bool) -> int:
        # Latte's pipeline guides every latent channel (and drops the variance for DDIM).
        return self.config.in_channels

    def latent_shape_for(self, image_size: int) -> tuple[int, int, int, int]:
        c = self.config
        raise ValueError(f"image_size is not supported for LatteT2VSkip; its latents are {self.latent_shape} "
                         f"(sample_size {c.sample_size})")  # fmt: skip

    def condition(self, conditioning) -> Condition:
        """Text embeddings (a tensor (N, L, caption_channels), or the dict of the module docstring)
        as a checked condition dict. ValueError naming the shapes."""
        if isinstance(conditioning, torch.Tensor):
            conditioning = {_TEXT: conditioning}
        if not isinstance(conditioning, dict) or _TEXT not in conditioning:
            raise ValueError(f"LatteT2VSkip takes text embeddings: a tensor (N, L, C) or a dict with {_TEXT!r}")
        unknown = set(conditioning) - {_TEXT, _MASK, _NEG_TEXT, _NEG_MASK}
        if unknown:
            raise ValueError(
                f"unknown conditioning entries {sorted(unknown)}; expected {[_TEXT, _MASK, _NEG_TEXT, _NEG_MASK]}"
            )
        text = self._check_text(conditioning[_TEXT], None, _TEXT)
        n, length = text.shape[:2]
        cond = {_TEXT: text}
        if conditioning.get(_MASK) is not None:
            cond[_MASK] = self._check_mask(conditioning[_MASK], n, length, _MASK)
        if conditioning.get(_NEG_TEXT) is not None:
            neg = self._check_text(conditioning[_NEG_TEXT], None, _NEG_TEXT)
            if neg.shape[0] not in (1, n) or neg.shape[1] != length:
                raise ValueError(
                    f"{_NEG_TEXT} must have shape (1 or {n}, {length}, C) like {_TEXT} {tuple(text.shape)}, got {tuple(neg.shape)}"
                )
            cond[_NEG_TEXT] = neg.expand(n, -1, -1).contiguous()
            if (conditioning.get(_NEG_MASK) is None) != (_MASK not in cond):
                raise ValueError(f"give {_NEG_MASK} together with {_MASK} (both or neither)")
            if _MASK in cond:
                neg_mask = self._check_mask(conditioning[_NEG_MASK], None, length, _NEG_MASK)
                cond[_NEG_MASK] = neg_mask.expand(n, -1).contiguous()
        return Condition(cond)

    def null_condition(self, cond: Condition) -> Condition:
        if _NEG_TEXT not in cond:
            raise ValueError(
                f"classifier-free guidance with LatteT2VSkip needs {_NEG_TEXT!r} (the text encoder's embedding of "
                "the negative prompt, e.g. the empty prompt) in the conditioning"
            )
        null = {_TEXT: cond[_NEG_TEXT], _NEG_TEXT: cond[_NEG_TEXT]}
        if _MASK in cond:
            null.update({_MASK: cond[_NEG_MASK], _NEG_MASK: cond[_NEG_MASK]})
        return Condition(null)

    def split_call(self, args: tuple, kwargs: dict):
        names = ("hidden_states", "timestep", _TEXT, _MASK, "enable_temporal_attentions", "return_dict")
        values = dict(zip(names, args), **kwargs)
        if set(values) - set(names) or "hidden_states" not in values or len(args) > len(names):
            raise TypeError(f"LatteT2VSkip.forward takes {names}, got {len(args)} positional and {sorted(kwargs)}")
        if values.get("enable_temporal_attentions", True) is not True:
            raise ValueError(
                "LatteT2VSkip runs every temporal block: enable_temporal_attentions=False is not supported"
            )
        cond = {_TEXT: values.get(_TEXT)}
        if values.get(_MASK) is not None:
            cond[_MASK] = values[_MASK]
        return values["hidden_states"], values.get("timestep"), Condition(cond)

    def wrap_output(self, out: torch.Tensor, args: tuple, kwargs: dict):
        return_dict = kwargs.get("return_dict", args[5] if len(args) > 5 else True)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def check_inputs(self, x: torch.Tensor, t, cond: Condition) -> tuple[torch.Tensor, Condition]:
        c = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(
                f"hidden_states must be a (N, C, F, H, W) video tensor, got {getattr(x, 'shape', type(x).__name__)}"
            )
        n, channels, frames, height, width = x.shape
        shape = f"hidden_states {tuple(x.shape)}"
        if channels != c.in_channels:
            raise ValueError(f"{shape} has {channels} channels ((N, C, F, H, W)); the model expects {c.in_channels}")
        if frames not in (1, c.video_length):
            raise ValueError(
                f"{shape} has {frames} frames ((N, C, F, H, W)), but the temporal embedding temp_pos_embed "
                f"{tuple(self.temp_pos_embed.shape)} holds {c.video_length}"
            )
        if height != c.sample_size or width != c.sample_size:
            raise ValueError(f"{shape}: resolution {height}x{width} does not match sample_size {c.sample_size}")
        if t is None:
            raise ValueError("timestep is required")
        t = check_timesteps(t, n, x.device, shape)
        if cond.get(_TEXT) is None:
            raise ValueError(f"{_TEXT} (text embeddings (N, L, {c.caption_channels})) is required")
        text = self._check_text(cond[_TEXT], n, _TEXT)
        checked = {k: v for k, v in cond.items() if k in (_NEG_TEXT, _NEG_MASK)}
        checked[_TEXT] = text
        if cond.get(_MASK) is not None:
            checked[_MASK] = self._check_mask(torch.as_tensor(cond[_MASK], device=x.device), n, text.shape[1], _MASK)
        return t, Condition(checked)

    def _check_text(self, text, n: int | None, name: str) -> torch.Tensor:
        channels = self.config.caption_channels
        if (
            not isinstance(text, torch.Tensor)
            or text.dim() != 3
            or text.shape[2] != channels
            or (n is not None and text.shape[0] != n)
        ):
            rows = "N" if n is None else n
            raise ValueError(
                f"{name} must be ({rows}, L, {channels}) text embeddings, got {getattr(text, 'shape', type(text).__name__)}"
            )
        if not text.dtype.is_floating_point:
            raise ValueError(f"{name} must be floating point, got {text.dtype}")
        return text

    def _check_mask(self, mask, n: int | None, length: int, name: str) -> torch.Tensor:
        mask = torch.as_tensor(mask)
        if mask.dim() != 2 or mask.shape[1] != length or (n is not None and mask.shape[0] != n):
            raise ValueError(
                f"{name} must be ({'N' if n is None else n}, {length}) (1 keeps a text token), got {tuple(mask.shape)}"
            )
        return mask

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, T2VContext]:
        """Patch tokens of every frame with positions (N*F, T, hidden), and the context."""
        n, channels, frames, height, width = x.shape
        h = self.pos_embed(x.permute(0, 2, 1, 3, 4).reshape(n * frames, channels, height, width))
        tokens = h.shape[1]
        added = {"resolution": None, "aspect_ratio": None}
        temb, embedded = self.adaln_single(t, added_cond_kwargs=added, batch_size=n, hidden_dtype=h.dtype)
        text = self.caption_projection(cond[_TEXT].to(h.dtype)).repeat_interleave(frames, 0)
        bias = None
        if _MASK in cond:  # as the official forward: a (N, L) keep-mask becomes a -10000 bias per frame
            bias = ((1 - cond[_MASK].to(h.dtype)) * -10000.0).unsqueeze(1).repeat_interleave(frames, 0)
        ctx = T2VContext(
            temb.repeat_interleave(frames, 0), temb.repeat_interleave(tokens, 0), embedded, text, bias, n, frames
        )
        return h, ctx

    def run_block(self, i: int, h: torch.Tensor, ctx: T2VContext, skip: torch.Tensor | None) -> torch.Tensor:
        """Pair i on (N*F, T, hidden): (skip fusion), spatial block, temporal block over (N*T, F, hidden)."""
        if skip is not None:
            j = i - self.num_units // 2
            norm, linear = self.skip_norms[j], self.skip_linears[j].linear
            h = ops.skip_fuse(h, skip, norm.weight, norm.bias, linear.weight, linear.bias, norm.eps)
        h = self.transformer_blocks[i](h, None, ctx.text, ctx.text_bias, ctx.t_spatial, None, None)
        n, frames, tokens, hidden = ctx.batch, ctx.frames, h.shape[1], h.shape[2]
        h = h.view(n, frames, tokens, hidden).transpose(1, 2).reshape(n * tokens, frames, hidden)
        if i == 0 and frames > 1:
            h = h + self.temp_pos_embed.to(h.dtype)
        h = self.temporal_transformer_blocks[i](h, None, None, None, ctx.t_temporal, None, None)
        return h.view(n, tokens, frames, hidden).transpose(1, 2).reshape(n * frames, tokens, hidden)

    def finish(self, h: torch.Tensor, ctx: T2VContext) -> torch.Tensor:
        embedded = ctx.embedded_timestep.repeat_interleave(ctx.frames, 0)
        shift, scale = (self.scale_shift_table[None] + embedded[:, None]).chunk(2, dim=1)
        h = self.proj_out(self.norm_out(h) * (1 + scale) + shift)
        p, grid = self.config.patch_size, self.config.sample_size // self.config.patch_size
        frames = unpatchify(h, p, grid, self.out_channels)
        return frames.reshape(ctx.batch, ctx.frames, *frames.shape[1:]).permute(0, 2, 1, 3, 4)
