"""A diffusers transformer family as a declaration: what Skip-Cache needs to know to cache it.

How to add a family (one file in ``families/``, found automatically):

    # skipdit_kernels/integrations/diffusers/families/pixart.py
    from diffusers import PixArtTransformer2DModel
    from ....cache import SkipCache
    from ..family import Family

    FAMILY = Family(
        transformer=PixArtTransformer2DModel,
        pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
        blocks=("transformer_blocks",),           # the block list(s) the transformer's forward iterates
        default_cache=SkipCache.preset("video"),  # the schedule at `reference_depth` units
        reference_depth=28,
    )

That is the whole contract when the family follows the common pattern. The transformer's own
``forward`` runs unchanged (embedding, positions, text handling, final layer stay diffusers' code);
Skip-Cache works at the block lists: while a request runs, iterating a declared list yields, on a
cached step, the outer ``shallow`` units and stand-ins for the middle ones, which return their input
without running (their hooks do not run either). At the cache boundary (the first block of unit
``num_units - shallow``) a full step stores, and a cached step restores, what the declaration says a
cached step keeps:

- ``long_skips=None`` (no long skips, the usual case): the *residual* of the middle units, the state
  entering the boundary unit minus the state entering unit ``shallow``;
- ``long_skips=partner`` (Hunyuan-DiT's native U-Net-like skips, where unit i fuses the output of
  ``partner(i, num_units)``): the state entering the boundary unit itself. The last ``shallow``
  units then fuse only outputs of the first ``shallow`` ones, which run on every step.

Fields, when the common pattern does not fit:

- ``blocks`` with several lists: concatenated into units in order (``paired=False``, e.g. dual-stream
  blocks followed by single-stream ones), or zipped, unit i = (list0[i], list1[i], ...)
  (``paired=True``, e.g. Latte's spatial/temporal block pairs). The forward must reach the lists by
  iterating them (``for``, ``enumerate``, ``zip``); indexing reaches the real blocks.
- ``io``: how a block call carries the state (``BlockIO``): by default a block takes
  ``hidden_states`` and returns it; give ``BlockIO(inputs=("hidden_states", "encoder_hidden_states"),
  outputs=("encoder_hidden_states", "hidden_states"))`` (``TEXT_AND_IMAGE``; ``IMAGE_AND_TEXT`` returns
  the image tokens first) for a block that takes and returns both,
  or a mapping from list name to ``BlockIO`` when the lists differ (FLUX.2's dual-stream blocks take
  two streams, its single-stream ones the joined sequence): the cached middle is then cut where such
  a list begins and a cached step restores one residual per piece (``request._Installation.segments``).
- ``fast_block``: a ``FastBlock`` that runs a block through skipdit_kernels' fused ops on its own
  live parameters when ``is_plain(block)`` holds at the moment of the call (equal to the block
  within rounding); ``apply_skip_cache(..., fast_blocks=False)`` turns it off per request.
- ``timestep``: a ``Timestep`` when the forward's diffusion time is not ``timestep`` on 0..1000 at
  pure noise: its argument name (HiDream's ``timesteps``), its scale (1 where the pipeline passes
  sigma, as FLUX's) or a rising convention (Lumina2's and Z-Image's 0 at pure noise), so that
  ``start_t``/``stop_t`` read the same noise level on every family.
- ``consumed_arguments``: list arguments the transformer's forward pops (HunyuanDiT's ControlNet
  residuals): the request passes copies, so the caller's list is never modified.

Testing a family: add a tiny random pipeline's builder and call to ``FAMILIES`` in
python_tests/integrations/test_diffusers.py; the shared tests then check that a never-caching
schedule is bit-identical to the plain pipeline and removal restores it, that cached calls equal an
independent reference of the schedule (reuse and forecasts), that the middle units do not run on
cached steps, CPU offload in both orders, and that two calls equal two fresh pipelines. A family
with a fast block also tests it against the block (see test_diffusers_fast.py).

Tested: every family's equality tests (the uncached path bit-identical to the pipeline, cached steps
equal to an independent reference of the schedule) passed on the diffusers versions in
``TESTED_DIFFUSERS``; ``check_diffusers_version`` warns on any other minor release, and the test
suite fails on one until its results are recorded here.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Mapping

import torch

from ...cache import SkipCache

#: diffusers releases (major.minor) on which the equality tests of every family passed: 0.42.1
TESTED_DIFFUSERS = ("0.42",)


def check_diffusers_version(version: str) -> bool:
    """Whether ``version`` is a tested release; warns (once per version) otherwise."""
    minor = ".".join(version.split(".")[:2])
    if minor in TESTED_DIFFUSERS:
        return True
    if version not in _WARNED:
        _WARNED.add(version)
        warnings.warn(
            f"Skip-Cache's diffusers integration was tested on diffusers {', '.join(TESTED_DIFFUSERS)}; this is "
            f"{version}: diffusers' transformers may have changed (run python_tests/integrations/test_diffusers*.py)",
            stacklevel=3,
        )
    return False


_WARNED: set[str] = set()


@dataclasses.dataclass(frozen=True)
class BlockIO:
    """How a block call carries the state the cache keeps. ``inputs``: the names of the block's
    forward arguments holding it (positional or keyword), the first the main hidden state;
    ``outputs``: the names in the order the block returns them as a tuple, or None for a block
    that returns the lone tensor ``inputs[0]``."""

    inputs: tuple[str, ...] = ("hidden_states",)
    outputs: tuple[str, ...] | None = None

    def __post_init__(self):
        if not self.inputs or (self.outputs is not None and sorted(self.outputs) != sorted(self.inputs)):
            raise ValueError(f"BlockIO outputs {self.outputs} must name the inputs {self.inputs}")


#: Blocks that take ``hidden_states`` (image or video tokens) and ``encoder_hidden_states`` (text
#: tokens) and return both, text first (FLUX, SD3's joint blocks, Qwen-Image) or image first
#: (HunyuanVideo, CogVideoX, Mochi, CogView4, HunyuanImage).
TEXT_AND_IMAGE = BlockIO(
    inputs=("hidden_states", "encoder_hidden_states"), outputs=("encoder_hidden_states", "hidden_states")
)
IMAGE_AND_TEXT = BlockIO(
    inputs=("hidden_states", "encoder_hidden_states"), outputs=("hidden_states", "encoder_hidden_states")
)


@dataclasses.dataclass(frozen=True)
class Timestep:
    """How a transformer's forward takes the diffusion time, and the noise level on 0..1000 (1000:
    pure noise) the schedule reads from it (``SkipCache.start_t``/``stop_t``; a rising level starts a
    new trajectory). ``argument``: the forward's parameter; ``scale``: its value at pure noise (1000
    for DDPM-style and most flow-matching pipelines, 1 where the pipeline passes sigma = t / 1000);
    ``rising``: the pipeline passes ``scale - t`` (0 at pure noise: Lumina2, Z-Image)."""

    argument: str = "timestep"
    scale: float = 1000.0
    rising: bool = False

    def noise_level(self, t: float) -> float:
        level = t * (1000.0 / self.scale)
        return 1000.0 - level if self.rising else level


@dataclasses.dataclass(frozen=True)
class FastBlock:
    """A block computed by skipdit_kernels' ops. ``is_plain(block)``: whether ``run`` computes
    exactly what the block does (checked at every call: a hook, another processor, train mode set
    later are seen). ``run(block, arguments)``: the block's output from its forward's arguments by
    name (defaults filled in), or None for inputs it does not take (diffusers' forward runs then)."""

    is_plain: Callable[[torch.nn.Module], bool]
    run: Callable[[torch.nn.Module, dict], Any]


@dataclasses.dataclass(frozen=True)
class Family:
    """One diffusers transformer family (see the module docstring for the guide).

    ``transformer``: the diffusers class (subclasses that keep its ``forward`` belong to it too).
    ``pipelines``: the diffusers pipelines that use it (documentation). ``blocks``: attribute names of
    the block lists, ``paired``: zip them into units instead of concatenating. ``io``: a ``BlockIO``
    or {list name: ``BlockIO``}. ``long_skips``: None (a cached step keeps the middle units'
    residual) or ``partner(unit, num_units) -> earlier unit | None`` (it keeps the state entering
    the boundary). ``default_cache``: the schedule for a transformer of ``reference_depth`` units;
    its ``shallow_blocks`` scales with the depth (``default_cache_for``). ``fast_block``: optional
    ``FastBlock``. ``consumed_arguments``: forward arguments (lists) passed as copies. ``timestep``:
    where the forward takes the diffusion time and how it maps to the 0..1000 noise level. ``unit``:
    what a unit is, for the documentation; ``source``: where the default schedule comes from."""

    transformer: type
    pipelines: tuple[str, ...]
    blocks: tuple[str, ...] = ("transformer_blocks",)
    paired: bool = False
    io: BlockIO | Mapping[str, BlockIO] = BlockIO()
    long_skips: Callable[[int, int], int | None] | None = None
    default_cache: SkipCache = SkipCache()
    reference_depth: int = 28
    fast_block: FastBlock | None = None
    consumed_arguments: tuple[str, ...] = ()
    timestep: Timestep = Timestep()
    unit: str = "block"
    source: str = ""

    @property
    def name(self) -> str:
        return self.transformer.__name__

    def io_of(self, list_name: str) -> BlockIO:
        return self.io if isinstance(self.io, BlockIO) else self.io.get(list_name, BlockIO())

    def units(self, transformer) -> list[tuple[tuple[str, torch.nn.Module], ...]]:
        """Unit i as ((list name, block), ...) in the order the forward runs them."""
        lists = [(name, list(getattr(transformer, name))) for name in self.blocks]
        if self.paired:
            if len({len(blocks) for _, blocks in lists}) != 1:
                raise ValueError(f"{self.name}: the paired block lists {self.blocks} differ in length")
            return [tuple((name, blocks[i]) for name, blocks in lists) for i in range(len(lists[0][1]))]
        return [((name, block),) for name, blocks in lists for block in blocks]

    def partners(self, num_units: int) -> dict[int, int]:
        """{unit: the earlier unit whose output it fuses}."""
        if self.long_skips is None:
            return {}
        pairs = {i: self.long_skips(i, num_units) for i in range(num_units)}
        return {i: j for i, j in pairs.items() if j is not None}

    @property
    def keeps(self) -> str:
        if self.long_skips is None and any(len(self.io_of(name).inputs) > 1 for name in self.blocks):
            return "the residual of the middle units, per token stream (image/video, text)"
        return "the residual of the middle units" if self.long_skips is None else (
            "the state entering the last `shallow` units (its native long skips)"
        )  # fmt: skip

    def belongs(self, transformer) -> bool:
        """An instance of ``transformer`` whose forward is the family's own."""
        cls = type(transformer)
        return isinstance(transformer, self.transformer) and cls.forward is self.transformer.forward

    def default_cache_for(self, num_units: int) -> SkipCache:
        """``default_cache`` with ``shallow_blocks`` scaled to ``num_units`` (the published value at
        ``reference_depth``; at least 1, at most what leaves one unit to skip). ValueError naming
        the depth for a transformer too shallow for any schedule to skip a unit."""
        if num_units < 3:
            raise ValueError(
                f"{self.name} with {num_units} {self.unit}s: a cached step runs at least one {self.unit} on "
                "each side and skips the middle, so Skip-Cache needs at least 3 (no schedule caches anything here)"
            )
        published = self.default_cache.shallow_blocks
        shallow = min(max(1, round(published * num_units / self.reference_depth)), (num_units - 1) // 2)
        return dataclasses.replace(self.default_cache, shallow_blocks=shallow)

    def table_row(self) -> str:
        c = self.default_cache
        preset = f"interval {c.interval}, shallow {c.shallow_blocks} of {self.reference_depth} {self.unit}s"
        preset += " (scaled with depth)"
        preset += f", full while t >= {c.start_t:g}" if c.start_t < 1000 else ""
        preset += f", reset at t <= {c.stop_t:g}"
        preset += ", forecast auto" if c.forecast == "auto" else ""
        if self.source:
            preset += f" ({self.source})"
        pipes = ", ".join(f"`{p}`" for p in self.pipelines)
        fast = "yes" if self.fast_block is not None else "no"
        tested = ", ".join(TESTED_DIFFUSERS)
        return f"| `{self.name}` | {pipes} | {self.unit} | {self.keeps} | {preset} | {fast} | {tested} |"


def families_table(families) -> str:
    """The Markdown table of ``families`` (docs/diffusers.md and the README carry it; a test checks
    they are in sync)."""
    head = [
        "| transformer | pipelines | unit | a cached step reuses | default schedule | fast blocks | diffusers tested |",
        "|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + [f.table_row() for f in families])
