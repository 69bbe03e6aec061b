"""Text-to-video Latte-skip (diffusers' LatteTransformer3DModel plus the official long skips)."""

import json
import pathlib
import sys

import pytest
import torch

pytest.importorskip("diffusers")

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.integrations.latte_t2v import LATTE_1_CONFIG, LatteT2VSkip  # noqa: E402
from skipdit_kernels.sampling import GaussianDiffusion, sample  # noqa: E402

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden_latte_t2v as golden  # noqa: E402
from make_golden_latte import golden_weights  # noqa: E402

# 4 pairs, 3 frames, 4 patches of 2x2, 5 text tokens of 12 channels
TINY = {**golden.TINY, "num_layers": 4}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def model():
    m = LatteT2VSkip(**TINY).eval()
    golden_weights(m)
    return m


def test_state_dict_matches_official_keys_and_shapes():
    expected = json.loads((GOLDEN / "latte_t2v_skip_keys.json").read_text())
    with torch.device("meta"):
        m = LatteT2VSkip(**LATTE_1_CONFIG)
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == expected


@pytest.mark.parametrize("masked", [False, True])
def test_matches_the_official_forward(masked):
    """Outputs of the official LatteT2V_skip (28 pairs, tiny width), recorded by make_golden_latte_t2v.py."""
    from safetensors.torch import load_file

    expected = load_file(str(GOLDEN / "latte_t2v_skip_tiny_outputs.safetensors"))["mask" if masked else "no_mask"]
    m = LatteT2VSkip(**golden.TINY).eval()
    golden_weights(m)
    x, t, text, mask = golden.golden_inputs()
    with torch.no_grad():
        out = m(x, t, text, encoder_attention_mask=mask if masked else None).sample
    assert rel_err(out, expected) < 1e-5


def reference(m, x, t, text, mask=None, pairs=None, enter=None):
    """Float64, frame by frame and patch by patch, with the model's diffusers blocks (cast to
    double) for the block arithmetic; the layout, skips, temp_pos_embed and output are written here."""
    import copy

    d = copy.deepcopy(m).double()
    n, c, frames, size, _ = x.shape
    x, text = x.double(), text.double()
    p = m.config.patch_size
    temb, embedded = d.adaln_single(t, added_cond_kwargs={"resolution": None, "aspect_ratio": None}, batch_size=n,
                                    hidden_dtype=torch.float64)  # fmt: skip
    txt = d.caption_projection(text)
    bias = None if mask is None else ((1 - mask.double()) * -10000.0)[:, None]
    h = torch.stack([d.pos_embed(x[:, :, f]) for f in range(frames)], 1)  # (N, F, T, D)
    num = m.config.num_layers
    skips = []
    for i in range(num) if pairs is None else pairs:
        if enter is not None:
            h = enter(i, h)
        if i >= num // 2:
            j = i - num // 2
            z = torch.nn.functional.layer_norm(torch.cat([h, skips.pop()], -1), (h.shape[-1] * 2,),
                                               d.skip_norms[j].weight, d.skip_norms[j].bias, 1e-6)  # fmt: skip
            h = d.skip_linears[j].linear(z)
        h = torch.stack([d.transformer_blocks[i](h[:, f], None, txt, bias, temb, None, None) for f in range(frames)], 1)
        columns = []
        for q in range(h.shape[2]):
            col = h[:, :, q] + (d.temp_pos_embed[0] if i == 0 else 0)
            columns.append(d.temporal_transformer_blocks[i](col, None, None, None, temb, None, None))
        h = torch.stack(columns, 2)
        if i < num // 2:
            skips.append(h)
    shift, scale = (d.scale_shift_table[None] + embedded[:, None]).chunk(2, dim=1)
    out = torch.zeros(n, m.out_channels, frames, size, size, dtype=torch.float64)
    g = size // p
    for f in range(frames):
        tok = d.proj_out(d.norm_out(h[:, f]) * (1 + scale) + shift)
        for k in range(g * g):
            r, col = divmod(k, g)
            out[:, :, f, r * p : (r + 1) * p, col * p : (col + 1) * p] = (
                tok[:, k].reshape(n, p, p, -1).permute(0, 3, 1, 2)
            )
    return out.float()


def inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 3, 4, 4, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randn(batch, 5, 12, generator=g))  # fmt: skip


@pytest.mark.parametrize("masked", [False, True])
def test_any_even_number_of_pairs_matches_reference(model, masked):
    x, t, text = inputs()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]) if masked else None
    with torch.no_grad():
        out = model(x, t, text, encoder_attention_mask=mask, return_dict=False)[0]
        assert rel_err(out, reference(model, x, t, text, mask)) < 2e-5


def test_skip_stack_contract(model):
    assert (model.num_units, model.channel_dim, model.latent_shape, model.learn_sigma) == (4, 1, (4, 3, 4, 4), True)
    assert [model.skip_partner(i) for i in range(4)] == [None, None, 1, 0]
    assert isinstance(model, sk.cache.SkipStack)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(num_layers=3), "even number of .* pairs.*num_layers 3"),
        (dict(norm_type="ada_norm_zero"), "ada_norm_single"),
    ],
)
def test_bad_configuration(change, match):
    with pytest.raises(ValueError, match=match):
        LatteT2VSkip(**{**TINY, **change})


@pytest.mark.parametrize(
    "x_shape, text_shape, match",
    [
        ((2, 4, 5, 4, 4), (2, 5, 12), r"5 frames.*temp_pos_embed \(1, 3, 16\) holds 3"),
        ((2, 3, 3, 4, 4), (2, 5, 12), r"hidden_states \(2, 3, 3, 4, 4\) has 3 channels"),
        ((2, 4, 3, 4, 4), (2, 5, 7), r"encoder_hidden_states must be \(2, L, 12\).*\[2, 5, 7\]"),
        ((2, 4, 3, 6, 6), (2, 5, 12), "resolution 6x6 does not match sample_size 4"),
    ],
)
def test_bad_inputs_name_the_shapes(model, x_shape, text_shape, match):
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(x_shape), torch.tensor([1, 2]), torch.zeros(text_shape))


def test_cfg_needs_negative_embeddings(model):
    with pytest.raises(ValueError, match="negative_encoder_hidden_states"):
        sample(model, torch.zeros(1, 5, 12), steps=2, method="ddim", cfg_scale=4.0, progress=False)


def test_sample_with_video_preset_and_cfg_equals_step_by_step(model):
    """sample() through the executor with the release's text-to-video schedule (interval 2, shallow
    1, full while t >= 700, reset at t <= 50) and CFG equals a step-by-step session driven by hand,
    and the cached steps run pairs 0 and 3 only."""
    g = torch.Generator().manual_seed(4)
    text, negative = torch.randn(2, 5, 12, generator=g), torch.randn(1, 5, 12, generator=g)
    cond = {"encoder_hidden_states": text, "negative_encoder_hidden_states": negative}
    cache = sk.SkipCache.preset("video")
    calls = []
    run_block = model.run_block
    model.run_block = lambda i, *a: (calls.append(i), run_block(i, *a))[1]
    try:
        got, info = sample(model, cond, steps=10, method="ddim", cfg_scale=4.0, cache=cache, progress=False,
                           return_info=True)  # fmt: skip
    finally:
        del model.run_block
    diffusion = GaussianDiffusion.create(10, method="ddim", learn_sigma=True)
    plan = cache.full_steps(diffusion.timesteps)
    assert calls == [i for full in plan for i in ([0, 1, 2, 3] if full else [0, 3])]
    assert (info.full_steps, info.cached_steps) == (plan.count(True), plan.count(False)) and plan.count(False) > 0
    x = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    both = torch.cat([text, negative.expand(2, -1, -1)])
    with sk.enable_skip_cache(model, cache):
        for i, t in zip(range(9, -1, -1), diffusion.timesteps):
            out = model(torch.cat([x, x]), torch.full((4,), t), both).sample
            cond_out, uncond_out = out[:2, :4], out[2:, :4]
            guided = torch.cat([uncond_out + 4.0 * (cond_out - uncond_out), out[:2, 4:]], 1)
            x = diffusion.step(guided, x, i)
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-5)


def test_cached_step_matches_reference(model):
    """A full then a cached step of a session equal the float64 reference with the stored state
    entering the last pair."""
    x, _, text = inputs(seed=2)
    stored = {}

    def store(i, h):
        if i == 3:
            stored["h"] = h
        return h

    def restore(i, h):
        return stored["h"] if i == 3 else h

    with sk.enable_skip_cache(model, sk.SkipCache.preset("video")) as request:
        model(x, torch.tensor([600, 600]), text)
        cached = model(x * 0.5, torch.tensor([580, 580]), text).sample
        assert request.last_step_full is False
    reference(model, x, torch.tensor([600, 600]), text, enter=store)
    expected = reference(model, x * 0.5, torch.tensor([580, 580]), text, pairs=[0, 3], enter=restore)
    assert rel_err(cached, expected) < 2e-5


def test_save_and_from_pretrained_roundtrip(tmp_path, model):
    model.save_pretrained(tmp_path)
    loaded = LatteT2VSkip.from_pretrained(tmp_path).eval()
    x, t, text = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, text).sample, model(x, t, text).sample)
