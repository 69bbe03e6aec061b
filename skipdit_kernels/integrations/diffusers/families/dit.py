"""DiT (``DiTTransformer2DModel``, ``DiTPipeline``): no long skips, so a cached step keeps the
middle blocks' residual; the official class-to-image schedule; a fast block on the fused ops."""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import AttnProcessor2_0

from .... import ops
from ....cache import SkipCache
from ..family import Family, FastBlock
from ..fast import no_hooks_eval, plain_gelu_mlp, plain_linears


def _dit_block_is_plain(block) -> bool:
    """Whether ``_dit_block_fast`` computes exactly what this ``BasicTransformerBlock`` does: DiT's
    adaLN-Zero block (self-attention with diffusers' default processor and no q/k norm, no
    cross-attention, a tanh-GELU MLP, no chunking) in eval mode, with no hook, instance forward or
    LoRA-style replacement on it or any submodule (those must run, so the block's forward runs).
    Checked on every call: a processor or hook set later is seen."""
    if type(block) is not BasicTransformerBlock or block.norm_type != "ada_norm_zero":
        return False
    if (
        block.attn2 is not None
        or block.pos_embed is not None
        or block.only_cross_attention
        or block._chunk_size is not None
    ):
        return False
    if block.norm1.emb is None or block.norm1.norm.weight is not None or block.norm3.weight is not None:
        return False
    if not no_hooks_eval(block):
        return False
    attn, net = block.attn1, block.ff.net
    return (
        type(block.norm1.linear) is torch.nn.Linear and type(attn.processor) is AttnProcessor2_0 and attn.norm_q is None and attn.norm_k is None
        and attn.group_norm is None and attn.spatial_norm is None and not attn.residual_connection
        and attn.rescale_output_factor == 1.0 and not attn.is_cross_attention
        and plain_linears(attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]) and len(net) == 3 and plain_gelu_mlp(net)
    )  # fmt: skip


def _dit_block_fast(block, h: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """diffusers' DiT ``BasicTransformerBlock`` (checked by ``_dit_block_is_plain``) through the fused
    ops, reading the block's own parameters (nothing copied or cached): adaLN-Zero modulation
    (``adaln_modulate``), attention, the output projection and the MLP's second linear fused with
    their gated residuals (``linear_gated_residual``), the first linear with its tanh-GELU
    (``linear_gelu``). Equal to the block within fp32 rounding (the same operations, other
    kernels); the conditioning embedding is the block's own module."""
    norm1, attn, net = block.norm1, block.attn1, block.ff.net
    emb = norm1.emb(t, y, hidden_dtype=h.dtype)
    modulation = ops.linear(torch.nn.functional.silu(emb), norm1.linear.weight, norm1.linear.bias)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=1)
    x = ops.adaln_modulate(h, shift_msa, scale_msa, norm1.norm.eps)
    batch, tokens, hidden = h.shape

    def heads(linear):
        return ops.linear(x, linear.weight, linear.bias).view(batch, tokens, attn.heads, -1).transpose(1, 2)

    mixed = (
        ops.attention(heads(attn.to_q), heads(attn.to_k), heads(attn.to_v)).transpose(1, 2).reshape(batch, tokens, -1)
    )
    h = ops.linear_gated_residual(h, mixed, attn.to_out[0].weight, attn.to_out[0].bias, gate_msa)
    x = ops.adaln_modulate(h, shift_mlp, scale_mlp, block.norm3.eps)
    x = ops.linear_gelu(x, net[0].proj.weight, net[0].proj.bias)
    return ops.linear_gated_residual(h, x, net[2].weight, net[2].bias, gate_mlp)


def _dit_block_run(block, a: dict):
    """The block's call as ``_dit_block_fast``'s arguments; None for what it does not take."""
    if (
        a.get("attention_mask") is not None
        or a.get("encoder_hidden_states") is not None
        or a.get("cross_attention_kwargs")
    ):
        return None
    return _dit_block_fast(block, a["hidden_states"], a["timestep"], a["class_labels"])


FAMILY = Family(
    transformer=DiTTransformer2DModel,
    pipelines=("DiTPipeline",),
    blocks=("transformer_blocks",),
    default_cache=SkipCache(),  # interval 2, 4 shallow blocks of DiT-XL/2's 28
    reference_depth=28,
    fast_block=FastBlock(is_plain=lambda b: _dit_block_is_plain(b), run=lambda b, a: _dit_block_run(b, a)),
    source="official DiT-XL/2",
)
