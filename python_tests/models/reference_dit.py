"""An independent reference of DiT / Skip-DiT and the Skip-Cache schedule, for tests.

Written from the semantics (not from the package's model code): a functional forward over a
state_dict with explicit loops over blocks and heads, plain-formula LayerNorm and softmax
attention, and the official DiT_cache step rules written out as a small state machine.
"""

import math

import torch


def layer_norm(z, weight=None, bias=None, eps=1e-6):
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    out = (z - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * weight + bias
    return out


def linear(sd, name, z):
    return z @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def silu(z):
    return z * torch.sigmoid(z)


def gelu_tanh(z):
    return 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


def timestep_features(t, dim=256):
    # The official definition forms the angles in fp32; large angles make that part of the result.
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000) / half))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1).double()


def patchify(sd, x, p):
    n, c, h, w = x.shape
    tokens = []
    for i in range(h // p):
        for j in range(w // p):
            patch = x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(n, -1)
            tokens.append(patch @ sd["x_embedder.proj.weight"].reshape(sd["x_embedder.proj.weight"].shape[0], -1).T)
    return torch.stack(tokens, 1) + sd["x_embedder.proj.bias"] + sd["pos_embed"]


def attention(sd, name, z, heads):
    n, tokens, d = z.shape
    hd = d // heads
    qkv = linear(sd, f"{name}.qkv", z)
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    outs = []
    for head in range(heads):
        sl = slice(head * hd, (head + 1) * hd)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd)
        outs.append(torch.softmax(scores, -1) @ v[..., sl])
    return linear(sd, f"{name}.proj", torch.cat(outs, -1))


def block(sd, i, x, c, heads):
    mod = linear(sd, f"blocks.{i}.adaLN_modulation.1", silu(c))
    shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=1)
    h = layer_norm(x) * (1 + scale1[:, None]) + shift1[:, None]
    x = x + gate1[:, None] * attention(sd, f"blocks.{i}.attn", h, heads)
    h = layer_norm(x) * (1 + scale2[:, None]) + shift2[:, None]
    h = linear(sd, f"blocks.{i}.mlp.fc2", gelu_tanh(linear(sd, f"blocks.{i}.mlp.fc1", h)))
    return x + gate2[:, None] * h


def skip_fusion(sd, j, x, skip):
    z = torch.cat([x, skip], -1)
    z = layer_norm(z, sd[f"skip_norms.{j}.weight"], sd[f"skip_norms.{j}.bias"])
    return linear(sd, f"skip_linears.{j}.linear", z)


def final(sd, x, c, p, out_channels):
    shift, scale = linear(sd, "final_layer.adaLN_modulation.1", silu(c)).chunk(2, dim=1)
    x = linear(sd, "final_layer.linear", layer_norm(x) * (1 + scale[:, None]) + shift[:, None])
    n, tokens, _ = x.shape
    g = int(math.isqrt(tokens))
    img = torch.zeros(n, out_channels, g * p, g * p, dtype=x.dtype)
    for token in range(tokens):
        i, j = divmod(token, g)
        img[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p] = (
            x[:, token].reshape(n, p, p, out_channels).permute(0, 3, 1, 2)
        )
    return img


def conditioning(sd, t, y):
    t_emb = linear(sd, "t_embedder.mlp.2", silu(linear(sd, "t_embedder.mlp.0", timestep_features(t))))
    return t_emb + sd["y_embedder.embedding_table.weight"][y]


def forward(sd, cfg, x, t, y, skip=False, blocks=None, enter=None):
    """One forward, in float64. ``blocks`` lists the blocks that run (default: all);
    ``enter(i, tokens)`` may replace the tokens entering block i (the cache's hook)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    p, depth, heads = cfg["patch_size"], cfg["depth"], cfg["num_heads"]
    out_channels = cfg["in_channels"] * (2 if cfg.get("learn_sigma", True) else 1)
    x_tok = patchify(sd, x, p)
    c = conditioning(sd, t, y)
    skips = []
    for i in range(depth) if blocks is None else blocks:
        if enter is not None:
            x_tok = enter(i, x_tok)
        if skip and i >= depth // 2:
            x_tok = skip_fusion(sd, i - depth // 2, x_tok, skips.pop())
        x_tok = block(sd, i, x_tok, c, heads)
        if skip and i < depth // 2:
            skips.append(x_tok)
    return final(sd, x_tok, c, p, out_channels)


def forward_with_cfg(sd, cfg, x, t, y, scale, skip=False, guided=3):
    half = x[: len(x) // 2]
    out = forward(sd, cfg, torch.cat([half, half]), t, y, skip=skip).float()
    eps, rest = out[:, :guided], out[:, guided:]
    cond, uncond = eps[: len(eps) // 2], eps[len(eps) // 2 :]
    g = uncond + scale * (cond - uncond)
    return torch.cat([torch.cat([g, g]), rest], 1)


class CachedReference:
    """The official DiT_cache rules, as a state machine over steps (skip models)."""

    def __init__(self, sd, cfg, interval, shallow, start_t=1000, stop_t=20):
        self.sd, self.cfg = sd, cfg
        self.interval, self.shallow, self.start_t, self.stop_t = interval, shallow, start_t, stop_t
        self.counter, self.stored = 0, None
        self.history = []  # per step: the list of blocks that ran

    def step(self, x, t, y):
        depth, k = self.cfg["depth"], self.shallow
        t0 = float(t[0])
        full = self.counter % self.interval == 0 or self.stored is None or t0 >= self.start_t
        blocks = list(range(depth)) if full else list(range(k)) + list(range(depth - k, depth))

        def enter(i, x_tok):
            if i == depth - k:
                if full:
                    self.stored = x_tok
                else:
                    x_tok = self.stored
            return x_tok

        out = forward(self.sd, self.cfg, x, t, y, skip=True, blocks=blocks, enter=enter).float()
        self.history.append(blocks)
        self.counter += 1
        if t0 <= self.stop_t:
            self.counter, self.stored = 0, None
        return out
