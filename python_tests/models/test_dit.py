import json
import pathlib

import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.models import PRESETS

from . import reference_dit as ref
from .conftest import randomize

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def inputs(cfg, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg["in_channels"], cfg["input_size"], cfg["input_size"], generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, cfg["num_classes"], (batch,), generator=g)
    return x, t, y


@pytest.mark.parametrize("cls, golden", [(sk.DiT, "dit_xl_2_keys.json"), (sk.SkipDiT, "dit_xl_2_skip_keys.json")])
def test_state_dict_matches_official_keys_and_shapes(cls, golden):
    expected = json.loads((GOLDEN / golden).read_text())
    with torch.device("meta"):
        model = cls.from_preset("DiT-XL/2")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets(name):
    with torch.device("meta"):
        model = sk.SkipDiT.from_preset(name, input_size=32)
    cfg = PRESETS[name]
    assert (model.depth, model.hidden_size, model.patch_size, model.num_heads) == (
        cfg["depth"], cfg["hidden_size"], cfg["patch_size"], cfg["num_heads"],
    )  # fmt: skip
    assert len(model.skip_linears) == cfg["depth"] // 2


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        sk.DiT.from_preset("DiT-M/2")


@pytest.mark.parametrize("cls, skip", [(sk.DiT, False), (sk.SkipDiT, True)])
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_matches_reference(cls, skip, batch, tiny_config):
    model = randomize(cls(**tiny_config))
    x, t, y = inputs(tiny_config, batch)
    with torch.no_grad():
        out = model(x, t, y)
    expected = ref.forward(model.state_dict(), tiny_config, x, t, y, skip=skip).float()
    assert out.shape == (batch, 8, 8, 8)
    assert rel_err(out, expected) < 2e-5


def test_forward_without_learned_sigma(tiny_config):
    cfg = {**tiny_config, "learn_sigma": False, "patch_size": 4}
    model = randomize(sk.SkipDiT(**cfg))
    x, t, y = inputs(cfg)
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == (3, 4, 8, 8)
    assert rel_err(out, ref.forward(model.state_dict(), cfg, x, t, y, skip=True).float()) < 2e-5


@pytest.mark.parametrize("guide_all", [False, True])
def test_forward_with_cfg(guide_all, tiny_config):
    model = randomize(sk.SkipDiT(**tiny_config))
    x, t, _ = inputs(tiny_config, batch=4)
    y = torch.tensor([1, 2, 10, 10])  # second half: the null class
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, 4.0, guide_all_channels=guide_all)
    expected = ref.forward_with_cfg(
        model.state_dict(), tiny_config, x, t, y, 4.0, skip=True, guided=4 if guide_all else 3
    )
    assert rel_err(out, expected) < 2e-5


def test_odd_depth_skip_model_is_refused(tiny_config):
    with pytest.raises(ValueError, match="even depth"):
        sk.SkipDiT(**{**tiny_config, "depth": 5})


@pytest.mark.parametrize(
    "x_shape, t, y, match",
    [
        ((2, 3, 8, 8), [1, 2], [0, 1], "channels"),
        ((2, 4, 7, 7), [1, 2], [0, 1], "not divisible by the patch size"),
        ((2, 4, 16, 16), [1, 2], [0, 1], "input_size"),
        ((2, 4, 8, 8), [1, 2, 3], [0, 1], r"t must have shape \(2,\)"),
        ((2, 4, 8, 8), [1, 2], [0], r"y must have shape \(2,\)"),
        ((2, 4, 8, 8), [1, 2], [0, 11], "class labels must be in 0..10"),
        ((2, 4, 8, 8), [1, 2], [-1, 0], "class labels"),
        ((2, 4, 8, 8), [1, 2], [1.7, 0.0], "y must hold integer class labels, got torch.float32"),
        ((2, 4, 8, 8), [1, 2], [True, False], "y must hold integer class labels, got torch.bool"),
    ],
)
def test_bad_inputs_name_the_problem(x_shape, t, y, match, tiny_config):
    model = sk.SkipDiT(**tiny_config)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(x_shape), torch.tensor(t), torch.tensor(y))
