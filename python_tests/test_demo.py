import math
import os

import numpy as np

import pytest
import torch
from safetensors import safe_open

import skipdit_kernels as sk
from skipdit_kernels import embedded
from skipdit_kernels.cli import main
from skipdit_kernels.commands import demo

BUNDLED = dict(input_size=16, patch_size=4, in_channels=1, hidden_size=96, depth=8, num_heads=4, mlp_ratio=4.0,
               class_dropout_prob=0.1, num_classes=10, learn_sigma=True)


def test_assets_fit_the_size_budget():
    total = sum(os.path.getsize(embedded.asset_path(n)) for n in embedded.FILES)
    assert total <= 10 * 1000 * 1000


@pytest.mark.parametrize("name,cls", [("skipdit", sk.SkipDiT), ("dit", sk.DiT)])
def test_bundled_dits_load_through_the_public_loader(name, cls):
    model = sk.load_checkpoint(embedded.asset_path(name))  # the public loader, no help
    assert type(model) is cls and model.config == BUNDLED
    bundled = embedded.load_bundled(name)
    assert type(bundled) is cls and not bundled.training and bundled.config == BUNDLED
    assert next(bundled.parameters()).dtype == torch.float32
    for a, b in zip(model.state_dict().values(), bundled.state_dict().values()):
        assert torch.equal(a, b)
    with safe_open(embedded.asset_path(name), "pt") as f:
        assert "skipdit_config" in f.metadata()


def test_bundled_classifier_is_accurate_on_held_out_digits():
    from skipdit_kernels.data import digits_split
    from skipdit_kernels.metrics import classifier_accuracy

    clf = embedded.load_bundled("classifier")
    assert not clf.training
    _, (x, y) = digits_split()  # the split the classifier was trained with (seed 0)
    assert classifier_accuracy(clf, x, y) > 0.95
    assert clf.features(x[:4]).shape == (4, 64)


def test_unknown_bundled_name():
    with pytest.raises(ValueError, match="unknown bundled"):
        embedded.load_bundled("nope")


def test_demo_end_to_end_small(tmp_path, capsys):
    rc = main(["demo", "--steps", "6", "--per-class", "1", "--cache", "3", "--threads", "1", "--out-dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "speedup" in out and "PSNR" in out and "classifier accuracy" in out
    from PIL import Image

    for f in demo.OUTPUTS:
        assert f in out
        with open(tmp_path / f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "demo_full.png") as full, Image.open(tmp_path / "demo_compare.png") as compare:
        # full | Skip-Cache | difference, each panel as wide as the full grid, under a band of labels
        assert compare.width > 3 * full.width and compare.height > full.height
        pixels = np.asarray(compare.convert("L"))
        band = pixels[: compare.height - full.height]
        assert (band < 128).sum() > 50  # the labels are drawn
        assert np.array_equal(pixels[-full.height:, : full.width], np.asarray(full.convert("L")))


def test_demo_numbers_small(tmp_path):
    args = main.__globals__["build_parser"]().parse_args(
        ["demo", "--steps", "6", "--per-class", "1", "--threads", "1", "--out-dir", str(tmp_path)])
    r = demo.run_demo(args)
    assert r["full_steps"] + r["cached_steps"] == 6 and r["cached_steps"] == 4
    assert math.isfinite(r["psnr"]) and 0 < r["ssim"] < 1
    assert 0 <= r["accuracy_full"] <= 1


@pytest.mark.slow
def test_full_demo(tmp_path):
    """The README's command at its defaults (10x10 grid, DDIM-50, CFG 3, interval 3)."""
    args = main.__globals__["build_parser"]().parse_args(["demo", "--out-dir", str(tmp_path)])
    r = demo.run_demo(args)
    assert r["accuracy_full"] >= 0.8 and r["psnr"] > 15
