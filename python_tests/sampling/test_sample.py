import numpy as np
import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels import cli
from skipdit_kernels.sampling import GaussianDiffusion, sample

from ..models.conftest import TINY, randomize


@pytest.fixture(scope="module")
def model():
    return randomize(sk.SkipDiT(**TINY), std=0.05)


def test_sample_is_seeded_and_shaped(model):
    a = sample(model, [1, 2, 3], steps=10, method="ddpm", progress=False, seed=3)
    b = sample(model, [1, 2, 3], steps=10, method="ddpm", progress=False, seed=3)
    c = sample(model, [1, 2, 3], steps=10, method="ddpm", progress=False, seed=4)
    assert a.shape == (3, 4, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ddim_sampler_matches_a_manual_loop(model):
    got = sample(model, [5], steps=8, method="ddim", cfg_scale=1.0, progress=False, seed=0)
    diffusion = GaussianDiffusion.create(8, method="ddim", learn_sigma=True)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i, t in zip(range(7, -1, -1), diffusion.timesteps):
            x = diffusion.step(model(x, torch.tensor([t]), torch.tensor([5])), x, i)
    torch.testing.assert_close(got, x)


def test_cfg_matches_forward_with_cfg_loop(model):
    got = sample(model, [1, 2], steps=5, method="ddim", cfg_scale=3.0, progress=False, seed=1)
    diffusion = GaussianDiffusion.create(5, method="ddim", learn_sigma=True)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 2, 10, 10])
    with torch.no_grad():
        for i, t in zip(range(4, -1, -1), diffusion.timesteps):
            out = model.forward_with_cfg(torch.cat([x, x]), torch.full((4,), t), y, 3.0)[:2]
            x = diffusion.step(out, x, i)
    torch.testing.assert_close(got, x)


@pytest.mark.parametrize("interval", [2, 3])
def test_cached_sampling_follows_the_schedule(model, interval):
    cache = sk.SkipCache(interval=interval, shallow_blocks=1)
    latents, info = sample(model, [1, 2], steps=50, method="ddim", cache=cache, progress=False, return_info=True)
    plan = cache.full_steps(GaussianDiffusion.create(50, method="ddim").timesteps)
    assert (info.full_steps, info.cached_steps) == (plan.count(True), plan.count(False))
    assert "forward" not in model.__dict__  # the run's cache does not touch the model
    full = sample(model, [1, 2], steps=50, method="ddim", progress=False)
    assert torch.isfinite(latents).all() and not torch.equal(latents, full)


def test_interval_shorthand_and_bad_cache(model):
    _, info = sample(model, [0], steps=4, method="ddim", cache=2, progress=False, return_info=True, cfg_scale=1)
    assert info.cache == sk.SkipCache(interval=2, shallow_blocks=3) and info.cached_steps == 2
    with pytest.raises(ValueError, match="cache must be"):
        sample(model, [0], steps=4, cache=2.5, progress=False)


@pytest.mark.parametrize(
    "labels, match",
    [
        ([10], r"class labels must be in 0..9"),
        ([-1], r"class labels must be in 0..9"),
        ([1.7], r"class labels must be integers in 0..9, got \[1.7"),
        (torch.tensor([1.0]), r"class labels must be integers"),
        ([True], r"class labels must be integers"),
        ([], "class labels are empty"),
        ("cat", "class labels must be integers"),
    ],
)
def test_class_labels_must_be_integers_in_range(model, labels, match):
    with pytest.raises(ValueError, match=match):
        sample(model, labels, steps=2, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cfg_scale=0.5), r"cfg_scale must be >= 1"),
        (dict(cfg_scale=float("nan")), r"cfg_scale must be a finite number"),
        (dict(device="gpu"), r"unknown device 'gpu'; available: cpu"),
        (dict(device="cuda:7"), r"not available here; available: cpu"),
        (dict(dtype=torch.int32), r"dtype must be a floating"),
    ],
)
def test_bad_arguments_are_refused_before_work(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(model, [1], steps=2, progress=False, **kwargs)


def test_bad_sampling_requests(model):
    with pytest.raises(ValueError, match="input_size is 8"):
        sample(model, [1], image_size=128, steps=2, progress=False)
    no_null = sk.SkipDiT(**{**TINY, "class_dropout_prob": 0.0})
    with pytest.raises(ValueError, match="null class"):
        sample(no_null, [1], steps=2, cfg_scale=4.0, progress=False)


def test_cli_samples_250_ddpm_steps_with_skip_cache(tmp_path, capsys):
    out = tmp_path / "latents.npz"
    code = cli.main(
        ["sample", "--random-init", "--skip", "--preset", "DiT-S/8", "--image-size", "128", "--num-classes", "10",
         "--labels", "1", "2", "--steps", "250", "--cache", "3", "--shallow", "2", "--no-progress", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    latents = np.load(out)["latents"]
    assert latents.shape == (2, 4, 16, 16) and np.isfinite(latents).all()
    plan = sk.SkipCache(interval=3, shallow_blocks=2).full_steps(GaussianDiffusion.create(250).timesteps)
    assert f"250 ddpm steps ({plan.count(True)} full, {plan.count(False)} cached)" in capsys.readouterr().out


def test_cli_writes_a_png_for_pixel_models(tmp_path):
    model = randomize(sk.SkipDiT(**{**TINY, "in_channels": 1}), std=0.05)
    ckpt, out = tmp_path / "pixel.safetensors", tmp_path / "grid.png"
    sk.save_checkpoint(model, ckpt)
    assert cli.main(["sample", "--ckpt", str(ckpt), "--labels", "1", "2", "3", "--steps", "5", "--method", "ddim",
                     "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_errors_cleanly(tmp_path, capsys):
    assert cli.main(["sample", "--steps", "5", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--random-init" in capsys.readouterr().err
    assert cli.main(["sample", "--random-init", "--out", str(tmp_path / "x.png")]) == 2
    assert "--vae" in capsys.readouterr().err


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert "skipdit-kernels" in text and "torch" in text and "backend" in text
