"""Weight conversion between ``skipdit_kernels.DiT`` and diffusers' ``DiTTransformer2DModel``, both
directions from one key table (``_KEYS``)."""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel


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
    from ...models import DiT, SkipDiT

    if isinstance(model, SkipDiT) or not isinstance(model, DiT):
        raise ValueError(
            f"dit_to_diffusers converts a skipdit_kernels.DiT (without long skips), got {type(model).__name__}"
        )
    cfg = model.config
    if not model.y_embedder.has_null_class:
        raise ValueError(
            "dit_to_diffusers needs a DiT with class_dropout_prob > 0: diffusers' label table has a null row"
        )
    heads = cfg["num_heads"]
    transformer = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=cfg["hidden_size"] // heads, in_channels=cfg["in_channels"],
        out_channels=model.out_channels, num_layers=cfg["depth"], sample_size=cfg["input_size"],
        patch_size=cfg["patch_size"], num_embeds_ada_norm=cfg["num_classes"], norm_eps=1e-6,
    )  # fmt: skip
    if int(transformer.transformer_blocks[0].ff.net[0].proj.out_features) != int(cfg["hidden_size"] * cfg["mlp_ratio"]):
        raise ValueError(f"diffusers' DiT has mlp_ratio 4; this model has {cfg['mlp_ratio']}")
    transformer.load_state_dict(_convert(model.state_dict(), cfg["depth"], to_diffusers=True), strict=True)
    transformer.pos_embed.pos_embed.data.copy_(model.pos_embed.data)
    return use_official_timestep_frequencies(transformer.to(next(model.parameters()).dtype).eval())


def dit_from_diffusers(transformer: DiTTransformer2DModel):
    """A ``skipdit_kernels.DiT`` with ``transformer``'s weights. The DiT computes the official
    timestep frequencies and MLP LayerNorm eps 1e-6, so its outputs equal the transformer's within
    fp32 rounding when the transformer has ``use_official_timestep_frequencies`` applied and
    ``norm_eps == 1e-6``; otherwise they differ by diffusers' deviations from the official model
    (the timestep frequencies: 2-3% relative; eps 1e-5: about 1e-5 relative). ValueError when the
    per-block copies of the timestep/class embedders differ (the DiT has one of each)."""
    from ...models import DiT

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
    converted = _convert(state, cfg.num_layers, to_diffusers=False)
    converted["pos_embed"] = model.pos_embed.data.clone()
    model.load_state_dict(converted, strict=True)
    return model.to(transformer.dtype).eval()


# (ours, diffusers', kinds). "{i}" is a block index. A diffusers key with "{i}" paired with one of ours
# without it is an embedder diffusers copies into every block (we keep one; block 0's is read back). A
# tuple of diffusers keys is split from / concatenated into ours along dim 0 (the fused qkv projection).
_KEYS = [
    ("x_embedder.proj", "pos_embed.proj", ("weight", "bias")),
    ("final_layer.adaLN_modulation.1", "proj_out_1", ("weight", "bias")),
    ("final_layer.linear", "proj_out_2", ("weight", "bias")),
    ("t_embedder.mlp.0", "transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_1", ("weight", "bias")),
    ("t_embedder.mlp.2", "transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_2", ("weight", "bias")),
    ("y_embedder.embedding_table", "transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table", ("weight",)),
    ("blocks.{i}.attn.proj", "transformer_blocks.{i}.attn1.to_out.0", ("weight", "bias")),
    ("blocks.{i}.mlp.fc1", "transformer_blocks.{i}.ff.net.0.proj", ("weight", "bias")),
    ("blocks.{i}.mlp.fc2", "transformer_blocks.{i}.ff.net.2", ("weight", "bias")),
    ("blocks.{i}.adaLN_modulation.1", "transformer_blocks.{i}.norm1.linear", ("weight", "bias")),
    ("blocks.{i}.attn.qkv", tuple(f"transformer_blocks.{{i}}.attn1.to_{n}" for n in "qkv"), ("weight", "bias")),
]


def _convert(state: dict, depth: int, to_diffusers: bool) -> dict:
    """``state`` (ours, or diffusers' with ``to_diffusers=False``) under the other side's keys."""
    out = {}
    for ours, theirs, kinds in _KEYS:
        per_block = "{i}" in (theirs if isinstance(theirs, str) else theirs[0])
        for i in range(depth) if per_block else (None,):
            if not to_diffusers and "{i}" not in ours and i not in (None, 0):
                continue  # a shared embedder: block 0's copy
            o = ours.format(i=i)
            d = [k.format(i=i) for k in ((theirs,) if isinstance(theirs, str) else theirs)]
            for kind in kinds:
                if to_diffusers:
                    parts = state[f"{o}.{kind}"].chunk(len(d))
                    out.update((f"{k}.{kind}", p.clone()) for k, p in zip(d, parts))
                else:
                    out[f"{o}.{kind}"] = torch.cat([state[f"{k}.{kind}"] for k in d])
    return out
