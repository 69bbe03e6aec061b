import json
import pathlib
import sys

import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.models import LATTE_PRESETS, LatteSkip, load_checkpoint
from skipdit_kernels.models.checkpoint import CheckpointError

from . import reference_latte as ref
from .conftest import randomize

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden_latte as golden  # noqa: E402

# 2 pairs, 3 frames, 4x4 patches: every path of the model at a size the float64 reference runs fast.
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_frames=3,
            num_classes=6, extras=2)  # fmt: skip


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def inputs(cfg, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = cfg["input_size"]
    x = torch.randn(batch, cfg["num_frames"], cfg["in_channels"], size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, cfg["num_classes"], (batch,), generator=g) if cfg.get("extras", 1) == 2 else None
    return x, t, y


@pytest.mark.parametrize("extras, name", [(2, "ucf101"), (1, "uncond")])
def test_state_dict_matches_official_keys_and_shapes(extras, name):
    expected = json.loads((GOLDEN / f"latte_xl_2_skip_{name}_keys.json").read_text())
    with torch.device("meta"):
        model = LatteSkip.from_preset("Latte-XL/2", num_classes=101, extras=extras)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected


@pytest.mark.parametrize("extras", [2, 1])
def test_matches_the_official_forward(extras):
    """Outputs of the official Latte_skip (14 pairs, tiny width), recorded by make_golden_latte.py."""
    from safetensors.torch import load_file

    expected = load_file(str(GOLDEN / "latte_skip_tiny_outputs.safetensors"))[f"extras{extras}"]
    model = LatteSkip(**golden.TINY, extras=extras).eval()
    golden.golden_weights(model)
    x, t, y = golden.golden_inputs(extras)
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == expected.shape
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("depth, frames, batch", [(4, 3, 1), (8, 2, 3), (8, 4, 2)])
def test_forward_matches_reference(depth, frames, batch):
    cfg = {**TINY, "depth": depth, "num_frames": frames}
    model = randomize(LatteSkip(**cfg))
    x, t, y = inputs(cfg, batch)
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == (batch, frames, 8, 8, 8)
    assert rel_err(out, ref.forward(model.state_dict(), cfg, x, t, y).float()) < 2e-5


def test_unconditional_and_fixed_variance():
    cfg = {**TINY, "extras": 1, "learn_sigma": False, "in_channels": 3, "patch_size": 4}
    model = randomize(LatteSkip(**cfg))
    assert not hasattr(model, "y_embedder")
    x, t, _ = inputs(cfg)
    with torch.no_grad():
        out = model(x, t)
    assert out.shape == (2, 3, 3, 8, 8)
    assert rel_err(out, ref.forward(model.state_dict(), cfg, x, t).float()) < 2e-5


def test_non_contiguous_input_and_scalar_t():
    model = randomize(LatteSkip(**TINY))
    x, _, y = inputs(TINY)
    xt = x.transpose(3, 4).contiguous().transpose(3, 4)  # same values, other strides
    assert not xt.is_contiguous() or xt.stride() != x.stride()
    with torch.no_grad():
        torch.testing.assert_close(model(xt, torch.tensor(500), y), model(x, torch.tensor([500, 500]), y))


@pytest.mark.parametrize("guide_all", [False, True])
def test_forward_with_cfg(guide_all):
    cfg = {**TINY, "in_channels": 6}
    model = randomize(LatteSkip(**cfg))
    x, t, _ = inputs(cfg, batch=4)
    y = torch.tensor([1, 2, 6, 6])  # second half: the null class
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, 4.0, guide_all_channels=guide_all)
    half = x[:2]
    full = ref.forward(model.state_dict(), cfg, torch.cat([half, half]), t, y).float()
    guided = 6 if guide_all else 4  # the official code guides the first 4 channels
    cond, uncond = full[:2, :, :guided], full[2:, :, :guided]
    g = uncond + 4.0 * (cond - uncond)
    expected = torch.cat([torch.cat([g, g]), full[:, :, guided:]], 2)
    assert rel_err(out, expected) < 5e-5


def test_skip_stack_contract():
    model = LatteSkip(**{**TINY, "depth": 8})
    assert (model.num_units, model.channel_dim, model.latent_shape) == (4, 2, (3, 4, 8, 8))
    assert [model.skip_partner(i) for i in range(4)] == [None, None, 1, 0]
    assert model.guided_channels(False) == 4 and model.condition([1, 2])["y"].tolist() == [1, 2]
    assert model.null_condition({"y": torch.tensor([1, 2])})["y"].tolist() == [6, 6]
    uncond = LatteSkip(**{**TINY, "extras": 1})
    assert uncond.condition(3).batch == 3 and not uncond.condition(3).tensors  # no fake (N, 0) tensor
    with pytest.raises(ValueError, match="unconditional"):
        uncond.null_condition(uncond.condition(3))
    with pytest.raises(ValueError, match="number of videos"):
        uncond.condition([1, 2])
    with pytest.raises(ValueError, match="class labels must be in 0..5"):
        model.condition([6])


def test_presets():
    assert LATTE_PRESETS["Latte-XL/2"] == dict(depth=28, hidden_size=1152, patch_size=2, num_heads=16)
    with torch.device("meta"):
        model = LatteSkip.from_preset("Latte-XL/2")
    assert (model.num_units, len(model.skip_linears), model.num_frames, model.latent_shape_for(256)) == (
        14, 7, 16, (16, 4, 32, 32),
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown Latte preset"):
        LatteSkip.from_preset("Latte-M/2")


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(depth=6), r"even number of \(spatial, temporal\) block pairs.*depth 6 \(3 pairs\)"),
        (dict(depth=2), r"depth 2 \(1 pairs\)"),
        (dict(extras=78), "extras=78"),
        (dict(input_size=9), "not divisible by patch_size"),
        (dict(attention_mode="fast"), "attention_mode"),
    ],
)
def test_bad_configuration(change, match):
    with pytest.raises(ValueError, match=match):
        LatteSkip(**{**TINY, **change})


@pytest.mark.parametrize(
    "x_shape, t, y, match",
    [
        ((2, 5, 4, 8, 8), [1, 2], [1, 2], r"5 frames \(x \(2, 5, 4, 8, 8\).*temp_embed \(1, 3, 32\) holds 3"),
        ((2, 3, 3, 8, 8), [1, 2], [1, 2], r"3 channels \(x \(2, 3, 3, 8, 8\).*expects 4"),
        ((2, 4, 8, 8), [1, 2], [1, 2], r"\(N, F, C, H, W\) video tensor, got torch.Size\(\[2, 4, 8, 8\]\)"),
        ((2, 3, 4, 6, 6), [1, 2], [1, 2], "resolution 6x6 does not match the model's input_size 8"),
        ((2, 3, 4, 8, 8), [1, 2, 3], [1, 2], r"t must have shape \(2,\) to match x \(2, 3, 4, 8, 8\), got \(3,\)"),
        ((2, 3, 4, 8, 8), [1, 2], [1], r"y must have shape \(2,\)"),
        ((2, 3, 4, 8, 8), [1, 2], [1, 7], "class labels must be in 0..6"),
        ((2, 3, 4, 8, 8), [1, 2], None, "y \\(class labels\\) is required"),
    ],
)
def test_bad_inputs_name_the_shapes(x_shape, t, y, match):
    model = LatteSkip(**TINY)
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(x_shape), torch.tensor(t), None if y is None else torch.tensor(y))


def test_unconditional_refuses_labels():
    model = LatteSkip(**{**TINY, "extras": 1})
    with pytest.raises(ValueError, match="unconditional.*y must be None"):
        model(torch.zeros(1, 3, 4, 8, 8), torch.tensor([1]), torch.tensor([0]))


@pytest.mark.parametrize("extras", [2, 1])
@pytest.mark.parametrize("wrapper", ["ema", "model"])
def test_load_official_format_checkpoint(tmp_path, extras, wrapper):
    """An official-format checkpoint (train.py's {"ema": ...} / {"model": ...}, no config) builds
    the right LatteSkip from the shapes alone."""
    cfg = {**TINY, "depth": 8, "num_heads": 2, "extras": extras, "num_classes": 6, "num_frames": 4}
    source = randomize(LatteSkip(**cfg))
    path = tmp_path / "latte.pt"
    torch.save({wrapper: source.state_dict(), "opt": {}}, path)
    model = load_checkpoint(path, num_heads=2)
    assert isinstance(model, LatteSkip)
    shapes_tell = [k for k in cfg if extras == 2 or k != "num_classes"]  # no label table: any num_classes
    assert {k: model.config[k] for k in shapes_tell} == {k: cfg[k] for k in shapes_tell}
    x, t, y = inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x, t, y), source(x, t, y))


def test_load_xl_checkpoint_layout_infers_the_preset(tmp_path):
    """The released ucf101 layout: Latte-XL/2, 16 frames, 101 classes + null row; heads from the preset."""
    from skipdit_kernels.models.checkpoint import infer_config

    with torch.device("meta"):
        sd = LatteSkip.from_preset("Latte-XL/2", extras=2, num_classes=101).state_dict()
    cls, config = infer_config(sd)
    assert cls is LatteSkip
    assert config == dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                          mlp_ratio=4.0, num_frames=16, learn_sigma=True, extras=2, num_classes=101,
                          class_dropout_prob=0.1)  # fmt: skip


def test_checkpoint_errors(tmp_path):
    cfg = {**TINY, "depth": 8}
    sd = randomize(LatteSkip(**cfg)).state_dict()
    plain = {k: v for k, v in sd.items() if not k.startswith("skip_")}
    torch.save({"ema": plain}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain Latte"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save({"ema": sd}, tmp_path / "latte.pt")
    with pytest.raises(CheckpointError, match="(?s)mis-shaped.*temp_embed"):
        load_checkpoint(tmp_path / "latte.pt", model=LatteSkip(**{**cfg, "num_frames": 5}))


def test_save_and_load_roundtrip(tmp_path):
    model = randomize(LatteSkip(**{**TINY, "num_heads": 4}))
    sk.save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.num_heads == 4 and loaded.config == model.config
