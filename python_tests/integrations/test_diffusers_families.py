"""Skip-Cache on the diffusers families without long skips (FLUX, SD3, Wan, HunyuanVideo, ...): each
family's pipeline, tiny and random (``tiny_pipelines``), against an independent reference of the
residual schedule written here (``ReferenceResidualCache``)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable

import pytest
import torch

pytest.importorskip("diffusers")

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.integrations import diffusers as sd  # noqa: E402

from . import tiny_pipelines as tp  # noqa: E402

# -- an independent reference of the residual schedule ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Streams:
    """The arguments of a block's forward that carry the token streams, and the order in which the
    block returns them (one name: it returns the lone tensor)."""

    inputs: tuple[str, ...] = ("hidden_states",)
    outputs: tuple[str, ...] = ("hidden_states",)


TWO_ENC_FIRST = Streams(("hidden_states", "encoder_hidden_states"), ("encoder_hidden_states", "hidden_states"))
TWO_HIDDEN_FIRST = Streams(("hidden_states", "encoder_hidden_states"), ("hidden_states", "encoder_hidden_states"))


def _lagrange(nodes, at):
    weights = []
    for j, xj in enumerate(nodes):
        w = 1.0
        for m, xm in enumerate(nodes):
            if m != j:
                w *= (at - xm) / (xj - xm)
        weights.append(w)
    return weights


class ReferenceResidualCache:
    """The residual Skip-Cache schedule written out, installed as the transformer's instance forward
    (the transformer's own forward runs). Units: the blocks of ``lists`` in the order the forward runs
    them; the middle units ``[shallow, n - shallow)`` are cached. Each branch (the calls at one
    timestep: prompt, then negative prompt under true CFG) has its own step counter and residuals.

    - full step (counter % interval == 0, or nothing stored): the forward runs as is, then once more
      with the middle units made identities (each returns its stream inputs); the residual is the
      difference of the stream inputs of unit n - shallow between the two runs, per stream;
    - cached step: the forward runs with the middle units made identities and the stream inputs of
      unit n - shallow increased by the residual of the last full step (``forecast`` 0) or by the
      Lagrange extrapolation in the step counter through the last ``forecast + 1`` of them.
    """

    def __init__(self, transformer, lists: tuple[str, ...], streams: Streams | dict, *, interval=2, shallow=1,
                 forecast=0, timestep_arg="timestep"):  # fmt: skip
        self.m, self.interval, self.shallow, self.order = transformer, interval, shallow, forecast
        self.units = [block for name in lists for block in getattr(transformer, name)]
        per_list = streams if isinstance(streams, dict) else dict.fromkeys(lists, streams)
        self.streams = {id(block): per_list[name] for name in lists for block in getattr(transformer, name)}
        self.timestep_arg = timestep_arg
        self.branches: dict[int, dict] = {}
        self.last_t, self.branch = None, 0
        self.full: list[bool] = []
        self.original = type(transformer).forward.__get__(transformer)
        self.signature = inspect.signature(type(transformer).forward)
        transformer.forward = self.forward

    def remove(self):
        del self.m.forward

    @staticmethod
    def _arguments(block, args, kwargs):
        return inspect.signature(type(block).forward).bind(block, *args, **kwargs)

    def _run(self, args, kwargs, identity: bool, at_boundary):
        n, s = len(self.units), self.shallow

        def passthrough(mod, a, kw, out):
            bound = self._arguments(mod, a, kw).arguments
            values = tuple(bound[name] for name in self.streams[id(mod)].outputs)
            return values if len(values) > 1 else values[0]

        def enter(mod, a, kw):
            bound = self._arguments(mod, a, kw)
            new = at_boundary({name: bound.arguments[name] for name in self.streams[id(mod)].inputs})
            if new is None:
                return None
            bound.arguments.update(new)
            return bound.args[1:], bound.kwargs

        handles = [b.register_forward_hook(passthrough, with_kwargs=True) for b in self.units[s : n - s] if identity]
        handles.append(self.units[n - s].register_forward_pre_hook(enter, with_kwargs=True))
        try:
            return self.original(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()

    def forward(self, *args, **kwargs):
        t = float(
            torch.as_tensor(self.signature.bind(self.m, *args, **kwargs).arguments[self.timestep_arg]).reshape(-1)[0]
        )
        self.branch = self.branch + 1 if t == self.last_t else 0
        self.last_t = t
        state = self.branches.setdefault(self.branch, {"counter": 0, "store": []})
        full = state["counter"] % self.interval == 0 or not state["store"]
        self.full.append(full)
        if full:
            seen = {}
            out = self._run(args, kwargs, False, lambda v: seen.__setitem__("full", v))
            self._run(args, kwargs, True, lambda v: seen.__setitem__("identity", v))
            residual = {k: seen["full"][k] - seen["identity"][k] for k in seen["full"]}
            state["store"] = (state["store"] + [(state["counter"], residual)])[-(self.order + 1) :]
        else:
            weights = _lagrange([c for c, _ in state["store"]], state["counter"])
            deep = {k: sum(w * r[k] for w, (_, r) in zip(weights, state["store"])) for k in state["store"][0][1]}
            out = self._run(args, kwargs, True, lambda v: {k: v[k] + deep[k] for k in v})
        state["counter"] += 1
        return out


# -- the families -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    make: Callable
    call: Callable
    transformer: str  # the diffusers class the family declares
    lists: tuple[str, ...]  # the block lists of the cached units, in the order the forward runs them
    streams: Streams | dict = Streams()  # or {list name: Streams}
    timestep_arg: str = "timestep"
    exact: bool = True  # the cached pipeline equals the reference bit for bit (else within fp32 rounding)


CASES = {
    "flux": Case(tp.flux_pipe, tp.flux_call, "FluxTransformer2DModel", ("transformer_blocks", "single_transformer_blocks"),
                 TWO_ENC_FIRST),
    "sd3": Case(tp.sd3_pipe, tp.sd3_call, "SD3Transformer2DModel", ("transformer_blocks",), TWO_ENC_FIRST),
    "wan": Case(tp.wan_pipe, tp.wan_call, "WanTransformer3DModel", ("blocks",)),
    "hunyuan_video": Case(tp.hunyuan_video_pipe, tp.hunyuan_video_call, "HunyuanVideoTransformer3DModel",
                          ("transformer_blocks", "single_transformer_blocks"), TWO_HIDDEN_FIRST),
    "cogvideox": Case(tp.cogvideox_pipe, tp.cogvideox_call, "CogVideoXTransformer3DModel", ("transformer_blocks",),
                      TWO_HIDDEN_FIRST),
    "ltx": Case(tp.ltx_pipe, tp.ltx_call, "LTXVideoTransformer3DModel", ("transformer_blocks",)),
    "qwenimage": Case(tp.qwenimage_pipe, tp.qwenimage_call, "QwenImageTransformer2DModel", ("transformer_blocks",),
                      TWO_ENC_FIRST),
    "sana": Case(tp.sana_pipe, tp.sana_call, "SanaTransformer2DModel", ("transformer_blocks",)),
    "lumina2": Case(tp.lumina2_pipe, tp.lumina2_call, "Lumina2Transformer2DModel", ("layers",)),
    "z_image": Case(tp.z_image_pipe, tp.z_image_call, "ZImageTransformer2DModel", ("layers",), Streams(("x",), ("x",)),
                    timestep_arg="t"),
    "mochi": Case(tp.mochi_pipe, tp.mochi_call, "MochiTransformer3DModel", ("transformer_blocks",), TWO_HIDDEN_FIRST),
    "cosmos": Case(tp.cosmos_pipe, tp.cosmos_call, "CosmosTransformer3DModel", ("transformer_blocks",)),
    # Families whose forward joins the two streams between its block lists: the cache keeps a residual
    # per list (restored where the dual-stream list ends and at the boundary), the reference one at
    # the boundary; equal within rounding (the join is a concatenation; HiDream's blocks also get
    # each block's own text tokens, restored as the first middle block's plus their difference).
    "hidream": Case(tp.hidream_pipe, tp.hidream_call, "HiDreamImageTransformer2DModel",
                    ("double_stream_blocks", "single_stream_blocks"), {"double_stream_blocks": TWO_HIDDEN_FIRST,
                    "single_stream_blocks": Streams()}, timestep_arg="timesteps", exact=False),
    "chroma": Case(tp.chroma_pipe, tp.chroma_call, "ChromaTransformer2DModel", ("transformer_blocks", "single_transformer_blocks"),
                   {"transformer_blocks": TWO_ENC_FIRST, "single_transformer_blocks": Streams()}, exact=False),
    "flux2": Case(tp.flux2_pipe, tp.flux2_call, "Flux2Transformer2DModel", ("transformer_blocks", "single_transformer_blocks"),
                  {"transformer_blocks": TWO_ENC_FIRST, "single_transformer_blocks": Streams()}, exact=False),
    "cogview4": Case(tp.cogview4_pipe, tp.cogview4_call, "CogView4Transformer2DModel", ("transformer_blocks",),
                     TWO_HIDDEN_FIRST),
    "auraflow": Case(tp.auraflow_pipe, tp.auraflow_call, "AuraFlowTransformer2DModel",
                     ("joint_transformer_blocks", "single_transformer_blocks"),
                     {"joint_transformer_blocks": TWO_ENC_FIRST, "single_transformer_blocks": Streams()}, exact=False),
    "skyreels_v2": Case(tp.skyreels_pipe, tp.skyreels_call, "SkyReelsV2Transformer3DModel", ("blocks",)),
    "allegro": Case(tp.allegro_pipe, tp.allegro_call, "AllegroTransformer3DModel", ("transformer_blocks",)),
    "hunyuan_image": Case(tp.hunyuan_image_pipe, tp.hunyuan_image_call, "HunyuanImageTransformer2DModel",
                          ("transformer_blocks", "single_transformer_blocks"), TWO_HIDDEN_FIRST),
}  # fmt: skip

FAMILIES = sorted(CASES)

#: Other ways the pipelines call their transformer: true CFG (two calls per step, two branches),
#: models without guidance distillation, a second expert. Checked against the reference only.
VARIANTS = {
    "flux-true-cfg": dataclasses.replace(CASES["flux"], call=functools.partial(tp.flux_call, true_cfg=True)),
    "flux-schnell": dataclasses.replace(CASES["flux"], make=functools.partial(tp.flux_pipe, guidance_embeds=False)),
    "qwenimage-no-cfg": dataclasses.replace(CASES["qwenimage"], call=functools.partial(tp.qwenimage_call, true_cfg=False)),
    "hunyuan_video-true-cfg": dataclasses.replace(CASES["hunyuan_video"],
                                                  call=functools.partial(tp.hunyuan_video_call, true_cfg=True)),
}  # fmt: skip


def _cache(**kw) -> sk.SkipCache:
    """A schedule that caches every other step whatever the timesteps (start_t above any noise level,
    stop_t below)."""
    return sk.SkipCache(**{**dict(interval=2, shallow_blocks=1, start_t=10_000, stop_t=-1), **kw})


def _pipe(family):
    pipe = CASES[family].make()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_never_caching_is_the_plain_pipeline_and_removal_restores_it(family):
    case = CASES[family]
    pipe = _pipe(family)
    base = type(pipe)
    plain = case.call(pipe)
    with pytest.warns(UserWarning, match="skips nothing"):
        sd.apply_skip_cache(pipe, _cache(interval=1), fast_blocks=False)
    assert type(pipe) is not base and type(pipe).__name__ == base.__name__
    assert torch.equal(case.call(pipe), plain)
    sd.remove_skip_cache(pipe)
    assert type(pipe) is base
    assert torch.equal(case.call(pipe), plain)


@pytest.mark.parametrize("forecast", [0, 1])
@pytest.mark.parametrize("family", FAMILIES + sorted(VARIANTS))
def test_cached_steps_equal_the_reference(family, forecast):
    case = CASES.get(family) or VARIANTS[family]
    pipe = case.make()
    pipe.set_progress_bar_config(disable=True)
    plain = case.call(pipe)
    ref = ReferenceResidualCache(
        pipe.transformer, case.lists, case.streams, forecast=forecast, timestep_arg=case.timestep_arg
    )
    expected = case.call(pipe)
    ref.remove()
    assert True in ref.full and False in ref.full, ref.full
    sd.apply_skip_cache(pipe, _cache(forecast=forecast), fast_blocks=False)
    got = case.call(pipe)
    if case.exact:
        assert torch.equal(got, expected), (got - expected).abs().max()
    else:  # fp32 rounding at the output's scale (in float64 these agree to 1e-14)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert not torch.allclose(got, plain, atol=1e-3)  # the cache changed the output: it skipped work


@pytest.mark.parametrize("family", FAMILIES)
def test_two_calls_equal_two_fresh_pipelines(family):
    """The second call of a pipeline sees nothing of the first (its first call is a fresh pipeline's)."""
    case = CASES[family]
    pipe = sd.apply_skip_cache(_pipe(family), _cache(forecast=1))
    case.call(pipe, seed=0)
    assert torch.equal(
        case.call(pipe, seed=1), case.call(sd.apply_skip_cache(_pipe(family), _cache(forecast=1)), seed=1)
    )


def _count_calls(pipe, lists) -> list[int]:
    blocks = [b for name in lists for b in getattr(pipe.transformer, name)]
    counts = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda mod, inp, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.mark.parametrize("family", FAMILIES)
def test_the_default_schedule_skips_the_middle_blocks(family):
    """The family's default schedule on its pipeline's own timesteps (read through the family's
    ``Timestep``): the middle blocks run on fewer calls than the outer ones."""
    case = CASES[family]
    pipe = _pipe(family)
    counts = _count_calls(pipe, case.lists)
    sd.apply_skip_cache(pipe)
    case.call(pipe, num_inference_steps=8)
    shallow = sd.default_cache(pipe.transformer).shallow_blocks
    outer, middle = counts[:shallow] + counts[len(counts) - shallow :], counts[shallow : len(counts) - shallow]
    assert len(set(outer)) == 1 and len(set(middle)) == 1 and middle[0] < outer[0], counts


def test_every_family_is_declared():
    declared = {family.name: family for family in sd.FAMILIES}
    for case in CASES.values():
        assert declared[case.transformer].blocks == case.lists
        assert case.transformer in sd.SUPPORTED_TRANSFORMERS


def test_an_unknown_transformer_names_the_supported_ones():
    pipe = _pipe(FAMILIES[0])
    pipe.transformer = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError) as info:
        sd.apply_skip_cache(pipe)
    for name in sd.SUPPORTED_TRANSFORMERS:
        assert name in str(info.value)


@pytest.mark.parametrize(("family", "order"), [("flux", 1), ("skyreels_v2", 1), ("allegro", 0)])
def test_forecast_auto_follows_the_scheduler(family, order):
    """Flow-matching Euler (FLUX) and UniPC on flow sigmas (SkyReels-V2) integrate an ODE: "auto"
    forecasts; Allegro's Euler ancestral sampler injects noise: "auto" reuses."""
    assert order == (
        0 if sd.scheduler_is_stochastic(_pipe(family).scheduler) else sk.cache.forecast.AUTO_DETERMINISTIC_ORDER
    )
    case = CASES[family]
    auto = case.call(sd.apply_skip_cache(_pipe(family), _cache(), forecast="auto"))
    assert torch.equal(auto, case.call(sd.apply_skip_cache(_pipe(family), _cache(forecast=order))))


def test_wan22_experts_each_run_their_own_request():
    """Wan 2.2 A14B: the pipeline switches from ``transformer`` to ``transformer_2`` below its boundary
    timestep; each expert caches its own steps (its first step full)."""
    pipe = tp.wan_pipe(two_experts=True)
    pipe.set_progress_bar_config(disable=True)
    refs = [
        ReferenceResidualCache(m, ("blocks",), Streams(), forecast=1) for m in (pipe.transformer, pipe.transformer_2)
    ]
    expected = tp.wan_call(pipe, num_inference_steps=6)
    for ref in refs:
        ref.remove()
        assert True in ref.full and False in ref.full, ref.full
    sd.apply_skip_cache(pipe, _cache(forecast=1), fast_blocks=False)
    assert torch.equal(tp.wan_call(pipe, num_inference_steps=6), expected)


@pytest.mark.parametrize("offload", ["model", "sequential"])
@pytest.mark.parametrize("family", ["flux", "wan"])
def test_cpu_offload_hooks_compose(family, offload):
    """accelerate's offload hooks (execution device cpu, so they run here) around a cached call."""
    accelerate = pytest.importorskip("accelerate")
    case = CASES[family]
    expected = case.call(sd.apply_skip_cache(_pipe(family), _cache(forecast=1)))
    pipe = _pipe(family)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=torch.device("cpu"))
    else:
        accelerate.cpu_offload(pipe.transformer, torch.device("cpu"))
    assert torch.equal(case.call(sd.apply_skip_cache(pipe, _cache(forecast=1))), expected)


def test_a_repeated_timestep_is_a_branch_only_on_the_same_latents():
    """True CFG calls the transformer twice at one timestep on the same latents: two branches, each
    starting full. A second-order solver (Heun) calls it at a repeated timestep on new latents: the
    next step, cached here."""
    pipe = _pipe("flux")
    t = pipe.transformer
    x = torch.randn(1, 4, 16)
    args = dict(encoder_hidden_states=torch.randn(1, 6, 32), pooled_projections=torch.randn(1, 32),
                img_ids=torch.zeros(4, 3), txt_ids=torch.zeros(6, 3), guidance=torch.tensor([3.5]))  # fmt: skip
    with sd.enable_skip_cache(t, _cache(), fast_blocks=False) as request:
        t(x, timestep=torch.tensor([1.0]), **args)
        t(x, timestep=torch.tensor([1.0]), **args)
        assert (request.full_steps, request.cached_steps) == (2, 0)  # two branches, each its first step
        t(x + 1, timestep=torch.tensor([0.5]), **args)  # branch 0's second step: cached
        t(
            x + 2, timestep=torch.tensor([0.5]), **args
        )  # new latents: branch 0's third step (full), not branch 1's second
        assert (request.full_steps, request.cached_steps) == (3, 1)
