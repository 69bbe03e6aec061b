"""Data at scale: latents encoded once through a (tiny, random, offline) AutoencoderKL into shards,
video clips from frame folders, both trained on by the same loop."""

import os

import numpy as np
import pytest
import torch

from skipdit_kernels.training.data import as_tensors, encode_latents, load_latents, load_video_folder
from skipdit_kernels.training.loop import build_model, train


def tiny_vae():
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in vae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return vae.eval()


def test_encode_latents_once_into_shards_and_train_on_them(tmp_path):
    vae = tiny_vae()
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(10, 3, 16, 16, generator=g) * 2 - 1, torch.arange(10) % 3
    index = encode_latents(vae, images, labels, tmp_path / "lat", shard_size=4, batch_size=3, seed=0)
    assert index["files"] == [f"latents-0000{i}.safetensors" for i in range(3)] and index["latent_shape"] == [4, 8, 8]
    latents, got_labels = load_latents(tmp_path / "lat")
    assert latents.shape == (10, 4, 8, 8) and torch.equal(got_labels, labels)
    with torch.no_grad():  # an independent reference: the posterior mean, scaled; the sample lies near it
        mean = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        std = vae.encode(images).latent_dist.std * vae.config.scaling_factor
    assert ((latents - mean).abs() <= 6 * std + 1e-6).all()
    encode_latents(vae, images, labels, tmp_path / "again", shard_size=4, batch_size=5, seed=0)
    # seeded: the same noise whatever the batch size (the encoder's own rounding may differ by batch)
    torch.testing.assert_close(load_latents(tmp_path / "again")[0], latents, rtol=1e-5, atol=1e-6)
    x, y = as_tensors(str(tmp_path / "lat"))
    assert torch.equal(x, latents)
    model = build_model(
        "skipdit", input_size=8, patch_size=4, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=3
    )
    r = train(model, str(tmp_path / "lat"), steps=2, batch_size=4, progress=False, threads=1)
    assert len(r.losses) == 2


def test_video_clips_from_frame_folders(tmp_path):
    from PIL import Image

    from skipdit_kernels.models import LatteSkip

    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        for clip in ("c0", "c1"):
            os.makedirs(tmp_path / cls / clip)
            for f in range(5):
                arr = (torch.rand(10, 12, generator=g) * 255).byte().numpy()
                Image.fromarray(arr, mode="L").save(tmp_path / cls / clip / f"{f:03d}.png")
    videos, labels, classes = load_video_folder(tmp_path, size=8, frames=3, channels=1)
    assert videos.shape == (4, 3, 1, 8, 8) and labels.tolist() == [0, 0, 1, 1] and classes == ["a", "b"]
    # frames 0, 2, 4 of each clip (evenly spaced), each as load_image_folder would read it
    one = Image.open(tmp_path / "a" / "c0" / "002.png").convert("L").crop((1, 0, 11, 10)).resize((8, 8), Image.BICUBIC)
    ref = torch.from_numpy(np.asarray(one, dtype=np.float32)) / 255 * 2 - 1
    torch.testing.assert_close(videos[0, 1, 0], ref)
    with pytest.raises(ValueError, match="fewer than the 6"):
        load_video_folder(tmp_path, size=8, frames=6, channels=1)
    model = LatteSkip(
        input_size=8,
        patch_size=4,
        in_channels=1,
        hidden_size=32,
        depth=4,
        num_heads=2,
        num_frames=3,
        num_classes=2,
        extras=2,
    )
    r = train(model, str(tmp_path), steps=2, batch_size=2, progress=False, threads=1)
    assert len(r.losses) == 2
