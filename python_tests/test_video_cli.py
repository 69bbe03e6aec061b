"""``skipdit sample`` with a video model: an animated grid (GIF, or MP4 through imageio), latents
decoded frame by frame through a local VAE; refusals before work."""

import importlib.util

import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels import cli
from skipdit_kernels.evaluation import bundled

from .test_cli import no_sampling, refused  # noqa: F401  (fixture)

LATTE = bundled.asset_path("latte")


def gif_frames(path):
    from PIL import Image

    with Image.open(path) as gif:
        return gif.n_frames, gif.size


def test_the_bundled_video_model_samples_a_gif(tmp_path, capsys):
    out = tmp_path / "v.gif"
    code = cli.main(["sample", "--ckpt", LATTE, "--labels", "1", "2", "--steps", "3", "--method", "ddim", "--cfg", "2",
                     "--cache", "2", "--shallow", "1", "--no-progress", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    frames, size = gif_frames(out)
    assert frames == 8 and size[0] > 2 * 16 and size[1] >= 16


def test_video_latents_are_decoded_frame_by_frame_through_a_local_vae(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,),
        layers_per_block=1, latent_channels=4, norm_num_groups=4,
    )  # fmt: skip
    vae.save_pretrained(tmp_path / "vae")
    model = sk.LatteSkip(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2,
                         num_frames=3, num_classes=10, extras=2)  # fmt: skip
    sk.save_checkpoint(model, tmp_path / "latte.safetensors")
    out = tmp_path / "v.gif"
    code = cli.main(["sample", "--ckpt", str(tmp_path / "latte.safetensors"), "--vae", str(tmp_path / "vae"),
                     "--labels", "1", "--steps", "2", "--method", "ddim", "--cfg", "1", "--scale", "1", "--no-progress",
                     "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    frames, (width, height) = gif_frames(out)
    assert frames == 3 and width == height == 8 + 2 * 2  # one 8x8 decoded frame (VAE of one level: 1x) + padding
    latents = torch.zeros(1, 3, 4, 8, 8)
    from skipdit_kernels.io.images import decode_latents

    assert decode_latents(latents, str(tmp_path / "vae")).shape == (1, 3, 3, 8, 8)


@pytest.mark.parametrize(
    "out, message",
    [
        ("v.png", "a video model writes .gif or .mp4 or .npz"),
        ("v.avi", "--out must end in .png (images), .gif or .mp4 (videos)"),
    ],
)
def test_a_video_model_refuses_image_outputs_before_work(tmp_path, capsys, no_sampling, out, message):  # noqa: F811
    err = refused(capsys, ["sample", "--ckpt", LATTE, "--labels", "1", "--out", str(tmp_path / out)])
    assert message in err


def test_mp4_needs_imageio_ffmpeg(tmp_path, capsys, no_sampling):  # noqa: F811
    if importlib.util.find_spec("imageio") and importlib.util.find_spec("imageio_ffmpeg"):
        pytest.skip("imageio with ffmpeg is installed: .mp4 is written")
    err = refused(capsys, ["sample", "--ckpt", LATTE, "--labels", "1", "--out", str(tmp_path / "v.mp4")])
    assert "pip install 'imageio[ffmpeg]'" in err
