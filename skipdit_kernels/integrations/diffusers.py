"""Skip-Cache inside diffusers pipelines, unchanged: HunyuanDiT, DiT and Latte.

    from skipdit_kernels.integrations.diffusers import apply_skip_cache
    apply_skip_cache(pipe)                      # the family's preset; or apply_skip_cache(pipe, SkipCache(...))
    image = pipe(prompt, num_inference_steps=100).images[0]

Supported transformers (each an adapter of the skip-stack contract, ``cache.protocol``):

=============================  ======================================  =================================
transformer                    pipelines                               unit / what a cached step reuses
=============================  ======================================  =================================
``HunyuanDiT2DModel``          HunyuanDiT, HunyuanDiT ControlNet       one block; the state entering the
                                                                       last ``shallow`` blocks (native
                                                                       long skips)
``DiTTransformer2DModel``      DiT                                     one block; the middle's residual
``LatteTransformer3DModel``    Latte                                   a (spatial, temporal) block pair;
                                                                       the middle's residual
=============================  ======================================  =================================

Each pipeline call is one Skip-Cache request: the pipeline's ``__call__`` opens a session
(``skipdit_kernels.enable_skip_cache(pipe.transformer, cache)``) around the call and closes it at the
end, also when the call raises or is interrupted, so no call sees another's features. The session
is context-local, so concurrent calls (threads) each run their own request. The timestep the
pipeline passes to the transformer (its first sample's) drives the schedule.

``__call__`` is a special method: Python looks it up on the type, so an instance attribute would be
ignored by ``pipe(...)``. The wrapped pipeline therefore gets a class of its own, a subclass of its
class with the same name that only adds the session around ``__call__``; ``remove_skip_cache``
puts the original class back. The pipeline's class itself (shared by every other instance) is never
modified, nor is any diffusers class.

HunyuanDiT's long skips (with L layers, 0..L/2-2 push their outputs, layer i > L/2 fuses the output
of L-1-i, L/2-1 and L/2 neither) are the stack's skip partners. ControlNet residuals, which diffusers
adds to the popped skip of layer i (residual L-1-i), are added for the layers that run on a cached
step and left out with the layers that don't; the caller's list is read, never popped.

``apply_skip_cache(..., fast_blocks=True)`` (the default) runs plain DiT and HunyuanDiT blocks
through skipdit_kernels' ops (``_dit_block_fast``, ``_hunyuan_block_fast``) on the blocks' own live
parameters; a block that is not plain at the moment of the call (``_dit_block_is_plain``,
``_hunyuan_block_is_plain``: hooks, another processor, train mode, ...) runs diffusers' forward.

CPU offload (``enable_model_cpu_offload``, ``enable_sequential_cpu_offload``, accelerate's hooks on
the transformer) works in either order with ``apply_skip_cache``: the transformer's own accelerate
hook runs once around every step, cached ones included (``_bypassed_offload_hook``).

``forecast="auto"`` is resolved at each call from the pipeline's scheduler (``scheduler_is_stochastic``):
the schedulers listed in ``DETERMINISTIC_SCHEDULERS`` (ODE solvers; DDIM with ``eta == 0``, the
DPM-Solvers without an ``sde-`` algorithm) get ``cache.forecast.AUTO_DETERMINISTIC_ORDER``, every
other scheduler (DDPM, ancestral and SDE samplers, and any scheduler not in the list) reuses (order
0, the published behaviour).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import weakref
from typing import Any

import torch

try:
    import diffusers
    from diffusers import DiTTransformer2DModel, HunyuanDiT2DModel, LatteTransformer3DModel
    from diffusers.models.activations import GELU
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0, HunyuanAttnProcessor2_0
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.normalization import FP32LayerNorm
    from diffusers.models.transformers.hunyuan_transformer_2d import AdaLayerNormShift, HunyuanDiTBlock
    from diffusers.models.modeling_outputs import Transformer2DModelOutput
except ImportError as exc:  # pragma: no cover - exercised only without diffusers
    raise ImportError(
        "skipdit_kernels.integrations.diffusers needs diffusers: pip install 'skipdit-kernels[diffusers]'"
    ) from exc

from .. import ops
from ..cache import Condition, SkipCache, as_skip_stack, disable_skip_cache, enable_skip_cache, register_skip_stack, skip_partners
from ..cache.forecast import AUTO_DETERMINISTIC_ORDER, check_forecast, resolve_forecast

__all__ = [
    "DETERMINISTIC_SCHEDULERS",
    "SUPPORTED_TRANSFORMERS",
    "apply_skip_cache",
    "default_cache",
    "dit_from_diffusers",
    "dit_to_diffusers",
    "remove_skip_cache",
    "scheduler_is_stochastic",
    "use_official_timestep_frequencies",
]

SUPPORTED_TRANSFORMERS = ("HunyuanDiT2DModel", "DiTTransformer2DModel", "LatteTransformer3DModel")


# -- adapters ---------------------------------------------------------------------------------------


def _bypassed_offload_hook(model: torch.nn.Module):
    """accelerate's hook on the transformer itself when a Skip-Cache step runs without it, else None.

    ``enable_model_cpu_offload`` (``CpuOffload``: moves the model and the inputs to the execution
    device, offloads the previous model) and sequential offload (``AlignDevicesHook``: loads the
    transformer's own parameters, such as HunyuanDiT's ``text_embedding_padding`` or Latte's
    ``scale_shift_table``, and moves the output back) put a hook around the transformer's forward
    (``module._hf_hook``, the wrapper at ``module.forward``). A session opened after the hook (every
    pipeline call) installs its forward over that wrapper and runs the blocks itself, so the step
    must run the hook's ``pre_forward`` and ``post_forward``; a session opened before the hook is
    wrapped by it (``module.forward`` is accelerate's wrapper) and the hook has run. The blocks'
    own hooks (sequential offload) run when the adapter calls the blocks."""
    hook = getattr(model, "_hf_hook", None)
    if hook is None:
        return None
    outer = model.__dict__.get("forward")
    wrapped_by_accelerate = (
        isinstance(outer, functools.partial) and getattr(outer.func, "__module__", None) == "accelerate.hooks"
        and len(outer.args) > 0 and outer.args[0] is model
    )  # fmt: skip
    return None if wrapped_by_accelerate else hook


class _DiffusersStack:
    """What the three adapters share: argument binding, timestep checks, the output wrapper."""

    channel_dim = 1

    def __init__(self, model: torch.nn.Module):
        self._model = weakref.ref(model)  # the adapter lives in a WeakKeyDictionary keyed by the model
        self._signature = inspect.signature(type(model).forward)

    @property
    def model(self):
        return self._model()

    def _bind(self, args: tuple, kwargs: dict) -> dict:
        try:
            bound = self._signature.bind(self.model, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{type(self.model).__name__}.forward: {exc}") from None
        bound.apply_defaults()
        return bound.arguments

    # A session's step starts with split_call and ends with wrap_output: the bypassed offload hook's
    # pre_forward and post_forward run there, around the step, as accelerate's wrapper would run them.
    def split_call(self, args, kwargs):
        hook = _bypassed_offload_hook(self.model)
        if hook is not None:
            args, kwargs = hook.pre_forward(self.model, *args, **kwargs)
        return self._split(self._bind(args, kwargs))

    def wrap_output(self, out: torch.Tensor, args: tuple, kwargs: dict):
        out = Transformer2DModelOutput(sample=out) if self._bind(args, kwargs)["return_dict"] else (out,)
        hook = _bypassed_offload_hook(self.model)
        return out if hook is None else hook.post_forward(self.model, out)

    def guided_channels(self, guide_all_channels: bool) -> int:
        return self.model.config.in_channels

    def skip_partner(self, i: int) -> int | None:
        return None

    @property
    def learn_sigma(self) -> bool:
        return self.model.out_channels == 2 * self.model.config.in_channels

    def _check_latent(self, x, dims: int, layout: str) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != dims or not x.dtype.is_floating_point:
            raise ValueError(f"hidden_states must be a floating {layout} tensor, got {getattr(x, 'shape', type(x).__name__)}")
        channels = self.model.config.in_channels
        if x.shape[1] != channels:
            raise ValueError(f"hidden_states has {x.shape[1]} channels (shape {tuple(x.shape)}); the model expects {channels}")
        p = self.model.config.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"hidden_states resolution {x.shape[-2]}x{x.shape[-1]} is not divisible by the patch size {p}")

    @staticmethod
    def _check_t(x: torch.Tensor, t) -> torch.Tensor:
        if t is None:
            raise ValueError("timestep is required")
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0 or t.shape == (1,):
            t = t.reshape(()).expand(n)
        if t.shape != (n,):
            raise ValueError(f"timestep must be a scalar or have shape ({n},) to match hidden_states {tuple(x.shape)}, got {tuple(t.shape)}")
        if t.dtype == torch.bool or t.dtype.is_complex:
            raise ValueError(f"timestep must hold timesteps (integers or floats), got {t.dtype}")
        return t

    @staticmethod
    def _check_batch(name: str, value, n: int, dims: int | None = None) -> None:
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
        if value.dim() == 0 or value.shape[0] != n or (dims is not None and value.dim() != dims):
            want = f"{dims}-d with " if dims is not None else ""
            raise ValueError(f"{name} must be {want}batch {n} (the batch of hidden_states), got shape {tuple(value.shape)}")

    def latent_shape_for(self, image_size: int) -> tuple[int, ...]:
        raise ValueError(f"image_size is not supported for {type(self).__name__}; its latents are {tuple(self.latent_shape)}")

    def condition(self, conditioning: Any) -> Condition:
        """A dict of the forward's conditioning tensors (the names of its keyword arguments)."""
        if not isinstance(conditioning, dict) or not all(isinstance(v, torch.Tensor) for v in conditioning.values()):
            raise TypeError(
                f"{type(self.model).__name__} takes its conditioning as a dict of tensors named like its "
                f"forward's arguments, got {type(conditioning).__name__}"
            )
        return Condition(conditioning)

    def null_condition(self, cond: Condition) -> Condition:
        raise ValueError(
            f"{type(self.model).__name__}'s unconditional branch is the pipeline's negative prompt embedding; "
            "run classifier-free guidance through the pipeline"
        )


class HunyuanDiTStack(_DiffusersStack):
    """``HunyuanDiT2DModel`` (and its ControlNet residuals) as a skip stack; unit = block.

    Condition keys: ``encoder_hidden_states`` (N, S, D_clip), ``text_embedding_mask`` (N, S),
    ``encoder_hidden_states_t5`` (N, S5, D_t5), ``text_embedding_mask_t5`` (N, S5), optionally
    ``image_meta_size`` (N, 6), ``style`` (N,) and ``controlnet_<j>`` (the ControlNet residual
    added to the skip that unit L-1-j fuses); static: ``image_rotary_emb``, the pipeline's (cos, sin)
    (tokens, head_dim) rotary tables, shared by every sample.
    """

    def __init__(self, model: HunyuanDiT2DModel):
        super().__init__(model)
        layers = model.config.num_layers
        if layers % 2 or layers < 4:
            raise ValueError(
                f"HunyuanDiT2DModel with num_layers={layers}: its forward pairs pushed and popped skips only "
                "for an even number of layers >= 4"
            )
        self.num_units = layers
        self.num_skips = layers // 2 - 1
        self.latent_shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
        #: run plain HunyuanDiT blocks through skipdit_kernels.ops (``_hunyuan_block_fast``); False: diffusers' own forward
        self.fast_blocks = True

    @property
    def learn_sigma(self) -> bool:
        return bool(self.model.config.learn_sigma)

    def skip_partner(self, i: int) -> int | None:
        return self.num_units - 1 - i if i > self.num_units // 2 else None

    def _split(self, a: dict):
        cond = {
            k: a[k]
            for k in ("encoder_hidden_states", "text_embedding_mask", "encoder_hidden_states_t5", "text_embedding_mask_t5",
                      "image_meta_size", "style")
            if a[k] is not None
        }  # fmt: skip
        x = a["hidden_states"]
        static = {}
        if a["image_rotary_emb"] is not None:
            static["image_rotary_emb"] = tuple(a["image_rotary_emb"])
        controls = a["controlnet_block_samples"]
        if controls is not None:
            if len(controls) != self.num_skips:
                raise ValueError(
                    f"controlnet_block_samples has {len(controls)} residuals; the model has {self.num_skips} skip "
                    "connections (the number of controls must equal the number of skip connections)"
                )
            cond.update((f"controlnet_{j}", c) for j, c in enumerate(controls))
        return x, a["timestep"], Condition(cond, static)

    def check_inputs(self, x, t, cond):
        self._check_latent(x, 4, "(N, C, H, W)")
        t = self._check_t(x, t)
        n = x.shape[0]
        for name in ("encoder_hidden_states", "text_embedding_mask", "encoder_hidden_states_t5", "text_embedding_mask_t5"):
            if name not in cond:
                raise ValueError(f"HunyuanDiT2DModel needs {name}")
        cfg = self.model.config
        for name, dims in (("encoder_hidden_states", 3), ("text_embedding_mask", 2), ("encoder_hidden_states_t5", 3),
                           ("text_embedding_mask_t5", 2), ("image_meta_size", 2), ("style", 1)):  # fmt: skip
            if name in cond:
                self._check_batch(name, cond[name], n, dims)
        if cfg.use_style_cond_and_image_meta_size and not ("image_meta_size" in cond and "style" in cond):
            raise ValueError("this HunyuanDiT2DModel (use_style_cond_and_image_meta_size) needs image_meta_size and style")
        tokens = (x.shape[-2] // cfg.patch_size) * (x.shape[-1] // cfg.patch_size)
        rotary = cond.static.get("image_rotary_emb")
        if rotary is not None and rotary[0].shape[0] != tokens:
            raise ValueError(f"image_rotary_emb covers {rotary[0].shape[0]} tokens; hidden_states {tuple(x.shape)} has {tokens}")
        for j in range(self.num_skips):
            if f"controlnet_{j}" in cond:
                c = cond[f"controlnet_{j}"]
                if c.shape != (n, tokens, self.model.inner_dim):
                    raise ValueError(f"controlnet_block_samples[{j}] must have shape {(n, tokens, self.model.inner_dim)}, got {tuple(c.shape)}")
        return t, cond

    def embed(self, x, t, cond):
        m = self.model
        height, width = x.shape[-2:]
        h = m.pos_embed(x)
        t5 = cond["encoder_hidden_states_t5"]
        temb = m.time_extra_emb(t, t5, cond.get("image_meta_size"), cond.get("style"), hidden_dtype=t.dtype)
        batch, seq, _ = t5.shape
        t5 = m.text_embedder(t5.view(-1, t5.shape[-1])).view(batch, seq, -1)
        text = torch.cat([cond["encoder_hidden_states"], t5], dim=1)
        mask = torch.cat([cond["text_embedding_mask"], cond["text_embedding_mask_t5"]], dim=-1).unsqueeze(2).bool()
        text = torch.where(mask, text, m.text_embedding_padding)
        rotary = cond.static.get("image_rotary_emb")
        controls = {j: cond[f"controlnet_{j}"] for j in range(self.num_skips) if f"controlnet_{j}" in cond}
        return h, dict(temb=temb, text=text, rotary=rotary, controls=controls, height=height, width=width)

    def run_block(self, i, h, ctx, skip):
        if skip is not None:
            control = ctx["controls"].get(self.num_units - 1 - i)
            if control is not None:
                skip = skip + control
        block = self.model.blocks[i]
        if self.fast_blocks and _hunyuan_block_is_plain(block) and _hunyuan_inputs_fit(block, h, ctx, skip):
            return _hunyuan_block_fast(block, h, ctx["temb"], ctx["text"], ctx["rotary"], skip)
        return block(h, temb=ctx["temb"], encoder_hidden_states=ctx["text"], image_rotary_emb=ctx["rotary"], skip=skip)

    def finish(self, h, ctx):
        m = self.model
        h = m.proj_out(m.norm_out(h, ctx["temb"].to(torch.float32)))
        p = m.pos_embed.patch_size
        height, width = ctx["height"] // p, ctx["width"] // p
        h = h.reshape(h.shape[0], height, width, p, p, m.out_channels)
        h = torch.einsum("nhwpqc->nchpwq", h)
        return h.reshape(h.shape[0], m.out_channels, height * p, width * p)


def _no_hooks_eval(block) -> bool:
    """No global hook, and no hook, instance forward (a wrapper, a patch), accelerate hook or train
    mode on the block or any submodule: what the fast paths need to replace the block's forward."""
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return False
    return not any(
        m.training or m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ or hasattr(m, "_hf_hook")
        for m in block.modules()
    )


def _plain_linears(*modules) -> bool:
    return all(type(m) is torch.nn.Linear for m in modules)


def _plain_gelu_mlp(net) -> bool:
    """diffusers' FeedForward ``net`` as [tanh-GELU(Linear), Dropout, Linear] (+ a final Dropout);
    the dropouts are identities in eval mode."""
    return (
        len(net) in (3, 4) and type(net[0]) is GELU and net[0].approximate == "tanh" and _plain_linears(net[0].proj, net[2])
        and all(type(m) is torch.nn.Dropout for m in (net[1], *net[3:]))
    )  # fmt: skip


def _hunyuan_attention_is_plain(attn, cross: bool) -> bool:
    """HunyuanAttnProcessor2_0's computation with nothing else: q/k LayerNorm or none, no group or
    spatial norm, no cross-attention norm, no residual or rescaling, linear projections (k and v with biases)."""
    return (
        type(attn) is Attention and type(attn.processor) is HunyuanAttnProcessor2_0 and attn.is_cross_attention == cross
        and attn.spatial_norm is None and attn.group_norm is None and not attn.norm_cross and not attn.residual_connection
        and attn.rescale_output_factor == 1.0 and all(n is None or type(n) is torch.nn.LayerNorm for n in (attn.norm_q, attn.norm_k))
        and _plain_linears(attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]) and len(attn.to_out) == 2
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
    if type(block) is not HunyuanDiTBlock or not _no_hooks_eval(block):
        return False
    if block.skip_linear is not None and not (
        type(block.skip_norm) is FP32LayerNorm and block.skip_norm.weight is not None and block.skip_norm.bias is not None
        and _plain_linears(block.skip_linear)
    ):  # fmt: skip
        return False
    return (
        type(block.norm1) is AdaLayerNormShift and type(block.norm1.norm) is FP32LayerNorm and _plain_linears(block.norm1.linear)
        and type(block.norm1.silu) is torch.nn.SiLU and type(block.norm2) is FP32LayerNorm and type(block.norm3) is FP32LayerNorm
        and _hunyuan_attention_is_plain(block.attn1, cross=False) and _hunyuan_attention_is_plain(block.attn2, cross=True)
        and _plain_gelu_mlp(block.ff.net)
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
        return y if norm is None else torch.nn.functional.layer_norm(y, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    q = heads(ops.linear(x, attn.to_q.weight, attn.to_q.bias), attn.norm_q)
    if context is None:  # one GEMM for k|v (weights concatenated per call): measured faster for small widths
        kv = ops.linear(x, torch.cat([attn.to_k.weight, attn.to_v.weight]), torch.cat([attn.to_k.bias, attn.to_v.bias]))
        k, v = kv.chunk(2, dim=-1)
    else:
        k, v = ops.linear(context, attn.to_k.weight, attn.to_k.bias), ops.linear(context, attn.to_v.weight, attn.to_v.bias)
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


class DiTTransformerStack(_DiffusersStack):
    """``DiTTransformer2DModel`` as a skip stack without long skips (residual cache); unit = block.
    Condition: ``{"class_labels": (N,) integers}``; every block embeds (timestep, class) itself."""

    def __init__(self, model: DiTTransformer2DModel):
        super().__init__(model)
        self.num_units = model.config.num_layers
        self.latent_shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
        self.num_classes = model.config.num_embeds_ada_norm
        #: run plain DiT blocks through skipdit_kernels.ops (``_dit_block_fast``); False: diffusers' own forward
        self.fast_blocks = True

    def _split(self, a: dict):
        if a["cross_attention_kwargs"]:
            raise ValueError("DiTTransformer2DModel under Skip-Cache takes no cross_attention_kwargs")
        return a["hidden_states"], a["timestep"], Condition({"class_labels": a["class_labels"]})

    def condition(self, class_labels) -> Condition:
        labels = torch.as_tensor(class_labels).reshape(-1)
        if labels.numel() == 0 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"class labels must be integers in 0..{self.num_classes - 1}, got {labels.tolist()[:8]}")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"class labels must be in 0..{self.num_classes - 1}, got min {int(labels.min())} max {int(labels.max())}")
        return Condition({"class_labels": labels.long()})

    def null_condition(self, cond: Condition) -> Condition:
        if not self.model.transformer_blocks[0].norm1.emb.class_embedder.dropout_prob > 0:
            raise ValueError("classifier-free guidance needs a model with a null class (class dropout > 0)")
        return Condition({"class_labels": torch.full_like(cond["class_labels"], self.num_classes)})

    def check_inputs(self, x, t, cond):
        self._check_latent(x, 4, "(N, C, H, W)")
        t = self._check_t(x, t)
        y = cond["class_labels"]
        if y is None:
            raise ValueError("DiTTransformer2DModel needs class_labels")
        y = torch.as_tensor(y, device=x.device)
        self._check_batch("class_labels", y, x.shape[0], 1)
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise ValueError(f"class_labels must be integers, got {y.dtype}")
        return t, Condition({"class_labels": y})

    def embed(self, x, t, cond):
        return self.model.pos_embed(x), (t, cond["class_labels"])

    def run_block(self, i, h, ctx, skip):
        t, y = ctx
        block = self.model.transformer_blocks[i]
        if self.fast_blocks and _dit_block_is_plain(block):
            return _dit_block_fast(block, h, t, y)
        return block(
            h, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None, timestep=t,
            cross_attention_kwargs=None, class_labels=y,
        )  # fmt: skip

    def finish(self, h, ctx):
        m = self.model
        t, y = ctx
        conditioning = m.transformer_blocks[0].norm1.emb(t, y, hidden_dtype=h.dtype)
        shift, scale = m.proj_out_1(torch.nn.functional.silu(conditioning)).chunk(2, dim=1)
        h = m.proj_out_2(m.norm_out(h) * (1 + scale[:, None]) + shift[:, None])
        p = m.patch_size
        side = int(h.shape[1] ** 0.5)
        h = h.reshape(-1, side, side, p, p, m.out_channels)
        h = torch.einsum("nhwpqc->nchpwq", h)
        return h.reshape(-1, m.out_channels, side * p, side * p)


def _dit_block_is_plain(block) -> bool:
    """Whether ``_dit_block_fast`` computes exactly what this ``BasicTransformerBlock`` does: DiT's
    adaLN-Zero block (self-attention with diffusers' default processor and no q/k norm, no
    cross-attention, a tanh-GELU MLP, no chunking) in eval mode, with no hook, instance forward or
    LoRA-style replacement on it or any submodule (those must run, so the block's forward runs).
    Checked on every call: a processor or hook set later is seen."""
    if type(block) is not BasicTransformerBlock or block.norm_type != "ada_norm_zero":
        return False
    if block.attn2 is not None or block.pos_embed is not None or block.only_cross_attention or block._chunk_size is not None:
        return False
    if block.norm1.emb is None or block.norm1.norm.weight is not None or block.norm3.weight is not None:
        return False
    if not _no_hooks_eval(block):
        return False
    attn, net = block.attn1, block.ff.net
    return (
        type(block.norm1.linear) is torch.nn.Linear and type(attn.processor) is AttnProcessor2_0 and attn.norm_q is None and attn.norm_k is None
        and attn.group_norm is None and attn.spatial_norm is None and not attn.residual_connection
        and attn.rescale_output_factor == 1.0 and not attn.is_cross_attention
        and _plain_linears(attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]) and len(net) == 3 and _plain_gelu_mlp(net)
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

    mixed = ops.attention(heads(attn.to_q), heads(attn.to_k), heads(attn.to_v)).transpose(1, 2).reshape(batch, tokens, -1)
    h = ops.linear_gated_residual(h, mixed, attn.to_out[0].weight, attn.to_out[0].bias, gate_msa)
    x = ops.adaln_modulate(h, shift_mlp, scale_mlp, block.norm3.eps)
    x = ops.linear_gelu(x, net[0].proj.weight, net[0].proj.bias)
    return ops.linear_gated_residual(h, x, net[2].weight, net[2].bias, gate_mlp)


class LatteStack(_DiffusersStack):
    """``LatteTransformer3DModel`` as a skip stack without long skips (residual cache); unit = the
    (spatial, temporal) block pair i. The hidden state between units is in the spatial layout
    (N*F, T, D); the temporal block sees (N*T, F, D). Condition: ``encoder_hidden_states`` (N, S, D),
    optionally ``encoder_attention_mask``; static: ``temporal`` (the forward's
    ``enable_temporal_attentions``, a host flag; True when absent)."""

    def __init__(self, model: LatteTransformer3DModel):
        super().__init__(model)
        cfg = model.config
        self.num_units = cfg.num_layers
        self.latent_shape = (cfg.in_channels, cfg.video_length, cfg.sample_size, cfg.sample_size)

    def _split(self, a: dict):
        x = a["hidden_states"]
        cond = {"encoder_hidden_states": a["encoder_hidden_states"]}
        if a["encoder_attention_mask"] is not None:
            cond["encoder_attention_mask"] = a["encoder_attention_mask"]
        static = {} if a["enable_temporal_attentions"] else {"temporal": False}
        return x, a["timestep"], Condition(cond, static)

    def check_inputs(self, x, t, cond):
        self._check_latent(x, 5, "(N, C, F, H, W)")
        t = self._check_t(x, t)
        if cond["encoder_hidden_states"] is None:
            raise ValueError("LatteTransformer3DModel needs encoder_hidden_states")
        self._check_batch("encoder_hidden_states", cond["encoder_hidden_states"], x.shape[0], 3)
        frames = x.shape[2]
        if frames > 1 and cond.static.get("temporal", True) and frames > self.model.temp_pos_embed.shape[1]:
            raise ValueError(f"hidden_states has {frames} frames; the model's temporal positions cover {self.model.temp_pos_embed.shape[1]}")
        return t, cond

    def embed(self, x, t, cond):
        m = self.model
        batch, channels, frames, height, width = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(-1, channels, height, width)
        p = m.config.patch_size
        grid_h, grid_w = height // p, width // p
        h = m.pos_embed(x)
        timestep, embedded_timestep = m.adaln_single(
            t, added_cond_kwargs={"resolution": None, "aspect_ratio": None}, batch_size=batch, hidden_dtype=h.dtype
        )
        text = m.caption_projection(cond["encoder_hidden_states"])
        text_spatial = text.repeat_interleave(frames, dim=0, output_size=text.shape[0] * frames).view(-1, text.shape[-2], text.shape[-1])
        t_spatial = timestep.repeat_interleave(frames, dim=0, output_size=timestep.shape[0] * frames).view(-1, timestep.shape[-1])
        t_temp = timestep.repeat_interleave(grid_h * grid_w, dim=0, output_size=timestep.shape[0] * grid_h * grid_w).view(
            -1, timestep.shape[-1]
        )
        ctx = dict(
            batch=batch, frames=frames, grid=(grid_h, grid_w), text=text_spatial, mask=cond.get("encoder_attention_mask"),
            t_spatial=t_spatial, t_temp=t_temp, embedded_timestep=embedded_timestep, temporal=cond.static.get("temporal", True),
        )  # fmt: skip
        return h, ctx

    def run_block(self, i, h, ctx, skip):
        m = self.model
        h = m.transformer_blocks[i](h, None, ctx["text"], ctx["mask"], ctx["t_spatial"], None, None)
        if ctx["temporal"]:
            batch = ctx["batch"]
            h = h.reshape(batch, -1, h.shape[-2], h.shape[-1]).permute(0, 2, 1, 3)
            h = h.reshape(-1, h.shape[-2], h.shape[-1])
            if i == 0 and ctx["frames"] > 1:
                h = h + m.temp_pos_embed.to(h.dtype)
            h = m.temporal_transformer_blocks[i](h, None, None, None, ctx["t_temp"], None, None)
            h = h.reshape(batch, -1, h.shape[-2], h.shape[-1]).permute(0, 2, 1, 3)
            h = h.reshape(-1, h.shape[-2], h.shape[-1])
        return h

    def finish(self, h, ctx):
        m = self.model
        frames = ctx["frames"]
        emb = ctx["embedded_timestep"]
        emb = emb.repeat_interleave(frames, dim=0, output_size=emb.shape[0] * frames).view(-1, emb.shape[-1])
        shift, scale = (m.scale_shift_table[None] + emb[:, None]).chunk(2, dim=1)
        h = m.proj_out(m.norm_out(h) * (1 + scale) + shift)
        p = m.config.patch_size
        grid_h, grid_w = ctx["grid"]
        h = h.reshape(-1, grid_h, grid_w, p, p, m.out_channels)
        h = torch.einsum("nhwpqc->nchpwq", h)
        out = h.reshape(-1, m.out_channels, grid_h * p, grid_w * p)
        return out.reshape(ctx["batch"], -1, *out.shape[-3:]).permute(0, 2, 1, 3, 4)


register_skip_stack(HunyuanDiT2DModel, HunyuanDiTStack)
register_skip_stack(DiTTransformer2DModel, DiTTransformerStack)
register_skip_stack(LatteTransformer3DModel, LatteStack)

_ADAPTERS = {HunyuanDiT2DModel: HunyuanDiTStack, DiTTransformer2DModel: DiTTransformerStack, LatteTransformer3DModel: LatteStack}


def _check_supported(transformer) -> None:
    if not isinstance(transformer, tuple(_ADAPTERS)):
        raise TypeError(
            f"Skip-Cache for diffusers supports {', '.join(SUPPORTED_TRANSFORMERS)} (and pipelines whose "
            f"`transformer` is one of them); got {type(transformer).__name__}"
        )


# -- schedule defaults and forecast -----------------------------------------------------------------


def default_cache(transformer) -> SkipCache:
    """The family's preset: HunyuanDiT and Latte the Skip-DiT release's video/Hunyuan-DiT schedule
    (``SkipCache.preset("video")``: interval 2, 1 shallow block, full while t >= 700, reset at
    t <= 50), DiT the official class-to-image one (``SkipCache()``: interval 2, 4 shallow blocks)."""
    _check_supported(transformer)
    return SkipCache() if isinstance(transformer, DiTTransformer2DModel) else SkipCache.preset("video")


#: Scheduler classes that integrate an ODE (no noise injected per step) when their config and the
#: call say so; see ``scheduler_is_stochastic``.
DETERMINISTIC_SCHEDULERS = (
    "DDIMScheduler",  # with eta == 0
    "DPMSolverMultistepScheduler",  # algorithm_type without "sde"
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "PNDMScheduler",
    "IPNDMScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "EulerDiscreteScheduler",  # the pipelines here never pass s_churn
    "FlowMatchEulerDiscreteScheduler",  # without stochastic_sampling
)


def scheduler_is_stochastic(scheduler, eta: float = 0.0) -> bool:
    """Whether ``scheduler`` injects fresh noise each step. Deterministic only for an instance of a
    class named in ``DETERMINISTIC_SCHEDULERS`` (by exact class, so a subclass that changes the
    update is not assumed deterministic) whose config has no SDE variant and, for DDIM, with the
    call's ``eta == 0``; everything else, unknown schedulers included, counts as stochastic, which
    makes ``forecast="auto"`` reuse (the published behaviour)."""
    name = type(scheduler).__name__
    if name not in DETERMINISTIC_SCHEDULERS or getattr(diffusers, name, None) is not type(scheduler):
        return True
    config = getattr(scheduler, "config", {})
    if "sde" in str(config.get("algorithm_type", "")) or config.get("stochastic_sampling", False):
        return True
    return name == "DDIMScheduler" and float(eta or 0.0) != 0.0


def _with_forecast(cache: SkipCache, forecast) -> SkipCache:
    if forecast is None:
        return cache
    check_forecast(forecast)
    return dataclasses.replace(cache, forecast=forecast)


# -- the front door ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Applied:
    cache: SkipCache
    base: type  # the pipeline's own class


_PIPES: "weakref.WeakKeyDictionary[Any, _Applied]" = weakref.WeakKeyDictionary()
_CLASSES: dict[type, type] = {}
_LOCK = threading.Lock()


def _call_with_skip_cache(pipe, base: type, args: tuple, kwargs: dict):
    applied = _PIPES.get(pipe)
    if applied is None:  # removed after this class was looked up
        return base.__call__(pipe, *args, **kwargs)
    cache = applied.cache
    if cache.forecast == "auto":
        params = inspect.signature(base.__call__).bind_partial(pipe, *args, **kwargs)
        params.apply_defaults()
        stochastic = scheduler_is_stochastic(pipe.scheduler, params.arguments.get("eta", 0.0))
        cache = cache.with_forecast(resolve_forecast("auto", stochastic=stochastic))
    transformer = pipe.transformer
    _check_supported(transformer)
    with enable_skip_cache(transformer, cache):
        return base.__call__(pipe, *args, **kwargs)


def _skip_cached_class(base: type) -> type:
    """The per-pipeline class: ``base`` with the session around ``__call__`` (made once per base)."""
    with _LOCK:
        cls = _CLASSES.get(base)
        if cls is None:

            def __call__(self, *args, **kwargs):
                return _call_with_skip_cache(self, base, args, kwargs)

            __call__.__doc__ = base.__call__.__doc__
            __call__.__signature__ = inspect.signature(base.__call__)
            cls = _CLASSES[base] = type(
                base.__name__, (base,), {"__call__": __call__, "__module__": base.__module__, "__qualname__": base.__qualname__}
            )
        return cls


def apply_skip_cache(
    target, cache: SkipCache | None = None, *, forecast: int | str | None = None, fast_blocks: bool = True
):
    """Skip-Cache for a diffusers pipeline or a bare transformer.

    ``target``: a pipeline whose ``transformer`` is one of ``SUPPORTED_TRANSFORMERS`` (every later call
    of it is one Skip-Cache request), or such a transformer itself (then this starts one step-by-step
    request in the calling context and returns its ``SkipCacheSession``; it ends when closed, or with
    ``remove_skip_cache``; a rising timestep or new shapes start a fresh trajectory). ``cache``: the
    schedule (default: ``default_cache(transformer)``); ``forecast`` overrides ``cache.forecast``
    (0..3 or ``"auto"``; ``"auto"`` needs a pipeline, whose scheduler decides at each call).
    ``fast_blocks``: run the blocks of a ``DiTTransformer2DModel`` or ``HunyuanDiT2DModel`` through
    skipdit_kernels' fused ops while a request runs (the block's own parameters; equal to diffusers'
    block within fp32 rounding, 1.2-2x faster per block on CPU; blocks with hooks, other attention
    processors or other configurations run diffusers' forward, checked at every call); False runs
    diffusers' own block forward (bit-identical to the uncached model on full steps). Outside a request the transformer is diffusers' own.
    Applying again replaces the schedule. Returns the pipeline (or the session).
    TypeError naming the supported classes for anything else; ValueError for a schedule that does
    not fit the transformer (checked now, for the shallow depth and the skips)."""
    if cache is not None and not isinstance(cache, SkipCache):
        raise TypeError(f"apply_skip_cache expects a SkipCache, got {type(cache).__name__}")
    transformer = target if isinstance(target, torch.nn.Module) else getattr(target, "transformer", None)
    _check_supported(transformer)
    cache = _with_forecast(cache if cache is not None else default_cache(transformer), forecast)
    stack = as_skip_stack(transformer)
    cache.check_units(stack.num_units, skip_partners(stack))
    if hasattr(stack, "fast_blocks"):
        stack.fast_blocks = bool(fast_blocks)
    if target is transformer:
        if cache.forecast == "auto":
            raise ValueError(
                "forecast='auto' is resolved from a pipeline's scheduler; for a bare transformer give an "
                f"explicit order (0 reuses; {AUTO_DETERMINISTIC_ORDER} is the choice for deterministic samplers)"
            )
        return enable_skip_cache(transformer, cache)
    base = _PIPES[target].base if target in _PIPES else type(target)
    _PIPES[target] = _Applied(cache, base)
    target.__class__ = _skip_cached_class(base)
    return target


def remove_skip_cache(target) -> None:
    """Undo ``apply_skip_cache``: a pipeline gets its own class back (calls already running finish
    their request); a bare transformer's sessions close and its forward is its own again. A no-op
    for a target without Skip-Cache."""
    if isinstance(target, torch.nn.Module):
        disable_skip_cache(target)
        return
    applied = _PIPES.pop(target, None)
    if applied is not None and type(target) is _CLASSES.get(applied.base):
        target.__class__ = applied.base


# -- DiT weight conversion --------------------------------------------------------------------------


def use_official_timestep_frequencies(transformer: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Make a ``DiTTransformer2DModel`` embed timesteps as the official DiT does: frequencies
    exp(-ln(10000) i / half), where diffusers' ``time_proj`` divides by half - 1
    (``downscale_freq_shift=1``; 2-3% relative output difference with identical weights). It sets
    that attribute to 0 on every block's ``norm1.emb.time_proj``. It is an attribute, not a config
    entry: it does not survive ``save_pretrained``/``from_pretrained``, so call this after loading."""
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return transformer


def dit_to_diffusers(model) -> DiTTransformer2DModel:
    """A ``DiTTransformer2DModel`` with ``model``'s weights (a ``skipdit_kernels.DiT``; ``SkipDiT`` has
    long skips diffusers' DiT lacks: ValueError). The result uses the official timestep frequencies
    (``use_official_timestep_frequencies``; set it again after reloading) and ``norm_eps=1e-6`` (the
    official MLP LayerNorm eps; diffusers' default is 1e-5), so its outputs equal ``model``'s within
    fp32 rounding. Needs a null class (``class_dropout_prob > 0``): diffusers' label table always has one."""
    from ..models import DiT, SkipDiT

    if isinstance(model, SkipDiT) or not isinstance(model, DiT):
        raise ValueError(f"dit_to_diffusers converts a skipdit_kernels.DiT (without long skips), got {type(model).__name__}")
    cfg = model.config
    if not model.y_embedder.has_null_class:
        raise ValueError("dit_to_diffusers needs a DiT with class_dropout_prob > 0: diffusers' label table has a null row")
    heads = cfg["num_heads"]
    transformer = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=cfg["hidden_size"] // heads, in_channels=cfg["in_channels"],
        out_channels=model.out_channels, num_layers=cfg["depth"], sample_size=cfg["input_size"],
        patch_size=cfg["patch_size"], num_embeds_ada_norm=cfg["num_classes"], norm_eps=1e-6,
    )  # fmt: skip
    if int(transformer.transformer_blocks[0].ff.net[0].proj.out_features) != int(cfg["hidden_size"] * cfg["mlp_ratio"]):
        raise ValueError(f"diffusers' DiT has mlp_ratio 4; this model has {cfg['mlp_ratio']}")
    transformer.load_state_dict(_to_diffusers_state(model.state_dict(), cfg["depth"]), strict=True)
    transformer.pos_embed.pos_embed.data.copy_(model.pos_embed.data)
    return use_official_timestep_frequencies(transformer.to(next(model.parameters()).dtype).eval())


def dit_from_diffusers(transformer: DiTTransformer2DModel):
    """A ``skipdit_kernels.DiT`` with ``transformer``'s weights. The DiT computes the official
    timestep frequencies and MLP LayerNorm eps 1e-6, so its outputs equal the transformer's within
    fp32 rounding when the transformer has ``use_official_timestep_frequencies`` applied and
    ``norm_eps == 1e-6``; otherwise they differ by diffusers' deviations from the official model
    (the timestep frequencies: 2-3% relative; eps 1e-5: about 1e-5 relative). ValueError when the
    per-block copies of the timestep/class embedders differ (the DiT has one of each)."""
    from ..models import DiT

    if not isinstance(transformer, DiTTransformer2DModel):
        raise TypeError(f"dit_from_diffusers converts a DiTTransformer2DModel, got {type(transformer).__name__}")
    cfg = transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    emb = transformer.transformer_blocks[0].norm1.emb
    model = DiT(
        input_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels, hidden_size=hidden,
        depth=cfg.num_layers, num_heads=cfg.num_attention_heads, mlp_ratio=4.0,
        class_dropout_prob=emb.class_embedder.dropout_prob, num_classes=cfg.num_embeds_ada_norm,
        learn_sigma=transformer.out_channels == 2 * cfg.in_channels,
    )  # fmt: skip
    if model.out_channels != transformer.out_channels:
        raise ValueError(f"out_channels {transformer.out_channels} is neither in_channels nor 2*in_channels")
    state = transformer.state_dict()
    for i in range(1, cfg.num_layers):
        for name in ("timestep_embedder.linear_1", "timestep_embedder.linear_2", "class_embedder.embedding_table"):
            for kind in ("weight", "bias"):
                key = f"transformer_blocks.{i}.norm1.emb.{name}.{kind}"
                first = f"transformer_blocks.0.norm1.emb.{name}.{kind}"
                if key in state and not torch.equal(state[key], state[first]):
                    raise ValueError(f"{key} differs from block 0's: skipdit_kernels.DiT shares one embedder")
    converted = _from_diffusers_state(state, cfg.num_layers)
    converted["pos_embed"] = model.pos_embed.data.clone()
    model.load_state_dict(converted, strict=True)
    return model.to(transformer.dtype).eval()


def _block_pairs(i: int) -> list[tuple[str, str]]:
    d, o = f"transformer_blocks.{i}.", f"blocks.{i}."
    return [
        (o + "attn.proj", d + "attn1.to_out.0"),
        (o + "mlp.fc1", d + "ff.net.0.proj"),
        (o + "mlp.fc2", d + "ff.net.2"),
        (o + "adaLN_modulation.1", d + "norm1.linear"),
    ]


_SHARED = [
    ("x_embedder.proj", "pos_embed.proj"),
    ("final_layer.adaLN_modulation.1", "proj_out_1"),
    ("final_layer.linear", "proj_out_2"),
]
_EMBEDDERS = [
    ("t_embedder.mlp.0", "norm1.emb.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "norm1.emb.timestep_embedder.linear_2"),
]


def _to_diffusers_state(ours: dict, depth: int) -> dict:
    out = {}

    def copy(o: str, d: str, kinds=("weight", "bias")):
        for kind in kinds:
            out[f"{d}.{kind}"] = ours[f"{o}.{kind}"].clone()

    for o, d in _SHARED:
        copy(o, d)
    for i in range(depth):
        for o, d in _block_pairs(i):
            copy(o, d)
        for o, d in _EMBEDDERS:
            copy(o, f"transformer_blocks.{i}.{d}")
        copy("y_embedder.embedding_table", f"transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table", ("weight",))
        q, k, v = ours[f"blocks.{i}.attn.qkv.weight"].chunk(3)
        qb, kb, vb = ours[f"blocks.{i}.attn.qkv.bias"].chunk(3)
        for name, w, b in (("to_q", q, qb), ("to_k", k, kb), ("to_v", v, vb)):
            out[f"transformer_blocks.{i}.attn1.{name}.weight"] = w.clone()
            out[f"transformer_blocks.{i}.attn1.{name}.bias"] = b.clone()
    return out


def _from_diffusers_state(theirs: dict, depth: int) -> dict:
    out = {}

    def copy(o: str, d: str, kinds=("weight", "bias")):
        for kind in kinds:
            out[f"{o}.{kind}"] = theirs[f"{d}.{kind}"].clone()

    for o, d in _SHARED:
        copy(o, d)
    for o, d in _EMBEDDERS:
        copy(o, f"transformer_blocks.0.{d}")
    copy("y_embedder.embedding_table", "transformer_blocks.0.norm1.emb.class_embedder.embedding_table", ("weight",))
    for i in range(depth):
        for o, d in _block_pairs(i):
            copy(o, d)
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [theirs[f"transformer_blocks.{i}.attn1.{n}.{kind}"] for n in ("to_q", "to_k", "to_v")]
            )
    return out
