"""Conversion of plain DiT / Latte models to their long-skip variants: every backbone tensor carried
bit-exactly, every new tensor a skip-branch tensor, the skip model's forward what the contract says,
and the two initialisations' step-0 output change."""

import pytest
import torch

from skipdit_kernels.cli import main
from skipdit_kernels.models import DiT, LatteSkip, SkipDiT, load_checkpoint, save_checkpoint
from skipdit_kernels.training import convert as cv

DIT_CFG = dict(input_size=8, patch_size=2, in_channels=2, hidden_size=32, depth=4, num_heads=2, num_classes=5)
LATTE_CFG = dict(
    input_size=8,
    patch_size=4,
    in_channels=2,
    hidden_size=32,
    depth=4,
    num_heads=2,
    num_frames=3,
    num_classes=5,
    extras=2,
)


def randomize(module, seed, std=0.1):
    """Random weights everywhere (the official init zeroes adaLN, which makes every block a no-op)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if name.endswith("norm.weight") else 0.0))
    return module.eval()


def assert_carried(source_state, model, conversion):
    state = model.state_dict()
    assert conversion.carried == sorted(source_state)
    for k in conversion.carried:
        assert torch.equal(state[k], source_state[k]), k
    assert conversion.new == sorted(set(state) - set(source_state))
    assert conversion.new and all(cv.is_skip_parameter(k) for k in conversion.new)
    half = model.num_units // 2
    assert len(conversion.new) == 4 * half  # per branch: norm weight, bias; projection weight, bias


def test_dit_to_skipdit_carries_every_tensor_and_lists_the_new():
    dit = randomize(DiT(**DIT_CFG), 0)
    for init in cv.INITS:
        model, conversion = cv.convert_dit(dit, init)
        assert type(model) is SkipDiT and model.config == dit.config
        assert_carried(dit.state_dict(), model, conversion)
        assert conversion.relative_error is not None


def test_the_skip_model_forward_is_the_contracts_and_the_backbone_run_is_the_original():
    dit = randomize(DiT(**DIT_CFG), 1)
    model, _ = cv.convert_dit(dit, "official")
    x, t, cond = cv.calibration_inputs(model, num=4, seed=3)
    with torch.no_grad():
        original = dit(x, t, cond["y"])
        converted = model(x, t, cond["y"])
    _, backbone = cv.unit_activations(model, x, t, cond)
    torch.testing.assert_close(backbone, original, rtol=0, atol=0)
    torch.testing.assert_close(cv.skip_stack_output(model, x, t, cond), converted, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(converted, original, atol=1e-3)


def test_identity_init_keeps_the_output_much_closer_than_the_official_init():
    dit = randomize(DiT(**DIT_CFG), 2)
    held_out = cv.calibration_inputs(dit, num=16, seed=7)
    errors = {}
    for init in cv.INITS:
        model, conversion = cv.convert_dit(dit, init, cv.calibration_inputs(dit, num=16, seed=5))
        errors[init] = cv.step0_relative_error(model, held_out)
        if init == "identity":  # the skip half of every projection is zero, the x half diagonal
            for proj in model.skip_linears:
                w = proj.linear.weight
                assert torch.count_nonzero(w[:, w.shape[0] :]) == 0
                assert torch.equal(w[:, : w.shape[0]], torch.diag(torch.diagonal(w[:, : w.shape[0]])))
    assert errors["identity"] < 0.5 * errors["official"], errors


def test_official_init_is_the_official_codes():
    dit = randomize(DiT(**DIT_CFG), 3)
    torch.manual_seed(0)
    model, _ = cv.convert_dit(dit, "official")
    for norm in model.skip_norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(
            norm.bias, torch.zeros_like(norm.bias)
        )
    w = model.skip_linears[0].linear.weight
    bound = 1 / (w.shape[1] ** 0.5)  # torch's nn.Linear default (DiT_skip builds the branch after its init)
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert model.skip_linears[0].linear.bias.abs().max() > 0


def test_refuses_a_model_that_already_has_skips():
    with pytest.raises(ValueError, match="already has long skips"):
        cv.convert_dit(SkipDiT(**DIT_CFG))
    with pytest.raises(ValueError, match="init must be one of"):
        cv.convert_dit(DiT(**DIT_CFG), "zeros")


def plain_latte_state():
    """An official class-to-video Latte state_dict: Latte-skip's keys without the skip branches."""
    skip = randomize(LatteSkip(**LATTE_CFG), 4)
    return {k: v.clone() for k, v in skip.state_dict().items() if not cv.is_skip_parameter(k)}


def test_latte_to_latteskip_carries_every_tensor():
    state = plain_latte_state()
    for init in cv.INITS:
        model, conversion = cv.convert_latte(state, init, num_heads=2)
        assert type(model) is LatteSkip and model.num_frames == 3 and model.extras == 2
        assert_carried(state, model, conversion)
    with pytest.raises(ValueError, match="already has long skips"):
        cv.convert_latte(LatteSkip(**LATTE_CFG).state_dict(), num_heads=2)


def test_latte_official_init_is_xavier_with_zero_bias():
    model, conversion = cv.convert_latte(plain_latte_state(), "official", num_heads=2)
    assert torch.count_nonzero(model.skip_linears[0].linear.bias) == 0
    identity, ident = cv.convert_latte(plain_latte_state(), "identity", num_heads=2)
    assert ident.relative_error < conversion.relative_error


def test_convert_checkpoint_and_cli(tmp_path, capsys):
    dit = randomize(DiT(**DIT_CFG), 5)
    save_checkpoint(dit, tmp_path / "dit.safetensors")
    assert (
        main(
            [
                "convert",
                "--ckpt",
                str(tmp_path / "dit.safetensors"),
                "--out",
                str(tmp_path / "skip.safetensors"),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "carried exactly" in out and "relative" in out
    model = load_checkpoint(tmp_path / "skip.safetensors")
    assert type(model) is SkipDiT
    for k, v in dit.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    # a Latte checkpoint (official keys, no config carried)
    torch.save({"ema": plain_latte_state()}, tmp_path / "latte.pt")
    conversion = cv.convert_checkpoint(tmp_path / "latte.pt", tmp_path / "latte_skip.safetensors", num_heads=2)
    assert conversion.target == "LatteSkip"
    assert type(load_checkpoint(tmp_path / "latte_skip.safetensors")) is LatteSkip
    # a skip checkpoint is refused in one line
    assert (
        main(["convert", "--ckpt", str(tmp_path / "skip.safetensors"), "--out", str(tmp_path / "again.safetensors")])
        == 2
    )
    assert "already has long skips" in capsys.readouterr().err


def test_diffusers_dit_to_skipdit():
    pytest.importorskip("diffusers")
    from skipdit_kernels.integrations.diffusers import dit_from_diffusers, dit_to_diffusers

    # random weights with one shared embedder (diffusers keeps a copy per block, the DiT one)
    transformer = dit_to_diffusers(randomize(DiT(**DIT_CFG), 6))
    model, conversion = cv.convert_diffusers_dit(transformer)
    assert conversion.source == "DiTTransformer2DModel" and type(model) is SkipDiT
    assert_carried(dit_from_diffusers(transformer).state_dict(), model, conversion)


def test_diffusers_latte_to_latte_t2v_skip(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from skipdit_kernels.integrations.latte_t2v import LatteT2VSkip

    transformer = randomize(diffusers.LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=4, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_single", cross_attention_dim=16,
        caption_channels=8, video_length=3), 7)  # fmt: skip
    source = transformer.state_dict()
    for init in cv.INITS:
        model, conversion = cv.convert_diffusers_latte(transformer, init)
        assert type(model) is LatteT2VSkip
        state = model.state_dict()
        assert conversion.carried == sorted(source)
        assert all(torch.equal(state[k], source[k]) for k in source)
        assert conversion.new == sorted(k for k in set(state) - set(source) if cv.is_skip_parameter(k))
        assert set(state) - set(source) - set(conversion.new) == {"caption_projection.y_embedding"}  # an unused buffer
        assert conversion.relative_error is not None
    transformer.save_pretrained(tmp_path / "latte")
    conversion = cv.convert_checkpoint(tmp_path / "latte", tmp_path / "latte_skip")
    loaded = LatteT2VSkip.from_pretrained(tmp_path / "latte_skip")
    assert all(torch.equal(loaded.state_dict()[k], source[k]) for k in source)


def test_the_converted_latte_without_its_skips_is_the_official_plain_latte():
    """The backbone run of the converted model against an independent float64 reference of the
    official plain ``Latte`` (embed, every pair without fusion, final layer) on the source weights."""
    from python_tests.models import reference_latte as ref

    state = plain_latte_state()
    model, _ = cv.convert_latte(state, "identity", num_heads=2)
    x, t, cond = cv.calibration_inputs(model, num=2, seed=9)
    _, backbone = cv.unit_activations(model, x, t, cond)
    sd = {k: v.double() for k, v in state.items()}
    h, c = ref.embed(sd, LATTE_CFG, x.double(), t, cond["y"])
    for k in range(LATTE_CFG["depth"] // 2):
        h = ref.pair(sd, LATTE_CFG, k, h, c)
    torch.testing.assert_close(backbone.double(), ref.final(sd, LATTE_CFG, h, c), rtol=1e-4, atol=1e-5)


def test_cli_refuses_before_any_work(tmp_path, capsys):
    assert main(["convert", "--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "--ckpt" in capsys.readouterr().err
    save_checkpoint(DiT(**DIT_CFG), tmp_path / "dit.safetensors")
    assert (
        main(["convert", "--ckpt", str(tmp_path / "dit.safetensors"), "--out", str(tmp_path / "no" / "o.safetensors")])
        == 2
    )
    err = capsys.readouterr().err
    assert "--out" in err and len(err.strip().splitlines()) == 1
