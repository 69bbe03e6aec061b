"""Hunyuan-DiT (``HunyuanDiT2DModel``; ``HunyuanDiTPipeline`` and its ControlNet pipeline).

Its native long skips (with L layers, 0..L/2-2 push their outputs, layer i > L/2 fuses the output of
L-1-i, L/2-1 and L/2 neither) are the stack's skip partners: a cached step keeps the state entering
the last ``shallow`` blocks, whose skips come from the first ``shallow`` ones. The transformer's own
forward runs: the ControlNet residuals it adds to each popped skip reach the blocks that run and go
with the skipped ones; the caller's residual list is passed as a copy (diffusers pops it). The fast
block runs ``HunyuanDiTBlock`` on the fused ops (its long skip on ``skip_fuse``)."""

from __future__ import annotations

import torch
from diffusers import HunyuanDiT2DModel
from diffusers.models.attention_processor import Attention, HunyuanAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.hunyuan_transformer_2d import AdaLayerNormShift, HunyuanDiTBlock

from .... import ops
from ....cache import SkipCache
from ..family import Family, FastBlock
from ..fast import no_hooks_eval, plain_gelu_mlp, plain_linears


def _hunyuan_attention_is_plain(attn, cross: bool) -> bool:
    """HunyuanAttnProcessor2_0's computation with nothing else: q/k LayerNorm or none, no group or
    spatial norm, no cross-attention norm, no residual or rescaling, linear projections (k and v with biases)."""
    return (
        type(attn) is Attention and type(attn.processor) is HunyuanAttnProcessor2_0 and attn.is_cross_attention == cross
        and attn.spatial_norm is None and attn.group_norm is None and not attn.norm_cross and not attn.residual_connection
        and attn.rescale_output_factor == 1.0 and all(n is None or type(n) is torch.nn.LayerNorm for n in (attn.norm_q, attn.norm_k))
        and plain_linears(attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]) and len(attn.to_out) == 2
        and attn.to_k.bias is not None and attn.to_v.bias is not None
        and type(attn.to_out[1]) is torch.nn.Dropout
    )  # fmt: skip


def _hunyuan_block_is_plain(block) -> bool:
    """Whether ``_hunyuan_block_fast`` computes exactly what this ``HunyuanDiTBlock`` does: the
    optional long skip (FP32LayerNorm over [x|skip] with affine parameters, then a Linear), the
    AdaLayerNormShift self-attention and the FP32LayerNorm cross-attention with diffusers' Hunyuan
    processor, the FP32LayerNorm tanh-GELU MLP, in eval mode with no hook, instance forward or
    replaced submodule. Checked on every call: a processor or hook set later is seen.
    (``set_chunk_feed_forward`` does not apply: HunyuanDiTBlock.forward never chunks.)"""
    if type(block) is not HunyuanDiTBlock or not no_hooks_eval(block):
        return False
    if block.skip_linear is not None and not (
        type(block.skip_norm) is FP32LayerNorm and block.skip_norm.weight is not None and block.skip_norm.bias is not None
        and plain_linears(block.skip_linear)
    ):  # fmt: skip
        return False
    return (
        type(block.norm1) is AdaLayerNormShift and type(block.norm1.norm) is FP32LayerNorm and plain_linears(block.norm1.linear)
        and type(block.norm1.silu) is torch.nn.SiLU and type(block.norm2) is FP32LayerNorm and type(block.norm3) is FP32LayerNorm
        and _hunyuan_attention_is_plain(block.attn1, cross=False) and _hunyuan_attention_is_plain(block.attn2, cross=True)
        and plain_gelu_mlp(block.ff.net)
    )  # fmt: skip


def _hunyuan_inputs_fit(block, h, ctx, skip) -> bool:
    """The fused ops take one dtype and device for activations and weights; anything else (mixed
    dtypes, where diffusers' modules would cast or raise) runs the block's forward."""
    weight = block.norm1.linear.weight
    tensors = [h, ctx["temb"], ctx["text"], *(() if skip is None else (skip,))]
    rotary = ctx["rotary"] or ()  # applied in fp32 whatever its dtype (the pipeline's tables are fp32)
    return all(x.dtype == weight.dtype for x in tensors) and all(x.device == weight.device for x in (*tensors, *rotary))


def _fp32_layer_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """diffusers' FP32LayerNorm: LayerNorm in fp32, cast back to x's dtype."""
    weight = None if norm.weight is None else norm.weight.float()
    bias = None if norm.bias is None else norm.bias.float()
    return torch.nn.functional.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).to(x.dtype)


def _hunyuan_attention(attn, x: torch.Tensor, context: torch.Tensor | None, rotary) -> torch.Tensor:
    """HunyuanAttnProcessor2_0 (checked by ``_hunyuan_attention_is_plain``) without its output
    projection: (N, T, heads * head_dim). ``context`` None: self-attention. The q/k LayerNorms and
    the rotary embedding run on the projections' own (N, T, heads, head_dim) layout (the same
    arithmetic as on diffusers' transposed one, without its copies)."""
    batch, tokens, _ = x.shape

    def heads(y, norm):
        y = y.view(batch, y.shape[1], attn.heads, -1)
        return (
            y
            if norm is None
            else torch.nn.functional.layer_norm(y, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        )

    q = heads(ops.linear(x, attn.to_q.weight, attn.to_q.bias), attn.norm_q)
    if context is None:  # one GEMM for k|v (weights concatenated per call): measured faster for small widths
        kv = ops.linear(x, torch.cat([attn.to_k.weight, attn.to_v.weight]), torch.cat([attn.to_k.bias, attn.to_v.bias]))
        k, v = kv.chunk(2, dim=-1)
    else:
        k, v = (
            ops.linear(context, attn.to_k.weight, attn.to_k.bias),
            ops.linear(context, attn.to_v.weight, attn.to_v.bias),
        )
    k, v = heads(k, attn.norm_k), heads(v, None)
    if rotary is not None:
        q = apply_rotary_emb(q, rotary, sequence_dim=1)
        if context is None:
            k = apply_rotary_emb(k, rotary, sequence_dim=1)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if q.shape == k.shape:
        out = ops.attention(q, k, v)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, tokens, -1)


def _residual_linear(h: torch.Tensor, x: torch.Tensor, linear) -> torch.Tensor:
    """h + linear(x), the addition in place on the projection's fresh output."""
    out = ops.linear(x, linear.weight, linear.bias)
    return out.add_(h)


def _hunyuan_block_fast(block, h, temb, text, rotary, skip) -> torch.Tensor:
    """diffusers' ``HunyuanDiTBlock`` (checked by ``_hunyuan_block_is_plain``) through the fused ops,
    reading the block's own parameters (nothing copied or cached): the long skip's LayerNorm over
    [h|skip] folded into its Linear (``skip_fuse``), the projections (``linear``), self-attention
    (``attention``), the MLP's first linear with its tanh-GELU (``linear_gelu``); norms, rotary
    embedding and cross-attention (keys of another length) in torch. h (N, T, D), temb (N, D),
    text (N, S, D_cross), rotary None or diffusers' (cos, sin) tables (T, head_dim), skip (N, T, D)
    for a block with a long skip. Equal to the block within rounding (the same operations, other kernels)."""
    if block.skip_linear is not None:
        norm, linear = block.skip_norm, block.skip_linear
        h = ops.skip_fuse(h, skip, norm.weight, norm.bias, linear.weight, linear.bias, norm.eps)
    norm1 = block.norm1
    shift = ops.linear(torch.nn.functional.silu(temb.float()).to(temb.dtype), norm1.linear.weight, norm1.linear.bias)
    x = _fp32_layer_norm(norm1.norm, h) + shift.unsqueeze(1)
    h = _residual_linear(h, _hunyuan_attention(block.attn1, x, None, rotary), block.attn1.to_out[0])
    x = _hunyuan_attention(block.attn2, _fp32_layer_norm(block.norm2, h), text, rotary)
    h = _residual_linear(h, x, block.attn2.to_out[0])
    net = block.ff.net
    x = ops.linear_gelu(_fp32_layer_norm(block.norm3, h), net[0].proj.weight, net[0].proj.bias)
    return _residual_linear(h, x, net[2])


def _hunyuan_block_run(block, a: dict):
    """The block's call as ``_hunyuan_block_fast``'s arguments; None for inputs it does not take."""
    h, skip = a["hidden_states"], a.get("skip")
    ctx = dict(temb=a["temb"], text=a["encoder_hidden_states"], rotary=a.get("image_rotary_emb"))
    if ctx["temb"] is None or ctx["text"] is None or not _hunyuan_inputs_fit(block, h, ctx, skip):
        return None
    return _hunyuan_block_fast(block, h, ctx["temb"], ctx["text"], ctx["rotary"], skip)


def _long_skip_partner(i: int, num_layers: int) -> int | None:
    return num_layers - 1 - i if i > num_layers // 2 else None


FAMILY = Family(
    transformer=HunyuanDiT2DModel,
    pipelines=("HunyuanDiTPipeline", "HunyuanDiTControlNetPipeline"),
    blocks=("blocks",),
    long_skips=_long_skip_partner,
    default_cache=SkipCache.preset("video"),  # interval 2, 1 shallow block, full while t >= 700, reset at t <= 50
    reference_depth=40,  # HunyuanDiT-v1.2
    fast_block=FastBlock(is_plain=lambda b: _hunyuan_block_is_plain(b), run=lambda b, a: _hunyuan_block_run(b, a)),
    consumed_arguments=("controlnet_block_samples",),
    source="the Skip-DiT release",
)
