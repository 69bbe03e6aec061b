"""The skip-stack contract: a family written only here (text-conditioned, video-shaped latents with
channels in dimension 2, an odd skip pairing and a middle unit without a skip) samples with
Skip-Cache, forecast and CFG through ``sample()`` and step-by-step sessions, with no change to
``cache/`` or ``sampling/``; and those packages name no model family."""

import ast
import pathlib

import pytest
import torch
import torch.nn as nn

import skipdit_kernels as sk
from skipdit_kernels.cache import Condition, as_skip_stack, register_skip_stack, skip_partners
from skipdit_kernels.sampling import GaussianDiffusion

FRAMES, CHANNELS, SIDE, HIDDEN, TEXT, LENGTH = 2, 3, 4, 16, 8, 3
PARTNERS = {6: 0, 5: 2, 4: 1}  # unit 3 neither pushes nor pops; 5 fuses 2 (not the mirror image)


class TextVideoStack(nn.Module):
    """Tokens: one per (frame, pixel); units: residual MLP blocks reading the masked mean of the text."""

    num_units = 7
    latent_shape = (FRAMES, CHANNELS, SIDE, SIDE)
    channel_dim = 2
    learn_sigma = True

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x_in = nn.Linear(CHANNELS, HIDDEN)
        self.t_in = nn.Linear(1, HIDDEN)
        self.text_in = nn.Linear(TEXT, HIDDEN)
        self.pooled_in = nn.Linear(TEXT, HIDDEN)
        self.units = nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(self.num_units))
        self.fuse = nn.ModuleDict({str(i): nn.Linear(2 * HIDDEN, HIDDEN) for i in PARTNERS})
        self.out = nn.Linear(HIDDEN, 2 * CHANNELS)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    # the contract
    def skip_partner(self, i):
        return PARTNERS.get(i)

    def condition(self, conditioning):
        text, mask, pooled = conditioning["text"], conditioning["mask"], conditioning["pooled"]
        n = text.shape[0]
        if text.shape != (n, LENGTH, TEXT) or mask.shape != (n, LENGTH) or pooled.shape != (n, TEXT):
            raise ValueError(f"bad text conditioning shapes {text.shape}, {mask.shape}, {pooled.shape}")
        return Condition({"text": text, "mask": mask.bool(), "pooled": pooled})

    def null_condition(self, cond):
        return Condition(
            {
                "text": torch.zeros_like(cond["text"]),
                "mask": torch.ones_like(cond["mask"]),
                "pooled": torch.zeros_like(cond["pooled"]),
            }
        )

    def latent_shape_for(self, image_size):
        raise ValueError(f"image_size is not supported; the latents are {self.latent_shape}")

    def check_inputs(self, x, t, cond):
        if x.shape[1:] != self.latent_shape:
            raise ValueError(f"x must be (N, {self.latent_shape}), got {tuple(x.shape)}")
        return torch.as_tensor(t, device=x.device).expand(x.shape[0]), cond

    def embed(self, x, t, cond):
        n = x.shape[0]
        tokens = x.permute(0, 1, 3, 4, 2).reshape(n, -1, CHANNELS)
        mask = cond["mask"].to(x.dtype)[..., None]
        text = (self.text_in(cond["text"]) * mask).sum(1) / mask.sum(1).clamp(min=1)
        ctx = torch.tanh(self.t_in(t[:, None].to(x.dtype) / 1000) + text + self.pooled_in(cond["pooled"]))
        return self.x_in(tokens), ctx

    def run_block(self, i, h, ctx, skip):
        if skip is not None:
            h = self.fuse[str(i)](torch.cat([h, skip], -1))
        return h + torch.tanh(self.units[i](h) + ctx[:, None])

    def finish(self, h, ctx):
        n = h.shape[0]
        out = self.out(h).reshape(n, FRAMES, SIDE, SIDE, 2 * CHANNELS)
        return out.permute(0, 1, 4, 2, 3)

    def guided_channels(self, guide_all_channels):
        return CHANNELS

    def split_call(self, args, kwargs):
        x, t, cond = args
        return x, t, Condition(cond)

    def wrap_output(self, out, args, kwargs):
        return {"sample": out}

    def forward(self, x, t, cond):
        t, cond = self.check_inputs(x, t, cond)
        h, ctx = self.embed(x, t, cond)
        outputs = []
        for i in range(self.num_units):
            j = self.skip_partner(i)
            h = self.run_block(i, h, ctx, None if j is None else outputs[j])
            outputs.append(h)
        return {"sample": self.finish(h, ctx)}


def text_conditioning(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, LENGTH, dtype=torch.bool)
    mask[0, -1] = False
    return {
        "text": torch.randn(n, LENGTH, TEXT, generator=g),
        "mask": mask,
        "pooled": torch.randn(n, TEXT, generator=g),
    }


def reference_sample(model, conditioning, steps, cfg_scale, shallow, interval, forecast, seed, method="ddim"):
    """Independent of cache/ and sampling/'s trajectory: the schedule's rules, the stored state entering
    unit L - shallow, Lagrange extrapolation in float64, guidance on dim 2, the diffusion step on a
    channels-first view."""
    diffusion = GaussianDiffusion.create(steps, method=method, learn_sigma=True)
    g = torch.Generator().manual_seed(seed)
    n = conditioning["text"].shape[0]
    x = torch.randn(n, *model.latent_shape, generator=g)
    cond = model.null_condition(conditioning)
    cond = {k: torch.cat([conditioning[k], cond[k]]) for k in cond}
    L, boundary = model.num_units, model.num_units - shallow
    stored, counter = [], 0  # (counter, state) of full steps
    with torch.no_grad():
        for i, t in zip(range(steps - 1, -1, -1), diffusion.timesteps):
            full = counter % interval == 0 or not stored
            xx = torch.cat([x, x])
            h, ctx = model.embed(xx, torch.full((2 * n,), t), cond)
            outputs = {}
            units = range(L) if full else [*range(shallow), *range(boundary, L)]
            for u in units:
                if u == boundary:
                    if full:
                        stored = (stored + [(counter, h.clone())])[-(forecast + 1) :]
                    else:
                        nodes = [s for s, _ in stored]
                        h = torch.zeros_like(h, dtype=torch.float64)
                        for j, (s_j, state) in enumerate(stored):
                            w = 1.0
                            for m, s_m in enumerate(nodes):
                                if m != j:
                                    w *= (counter - s_m) / (s_j - s_m)
                            h = h + w * state.double()
                        h = h.float()
                j = model.skip_partner(u)
                h = model.run_block(u, h, ctx, None if j is None else outputs[j])
                outputs[u] = h
            out = model.finish(h, ctx)
            c, u_ = out[:n], out[n:]
            eps = u_[:, :, :CHANNELS] + cfg_scale * (c[:, :, :CHANNELS] - u_[:, :, :CHANNELS])
            out = torch.cat([eps, c[:, :, CHANNELS:]], dim=2)
            noise = torch.randn(x.shape, generator=g) if diffusion.is_stochastic else None
            step = diffusion.step(
                out.transpose(1, 2), x.transpose(1, 2), i, None if noise is None else noise.transpose(1, 2)
            )
            x = step.transpose(1, 2)
            counter += 1
    return x


@pytest.fixture(scope="module")
def model():
    return TextVideoStack().eval()


def test_the_test_family_is_a_skip_stack(model):
    assert as_skip_stack(model) is model and skip_partners(model) == PARTNERS


@pytest.mark.parametrize("interval,forecast", [(2, 0), (3, 1), (2, 2)])
def test_sample_follows_the_reference_schedule_with_cfg_and_forecast(model, interval, forecast):
    conditioning = text_conditioning(2)
    cache = sk.SkipCache(interval=interval, shallow_blocks=1, forecast=forecast, stop_t=-1)
    got, info = sk.sample(
        model,
        conditioning,
        steps=10,
        method="ddim",
        cfg_scale=2.5,
        cache=cache,
        seed=3,
        progress=False,
        return_info=True,
    )
    want = reference_sample(model, conditioning, 10, 2.5, shallow=1, interval=interval, forecast=forecast, seed=3)
    assert got.shape == (2, FRAMES, CHANNELS, SIDE, SIDE) and info.cached_steps > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    uncached = sk.sample(model, conditioning, steps=10, method="ddim", cfg_scale=2.5, seed=3, progress=False)
    assert not torch.equal(got, uncached)


def test_a_step_by_step_session_runs_the_same_units_and_wraps_the_output(model):
    conditioning = text_conditioning(2)
    x = torch.randn(2, *model.latent_shape)
    cache = sk.SkipCache(interval=2, shallow_blocks=1)
    calls = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, i=i: calls.append(i)) for i, m in enumerate(model.units)]
    try:
        with sk.enable_skip_cache(model, cache) as request, torch.no_grad():
            first = model(x, 900, conditioning)
            second = model(x, 880, conditioning)
    finally:
        for hk in hooks:
            hk.remove()
    assert calls == list(range(7)) + [0, 6]
    with torch.no_grad():
        plain = model(x, 900, conditioning)
    assert torch.equal(first["sample"], plain["sample"]) and second["sample"].shape == plain["sample"].shape
    assert (request.full_steps, request.cached_steps) == (1, 1)


def test_a_pairing_that_a_cached_step_cannot_serve_is_refused(model):
    with pytest.raises(ValueError, match="unit 5 runs on cached steps but fuses the output of unit 2"):
        sk.sample(
            model,
            text_conditioning(1),
            steps=4,
            method="ddim",
            cfg_scale=1.0,
            cache=sk.SkipCache(interval=2, shallow_blocks=2),
            progress=False,
        )


def test_an_adapter_object_can_be_registered_for_a_foreign_class():
    class Foreign(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = TextVideoStack()

    register_skip_stack(Foreign, lambda m: m.inner)
    foreign = Foreign()
    assert as_skip_stack(foreign) is foreign.inner
    with pytest.raises(TypeError, match="not a skip stack.*Foreign"):
        as_skip_stack(nn.Linear(2, 2))


FAMILY_NAMES = {
    "DiT",
    "SkipDiT",
    "Latte",
    "Hunyuan",
    "HunyuanDiT",
    "x_embedder",
    "t_embedder",
    "y_embedder",
    "pos_embed",
    "blocks",
    "depth",
    "in_channels",
    "num_classes",
    "long_skips",
    "skip_linears",
    "skip_norms",
    "input_size",
    "forward_with_cfg",
    "_check_inputs",
}


@pytest.mark.parametrize("package", ["cache", "sampling"])
def test_cache_and_sampling_name_no_model_family(package):
    root = pathlib.Path(sk.__file__).parent / package
    found = []
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in FAMILY_NAMES:
                found.append(f"{path.name}:{node.lineno}: {name}")
            # the family-neutral skip stack (Condition, the traversal) is the one models module they use
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and "models" in node.module
                and node.module != "models.stack"
            ):
                found.append(f"{path.name}:{node.lineno}: imports {node.module}")
    assert not found


def test_models_do_not_import_cache():
    root = pathlib.Path(sk.__file__).parent / "models"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith(("cache", "sampling")), f"{path.name} imports {node.module}"


def test_an_adapter_lacking_a_member_is_refused_naming_it():
    class Partial(nn.Module):
        pass

    class PartialStack:
        def __init__(self, model):
            inner = TextVideoStack()
            for name in (
                "num_units",
                "skip_partner",
                "embed",
                "run_block",
                "finish",
                "latent_shape",
                "channel_dim",
                "learn_sigma",
                "guided_channels",
                "condition",
                "null_condition",
                "check_inputs",
            ):
                setattr(self, name, getattr(inner, name))

    register_skip_stack(Partial, PartialStack)
    with pytest.raises(
        TypeError, match=r"PartialStack of Partial lacks \['latent_shape_for', 'split_call', 'wrap_output'\]"
    ):
        as_skip_stack(Partial())


def test_a_condition_carries_per_sample_tensors_and_a_static_part():
    rotary = (torch.randn(4, 2), torch.randn(4, 2))
    cond = Condition({"text": torch.randn(2, 3, 5), "mask": torch.ones(2, 3)}, {"rotary": rotary, "temporal": False})
    assert cond.batch == 2 and set(cond) == {"text", "mask"} and "rotary" not in cond
    assert Condition(batch=3).batch == 3 and not Condition(batch=3).tensors  # no fake (N, 0) tensor for a batch size
    both = cond.cat(cond)
    assert both.batch == 4 and both.static["rotary"] is rotary and torch.equal(both["text"][2:], cond["text"])
    buffers = cond.zeros_like().copy_(cond)
    assert buffers.signature() == cond.signature() and torch.equal(buffers.static["rotary"][1], rotary[1])
    assert buffers.static["rotary"][1] is not rotary[1] and buffers.static["temporal"] is False
    assert set(cond.named_tensors()) == {"text", "mask", "static.rotary.0", "static.rotary.1"}
    other = Condition(cond.tensors, {"rotary": rotary, "temporal": True})
    assert other.signature() != cond.signature()
    with pytest.raises(ValueError, match="cannot join conditions of different kinds"):
        cond.cat(other)
    with pytest.raises(ValueError, match="cannot join"):
        cond.cat(Condition(cond.tensors, {"rotary": (rotary[0], rotary[1] + 1), "temporal": False}))


class FlaggedStack(TextVideoStack):
    """The test family with a host flag in its forward (``mixing``: whether the units read the
    text context), carried as a static part of the condition."""

    def split_call(self, args, kwargs):
        x, t, cond = args
        return x, t, Condition(cond, {"mixing": kwargs.get("mixing", True)})

    def embed(self, x, t, cond):
        h, ctx = super().embed(x, t, cond)
        return h, ctx if cond.static.get("mixing", True) else torch.zeros_like(ctx)

    def forward(self, x, t, cond, mixing=True):
        t, cond = self.check_inputs(x, t, Condition(cond, {"mixing": mixing}))
        h, ctx = self.embed(x, t, cond)
        outputs = []
        for i in range(self.num_units):
            j = self.skip_partner(i)
            h = self.run_block(i, h, ctx, None if j is None else outputs[j])
            outputs.append(h)
        return {"sample": self.finish(h, ctx)}


@pytest.mark.parametrize("mixing", [True, False])
def test_a_static_host_flag_reaches_the_stack_and_keys_the_trajectory(mixing):
    """A static flag of the condition (no fake batch tensor) reaches the stack; a session's full
    step equals the plain forward, and flipping the flag starts a new trajectory."""
    model = FlaggedStack().eval()
    x, conditioning = torch.randn(2, *model.latent_shape), text_conditioning(2)

    def forward(t, flag):
        with torch.no_grad():
            return model(x, torch.tensor([t, t]), conditioning, mixing=flag)["sample"]

    plain = forward(500.0, mixing)
    with sk.enable_skip_cache(model, sk.SkipCache(interval=2, shallow_blocks=1, start_t=1000)) as request:
        assert torch.equal(forward(500.0, mixing), plain)
        forward(400.0, mixing)
        assert request.last_step_full is False
        forward(300.0, not mixing)  # another static part: a fresh trajectory, full
        assert request.last_step_full is True
    assert not torch.equal(plain, forward(500.0, not mixing))
