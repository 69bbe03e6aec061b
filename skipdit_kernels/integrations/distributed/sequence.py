"""Sequence parallelism: one request's tokens sharded over the ranks of a group, attention by
DeepSpeed-Ulysses (Jacobs et al., 2023) all-to-alls over the heads.

Each rank embeds the whole latent (cheap, and identical everywhere), keeps its contiguous share of
the tokens (``TokenShards``: ``torch.tensor_split`` sizes, so any token count works) and runs every
unit on that share. Everything in a unit is per token except the attention over the sequence: there
an all-to-all turns this rank's (all heads, its tokens) q, k, v into (its heads, all tokens), the
rank attends over the full sequence for H / W heads, and a second all-to-all brings (all heads, its
tokens) back. Before the final layer the hidden state is all-gathered, so every rank computes the
same model output and the same sampler update, and ``x`` stays identical on all ranks.

What is attention over the sharded axis depends on the family (``_family``): every block of
DiT / SkipDiT; the *spatial* blocks of LatteSkip and LatteT2VSkip, whose temporal blocks attend over
the frames of one patch position, all of which this rank holds, so they run locally without any
collective; LatteT2VSkip's cross-attention reads this rank's queries against the (replicated) text
and is local too. The swap is done from outside: while ``active()`` holds, the model's sharded
attention modules (ours: ``Attention.mix_tokens``; diffusers': the attention processor) dispatch to
the Ulysses version in this context only (a ``ContextVar``), so other requests on the same model,
in other threads, are untouched, and the model is restored when the last user leaves.

Skip-Cache needs nothing: the executor's deep history is shaped like the hidden state it stores,
which is this rank's share, so the cache (reused or forecast) is sharded with the sequence and a
cached step sends only the shallow units' attention traffic and the final gather (``CommLog``
counts the bytes every collective sends).

Ulysses needs the heads divisible by the group size (ValueError naming both otherwise); ring
attention, which does not, is not implemented.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import sys
import threading
from typing import Any, Callable, NamedTuple

import torch
import torch.distributed as dist

from ... import ops
from .failures import RankFailures

_ACTIVE: contextvars.ContextVar["SequenceShards | None"] = contextvars.ContextVar(
    "skipdit_sequence_shards", default=None
)
_INSTALL_LOCK = threading.Lock()
_INSTALLED: dict[int, list] = {}  # id(module) -> [users, undo]


class CommLog:
    """Bytes this rank sends to other ranks, by collective (``totals``) and since ``mark()``; a
    collective's own share (the chunk a rank keeps in an all-to-all) is not counted."""

    def __init__(self):
        self.totals: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self._since = 0

    def add(self, what: str, nbytes: int) -> None:
        self.totals[what] += int(nbytes)
        self.calls[what] += 1
        self._since += int(nbytes)

    def mark(self) -> int:
        """Bytes sent since the previous ``mark()``."""
        sent, self._since = self._since, 0
        return sent


@dataclasses.dataclass
class SequenceShards:
    """``tokens`` tokens cut into contiguous shares over the ``world_size`` ranks of ``group``
    (``torch.tensor_split`` sizes: the first ``tokens % world_size`` ranks hold one more); ``tokens``
    None: taken from the first hidden state cut (``local``)."""

    tokens: int | None
    rank: int
    world_size: int
    group: Any
    failures: RankFailures
    log: CommLog
    over_cpu: bool  # gloo: collectives on CPU copies
    _sizes: list[int] | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def sizes(self) -> list[int]:
        if self._sizes is None:
            self._sizes = [len(part) for part in torch.arange(self.tokens).tensor_split(self.world_size)]
        return self._sizes

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    def local(self, h: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's share of ``h`` along its token dimension ``dim``."""
        if self.tokens is None:
            self.tokens = h.shape[dim]
        if h.shape[dim] != self.tokens:
            raise ValueError(
                f"sequence parallel: expected {self.tokens} tokens on dim {dim}, got shape {tuple(h.shape)}"
            )
        return h.narrow(dim, self.start, self.sizes[self.rank])

    def _all_to_all(self, what: str, send: torch.Tensor, in_splits: list[int], out_splits: list[int]) -> torch.Tensor:
        device = send.device
        send = send.cpu() if self.over_cpu else send
        recv = send.new_empty(sum(out_splits))
        self.failures.collective(
            what, lambda: dist.all_to_all_single(recv, send, out_splits, in_splits, group=self.group)
        )
        self.log.add(what, (sum(in_splits) - in_splits[self.rank]) * send.element_size())
        return recv.to(device)

    def gather(self, h: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The whole sequence from every rank's share (an all_gather, shares padded to the largest)."""
        sizes, device = self.sizes, h.device
        longest = max(sizes)
        mine = h.movedim(dim, 0)
        if mine.shape[0] < longest:
            mine = torch.cat([mine, mine.new_zeros((longest - mine.shape[0], *mine.shape[1:]))])
        mine = mine.contiguous().cpu() if self.over_cpu else mine.contiguous()
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        what = "gathering the hidden state"
        self.failures.collective(what, lambda: dist.all_gather(parts, mine, group=self.group))
        self.log.add(what, mine.numel() * mine.element_size() * (self.world_size - 1))
        whole = torch.cat([p[:n] for p, n in zip(parts, sizes)])
        return whole.to(device).movedim(0, dim)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Ulysses attention. q, k, v: (B, T_local, H, D) of this rank's tokens; returns (B, T_local,
        H * D), heads in order, as ``ops.attention(...).transpose(1, 2).reshape(B, T_local, H * D)``
        would for the full sequence."""
        world, sizes = self.world_size, self.sizes
        batch, tokens, heads, dim = q.shape
        if heads % world:
            raise ValueError(
                f"sequence parallel (Ulysses) over {world} ranks needs the attention heads divisible by {world}, got {heads}"
            )
        group_heads = heads // world
        # (3, B, T_l, W, H/W, D) -> (W, 3, B, T_l, H/W, D): chunk w holds head group w for rank w
        packed = torch.stack([q, k, v]).view(3, batch, tokens, world, group_heads, dim).permute(3, 0, 1, 2, 4, 5)
        per_token = 3 * batch * group_heads * dim
        recv = self._all_to_all("attention all-to-all (q, k, v)", packed.contiguous().view(-1),
                                [tokens * per_token] * world, [n * per_token for n in sizes])  # fmt: skip
        shares = recv.split([n * per_token for n in sizes])
        qkv = torch.cat([s.view(3, batch, n, group_heads, dim) for s, n in zip(shares, sizes)], dim=2)
        q, k, v = qkv.permute(0, 1, 3, 2, 4).unbind(0)  # (B, H/W, T, D) each
        out = ops.attention(q, k, v)
        per_token = batch * group_heads * dim
        back = [part.contiguous().view(-1) for part in out.split(sizes, dim=2)]  # rank r's tokens, my heads
        recv = self._all_to_all("attention all-to-all (output)", torch.cat(back), [n * per_token for n in sizes],
                                [tokens * per_token] * world)  # fmt: skip
        out = recv.view(world, batch, group_heads, tokens, dim).permute(1, 3, 0, 2, 4)
        return out.reshape(batch, tokens, heads * dim)

    @contextlib.contextmanager
    def active(self, modules: list[torch.nn.Module]):
        """While this holds, ``modules`` (the family's sequence attention) run Ulysses attention over
        these shards in this context (thread / task); elsewhere they run as before."""
        with _INSTALL_LOCK:
            for m in modules:
                entry = _INSTALLED.setdefault(id(m), [0, None])
                if entry[0] == 0:
                    entry[1] = _install(m)
                entry[0] += 1
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)
            with _INSTALL_LOCK:
                for m in modules:
                    entry = _INSTALLED[id(m)]
                    entry[0] -= 1
                    if entry[0] == 0:
                        entry[1]()
                        del _INSTALLED[id(m)]


# -- swapping the attention of a model's modules -------------------------------------------------


def _install(module: torch.nn.Module) -> Callable[[], None]:
    """Make ``module`` dispatch to Ulysses attention where ``_ACTIVE`` is set; returns the undo."""
    from ...models.layers import Attention

    if isinstance(module, Attention):

        def mix_tokens(h: torch.Tensor) -> torch.Tensor:
            shards = _ACTIVE.get()
            if shards is None:
                return Attention.mix_tokens(module, h)
            batch, tokens, hidden = h.shape  # as Attention.mix_tokens, with the attention sharded
            qkv = ops.linear(h, module.qkv.weight, module.qkv.bias)
            q, k, v = qkv.view(batch, tokens, 3, module.num_heads, hidden // module.num_heads).unbind(2)
            return shards.attention(q, k, v)

        module.mix_tokens = mix_tokens
        return lambda: module.__dict__.pop("mix_tokens", None)
    original = module.processor  # a diffusers Attention
    module.processor = _UlyssesProcessor(original)

    def undo() -> None:
        module.processor = original

    return undo


class _UlyssesProcessor:
    """A diffusers attention processor: self-attention without a mask runs diffusers'
    ``AttnProcessor2_0`` arithmetic with the attention sharded (where ``_ACTIVE`` is set); any other
    call goes to the processor it replaced."""

    def __init__(self, original):
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        shards = _ACTIVE.get()
        if shards is None:
            if temb is not None:
                kwargs["temb"] = temb
            return self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, **kwargs)  # fmt: skip
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.dim() != 3:
            raise ValueError("sequence-parallel attention shards self-attention over (B, T, C) tokens without a mask")
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("sequence-parallel attention does not support spatial_norm / group_norm attention")
        residual = hidden_states
        batch, tokens, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (t.view(batch, tokens, attn.heads, head_dim) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = shards.attention(q, k, v).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# -- families ------------------------------------------------------------------------------------


class Family(NamedTuple):
    """What sequence parallelism needs to know of a model family: the attention modules over the
    token axis (dim 1 of the hidden state), their head count, and how the units' context is cut to
    this rank's tokens (the identity where it holds no per-token rows)."""

    attention: list
    heads: int
    shard_context: Callable[[Any, SequenceShards], Any]


def _same(ctx, shards):
    return ctx


def _family(model) -> Family:
    from ...models.dit import DiT
    from ...models.latte import LatteSkip

    if isinstance(model, DiT):
        return Family([b.attn for b in model.blocks], model.num_heads, _same)
    if isinstance(model, LatteSkip):  # spatial blocks at even indices; temporal blocks stay local
        return Family([model.blocks[i].attn for i in range(0, model.depth, 2)], model.num_heads, _same)
    t2v = sys.modules.get("skipdit_kernels.integrations.latte_t2v")  # loaded wherever such a model exists
    if t2v is not None and isinstance(model, t2v.LatteT2VSkip):

        def shard_t2v(ctx, shards):  # t_temporal rows are (video, token)
            rows = ctx.t_temporal.view(ctx.batch, shards.tokens, -1)
            return ctx._replace(t_temporal=shards.local(rows).reshape(-1, rows.shape[-1]))

        blocks = model.transformer_blocks
        return Family([b.attn1 for b in blocks], blocks[0].attn1.heads, shard_t2v)
    raise TypeError(
        f"sequence parallelism supports DiT, SkipDiT, LatteSkip and LatteT2VSkip; got {type(model).__name__}"
    )


class _Sharded(NamedTuple):
    local: Any  # the context the units read, cut to this rank's tokens
    whole: Any  # the context the final layer reads


class ShardedStack:
    """``stack`` (a skip stack) with its units run on this rank's token share: ``embed`` embeds the
    whole latent and keeps this rank's share, ``run_block`` is the stack's, ``finish`` gathers the
    sequence first. Everything else is the stack's. Run it inside ``shards.active(family.attention)``."""

    def __init__(self, stack, family: Family, shards: SequenceShards):
        self._stack, self._family, self._shards = stack, family, shards

    def __getattr__(self, name):
        return getattr(self._stack, name)

    @property
    def num_units(self) -> int:
        return self._stack.num_units

    @property
    def latent_shape(self):
        return self._stack.latent_shape

    @property
    def channel_dim(self) -> int:
        return self._stack.channel_dim

    @property
    def learn_sigma(self) -> bool:
        return self._stack.learn_sigma

    def skip_partner(self, i: int):
        return self._stack.skip_partner(i)

    def embed(self, x, t, cond):
        h, ctx = self._stack.embed(x, t, cond)
        return self._shards.local(h), _Sharded(self._family.shard_context(ctx, self._shards), ctx)

    def run_block(self, i, h, ctx: _Sharded, skip):
        return self._stack.run_block(i, h, ctx.local, skip)

    def finish(self, h, ctx: _Sharded):
        return self._stack.finish(self._shards.gather(h), ctx.whole)
