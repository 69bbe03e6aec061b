"""An independent reference of Latte-skip (class-to-video) and of its official Skip-Cache, for tests.

Written from the semantics of the official ``Latte_skip`` / ``Latte_skip_cache`` (not from the
package's model code), in float64 over a state_dict: the hidden state is kept as (N, F, T, D) and
each spatial block runs frame by frame, each temporal block patch position by patch position, so
no token rearrangement is involved. DiT's block, fusion and final layer come from ``reference_dit``.
"""

import torch

from . import reference_dit as ref


def embed(sd, cfg, x, t, y):
    """(N, F, T, D) tokens and the conditioning c (N, D); y None for an unconditional model."""
    tokens = torch.stack([ref.patchify(sd, x[:, f], cfg["patch_size"]) for f in range(x.shape[1])], 1)
    c = ref.linear(sd, "t_embedder.mlp.2", ref.silu(ref.linear(sd, "t_embedder.mlp.0", ref.timestep_features(t))))
    if y is not None:
        c = c + sd["y_embedder.embedding_table.weight"][y]
    return tokens, c


def pair(sd, cfg, k, h, c, skip=None):
    """Pair k on (N, F, T, D): optional long-skip fusion, spatial block per frame, temporal block
    per patch position (temp_embed added before the temporal block of pair 0)."""
    heads, pairs = cfg["num_heads"], cfg["depth"] // 2
    if skip is not None:
        h = ref.skip_fusion(sd, k - pairs // 2, h, skip)
    h = torch.stack([ref.block(sd, 2 * k, h[:, f], c, heads) for f in range(h.shape[1])], 1)
    columns = []
    for p in range(h.shape[2]):
        column = h[:, :, p]
        if k == 0:
            column = column + sd["temp_embed"][0]
        columns.append(ref.block(sd, 2 * k + 1, column, c, heads))
    return torch.stack(columns, 2)


def final(sd, cfg, h, c):
    out_channels = cfg["in_channels"] * (2 if cfg.get("learn_sigma", True) else 1)
    return torch.stack([ref.final(sd, h[:, f], c, cfg["patch_size"], out_channels) for f in range(h.shape[1])], 1)


def forward(sd, cfg, x, t, y=None, pairs=None, enter=None):
    """One forward in float64; ``pairs``: the pairs that run (default all), ``enter(k, h)`` may
    replace the state entering pair k. Pairs of the first half push, the second half pop."""
    sd = {k: v.double() for k, v in sd.items()}
    depth = cfg["depth"] // 2
    h, c = embed(sd, cfg, x.double(), t, y)
    skips = []
    for k in range(depth) if pairs is None else pairs:
        if enter is not None:
            h = enter(k, h)
        h = pair(sd, cfg, k, h, c, skips.pop() if k >= depth // 2 else None)
        if k < depth // 2:
            skips.append(h)
    return final(sd, cfg, h, c)


def lagrange(nodes, x):
    """Weights of the Lagrange polynomial through ``nodes`` evaluated at ``x``."""
    weights = []
    for j, nj in enumerate(nodes):
        w = 1.0
        for m, nm in enumerate(nodes):
            if m != j:
                w *= (x - nm) / (nj - nm)
        weights.append(w)
    return weights


class CachedReference:
    """``Latte_skip_cache``'s rules as a state machine: a step is full when the counter is a
    multiple of ``interval``, nothing is cached or t >= ``start_t`` (900); a full step stores the
    state entering pair P - shallow, a cached step runs only the outer ``shallow`` pairs on each
    side and takes the stored state there; after a step with t < ``close_t`` (50) the counter and
    the cache reset. ``forecast`` (the library's extension, 0 = the official reuse): a cached step
    takes the Lagrange extrapolation, to its counter, of the states stored by the last
    ``forecast + 1`` full steps."""

    def __init__(self, sd, cfg, interval, shallow=1, start_t=900, close_t=50, forecast=0):
        self.sd, self.cfg = sd, cfg
        self.interval, self.shallow, self.start_t, self.close_t = interval, shallow, start_t, close_t
        self.forecast = forecast
        self.counter, self.stored = 0, []  # stored: (counter, state) of the last full steps
        self.history = []  # per step: the pairs that ran

    def step(self, x, t, y=None):
        pairs, k = self.cfg["depth"] // 2, self.shallow
        t0 = float(t[0])
        full = self.counter % self.interval == 0 or not self.stored or t0 >= self.start_t
        run = list(range(pairs)) if full else list(range(k)) + list(range(pairs - k, pairs))

        def enter(i, h):
            if i == pairs - k:
                if full:
                    self.stored = (self.stored + [(self.counter, h)])[-(self.forecast + 1) :]
                else:
                    weights = lagrange([c for c, _ in self.stored], self.counter)
                    h = sum(w * state for w, (_, state) in zip(weights, self.stored))
            return h

        out = forward(self.sd, self.cfg, x, t, y, pairs=run, enter=enter).float()
        self.history.append(run)
        self.counter += 1
        if t0 < self.close_t:
            self.counter, self.stored = 0, []
        return out


def official_full_steps(timesteps, interval, start_t=900, close_t=50):
    """Full (True) or cached per timestep under ``Latte_skip_cache``'s rules, without a model."""
    counter, have, flags = 0, False, []
    for t in timesteps:
        full = counter % interval == 0 or not have or t >= start_t
        have = have or full
        flags.append(full)
        counter += 1
        if t < close_t:
            counter, have = 0, False
    return flags
