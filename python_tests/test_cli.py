"""The ``skipdit`` command line: one-line errors before any work, presets, image outputs, file modes,
and a --help that does not import torch."""

import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels import cli
from skipdit_kernels.evaluation import bundled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = bundled.asset_path("skipdit")


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if sampling or training starts: every refusal must come before the work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the work started although the request should have been refused first")

    # skipdit_kernels.sample first: the package resolves it lazily from skipdit_kernels.sampling, and
    # would otherwise remember (and monkeypatch restore) the patched function
    for target in (
        "skipdit_kernels.sample",
        "skipdit_kernels.sampling.sample",
        "skipdit_kernels.training.loop.train",
        "skipdit_kernels.training.loop.build_model",
    ):
        monkeypatch.setattr(target, refuse)


# A refusal comes before the work: far quicker than one sampling run of the demo (tens of seconds).
REFUSAL_SECONDS = 10.0


def refused(capsys, argv) -> str:
    """Run the CLI, expect exit code 2 and exactly one line on stderr, soon; return that line."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = cli.main(argv)
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert seconds < REFUSAL_SECONDS, f"refused after {seconds:.1f} s: the work ran first? {err}"
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"skipdit {argv[0]}: error: "), err
    return err


def parse_error(capsys, argv) -> str:
    """argparse refusals: exit code 2, one line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"skipdit {argv[0]}: error: "), err
    return err


def test_help_imports_neither_torch_nor_the_library():
    code = (
        "import sys\n"
        "from skipdit_kernels import cli\n"
        "for argv in ([], ['info'], ['sample'], ['train'], ['bench'], ['demo']):\n"
        "    try:\n"
        "        cli.main(argv + ['--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'skipdit_kernels.models', 'skipdit_kernels.ops') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_gpu_names_the_available_devices(capsys, tmp_path, no_sampling):
    err = refused(capsys, ["sample", "--ckpt", BUNDLED, "--device", "cuda", "--out", str(tmp_path / "x.png")])
    assert "--device cuda" in err and "available here: cpu" in err


def test_unknown_device_names_the_available_devices(capsys, tmp_path, no_sampling):
    err = refused(capsys, ["sample", "--ckpt", BUNDLED, "--device", "gpu", "--out", str(tmp_path / "x.png")])
    assert "'gpu' is not a device name" in err and "available here: cpu" in err


def test_vae_folder_is_checked_before_sampling(capsys, tmp_path, no_sampling):
    out = str(tmp_path / "x.png")
    err = refused(
        capsys, ["sample", "--random-init", "--preset", "DiT-S/8", "--vae", str(tmp_path / "nope"), "--out", out]
    )
    assert "VAE folder not found" in err and "nope" in err
    (tmp_path / "empty").mkdir()
    err = refused(
        capsys, ["sample", "--random-init", "--preset", "DiT-S/8", "--vae", str(tmp_path / "empty"), "--out", out]
    )
    assert "no config.json" in err


def test_vae_without_diffusers_is_refused_before_sampling(capsys, tmp_path, monkeypatch, no_sampling):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else find_spec(name, *a)
    )
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    err = refused(capsys, ["sample", "--random-init", "--preset", "DiT-S/8", "--vae", str(tmp_path / "vae"),
                           "--out", str(tmp_path / "x.png")])  # fmt: skip
    assert "needs diffusers" in err and "pip install diffusers" in err


@pytest.mark.parametrize("size", [31, 40, 250])
def test_image_size_speaks_of_the_pixels_typed(capsys, tmp_path, size, no_sampling):
    # DiT-S/2 latents: 8x downsampling, patch 2 -> multiples of 16 pixels; never floored silently.
    err = refused(capsys, ["sample", "--random-init", "--preset", "DiT-S/2", "--image-size", str(size),
                           "--out", str(tmp_path / "x.npz")])  # fmt: skip
    lower, upper = size // 16 * 16, size // 16 * 16 + 16
    assert f"--image-size {size}: must be a multiple of 16" in err and f"nearest valid: {lower} or {upper}" in err


def test_image_size_of_a_fixed_model(capsys, tmp_path, no_sampling):
    err = refused(capsys, ["sample", "--ckpt", BUNDLED, "--image-size", "31", "--out", str(tmp_path / "x.png")])
    assert "--image-size 31: this model makes 16-pixel images" in err


@pytest.mark.parametrize("command", ["sample", "demo"])
@pytest.mark.parametrize("value", ["0.5", "-1", "nan"])
def test_guidance_below_one_is_refused_with_the_range(capsys, command, value):
    err = parse_error(capsys, [command, "--cfg", value])
    assert f"argument --cfg: the guidance scale must be a finite number >= 1 (1 = no guidance), got {value}" in err


def test_unknown_preset_lists_the_valid_names(capsys, tmp_path, no_sampling):
    err = refused(capsys, ["sample", "--random-init", "--preset", "SkipDiT-S/2", "--out", str(tmp_path / "x.npz")])
    assert "unknown --preset 'SkipDiT-S/2'" in err and "--skip" in err
    for name in ("DiT-S/2", "DiT-B/4", "DiT-L/8", "DiT-XL/2"):
        assert name in err


def test_a_preset_size_loads_a_skipdit_checkpoint_as_skipdit(tmp_path, monkeypatch):
    """--preset names a size; the checkpoint's keys decide DiT or SkipDiT."""
    model = sk.SkipDiT.from_preset("DiT-S/8", input_size=8, in_channels=1, num_classes=3)
    ckpt = tmp_path / "s8.safetensors"
    sk.save_checkpoint(model, ckpt)
    seen = []

    def record(model, labels, **kwargs):
        seen.append(model)
        return torch.zeros(len(labels), 1, 8, 8), type(
            "Info", (), dict(steps=1, method="ddim", full_steps=1, cached_steps=0, seconds=0.0, forecast=0)
        )

    monkeypatch.setattr("skipdit_kernels.sampling.sample", record)
    assert cli.main(["sample", "--ckpt", str(ckpt), "--preset", "DiT-S/8", "--labels", "0", "--cfg", "1",
                     "--out", str(tmp_path / "x.png")]) == 0  # fmt: skip
    assert type(seen[0]) is sk.SkipDiT and seen[0].config["num_heads"] == 6


def test_random_init_is_one_line_of_notice_not_a_warning(capsys, tmp_path):
    out = tmp_path / "x.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(["sample", "--random-init", "--skip", "--preset", "DiT-S/8", "--image-size", "64",
                         "--num-classes", "4", "--labels", "1", "--steps", "2", "--cfg", "1", "--no-progress",
                         "--out", str(out)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err == "skipdit sample: note: --random-init: random weights, the samples will be noise-like\n"
    assert np.load(out)["latents"].shape == (1, 4, 8, 8)


def test_library_errors_are_one_line_and_debug_gives_the_traceback(capsys, tmp_path, monkeypatch):
    argv = ["sample", "--ckpt", BUNDLED, "--labels", "0", "12", "--out", str(tmp_path / "x.png")]
    err = refused(capsys, argv)  # sample()'s own ValueError
    assert "class labels must be in 0..9" in err
    monkeypatch.setenv("SKIPDIT_DEBUG", "1")
    with pytest.raises(ValueError, match="class labels"):
        cli.main(argv)


def test_other_refusals_before_work(capsys, tmp_path, no_sampling):
    npz, png = str(tmp_path / "x.npz"), str(tmp_path / "x.png")
    assert "--random-init" in refused(capsys, ["sample", "--out", npz])
    assert "--ckpt" in refused(capsys, ["sample", "--ckpt", str(tmp_path / "nope.pt"), "--out", npz])
    assert "--skip goes with --random-init" in refused(capsys, ["sample", "--ckpt", BUNDLED, "--skip", "--out", png])
    assert "apply to image and video output only" in refused(
        capsys, ["sample", "--ckpt", BUNDLED, "--scale", "2", "--out", npz]
    )
    err = refused(capsys, ["sample", "--ckpt", BUNDLED, "--out", str(tmp_path / "missing" / "x.png")])
    assert "does not exist" in err
    assert "must be >= 1, got 0" in parse_error(capsys, ["sample", "--steps", "0"])
    assert "must be >= 1, got 0" in parse_error(capsys, ["demo", "--per-class", "0"])


@pytest.mark.parametrize("scale,side", [(None, 64), (2, 32)])
def test_sample_pngs_of_small_models_are_upscaled(tmp_path, scale, side):
    from PIL import Image

    out = tmp_path / "grid.png"
    argv = [
        "sample",
        "--ckpt",
        BUNDLED,
        "--labels",
        "0",
        "1",
        "2",
        "--steps",
        "2",
        "--method",
        "ddim",
        "--cfg",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ] + (["--scale", str(scale)] if scale else [])
    assert cli.main(argv) == 0
    with Image.open(out) as image:
        factor = side // 16
        # 3 images of 16 px in one row, 2 px padding around each, all upscaled by the factor
        assert image.size == ((3 * 18 + 2) * factor, 18 * factor + 2 * factor)


def test_weight_files_get_the_usual_mode(tmp_path):
    from skipdit_kernels.io.files import save_safetensors

    previous = os.umask(0o022)
    try:
        save_safetensors({"w": torch.ones(2, 3)}, tmp_path / "w.safetensors", {"a": "b"})
        bundled.save_half(sk.DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                                  num_classes=3), str(tmp_path / "h.safetensors"))  # fmt: skip
        torch.save({}, tmp_path / "plain.pt")
    finally:
        os.umask(previous)
    for name in ("w.safetensors", "h.safetensors", "plain.pt"):
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == "0o644", name
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata() == {"a": "b"} and torch.equal(f.get_tensor("w"), torch.ones(2, 3))


def test_classifier_training_run_files_get_the_usual_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        assert (
            cli.main(
                [
                    "train",
                    "--model",
                    "classifier",
                    "--epochs",
                    "1",
                    "--threads",
                    "1",
                    "--no-progress",
                    "--out",
                    str(tmp_path / "run"),
                    "--export",
                    str(tmp_path / "clf.safetensors"),
                ]
            )
            == 0
        )
    finally:
        os.umask(previous)
    for path in (tmp_path / "run" / "model.safetensors", tmp_path / "run" / "log.jsonl", tmp_path / "clf.safetensors"):
        assert oct(os.stat(path).st_mode & 0o777) == "0o644", path
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])


def test_bundled_digits_are_scikit_learns():
    datasets = pytest.importorskip("sklearn.datasets")
    from skipdit_kernels.training.data import load_digits_tensors

    x, y = load_digits_tensors(size=8)
    digits = datasets.load_digits()
    assert torch.equal(y, torch.from_numpy(digits.target).long())
    assert torch.equal(x, torch.from_numpy(digits.images / 16.0).float().unsqueeze(1) * 2 - 1)


def test_train_defaults_give_the_bundled_size_on_the_bundled_digits(tmp_path, capsys):
    """`skipdit train` with its defaults (digits data, no sizes) needs no extra package and a small model."""
    assert cli.main(["train", "--steps", "1", "--batch-size", "8", "--threads", "1", "--no-progress",
                     "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    model = sk.load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert type(model) is sk.SkipDiT
    assert {k: model.config[k] for k in ("input_size", "patch_size", "hidden_size", "depth", "num_heads")} == dict(
        input_size=16, patch_size=4, hidden_size=96, depth=8, num_heads=4
    )
    assert "1797 training images" in capsys.readouterr().out


# -- every output path checked before the work, the option named; one line for every refusal -------


def _blocked(tmp_path, name="sub"):
    """A path no one can create: its parent is a regular file (holds for root too)."""
    (tmp_path / "afile").write_text("")
    return str(tmp_path / "afile" / name)


@pytest.mark.parametrize("argv", [["demo"], ["demo", "--video"]])
def test_demo_out_dir_is_checked_before_work(capsys, tmp_path, no_sampling, argv):
    err = refused(capsys, [*argv, "--out-dir", _blocked(tmp_path)])
    assert "--out-dir" in err and "cannot write there" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_dir_names_the_option(capsys, tmp_path, no_sampling):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        err = refused(capsys, ["demo", "--out-dir", str(tmp_path / "ro")])
        assert "--out-dir" in err and "Permission denied" in err
        err = refused(capsys, ["sample", "--bundled", "skipdit", "--out", str(tmp_path / "ro" / "x.npz")])
        assert "--out" in err and "Permission denied" in err
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_sample_out_is_checked_before_the_model_and_sampling(capsys, tmp_path, no_sampling, monkeypatch):
    monkeypatch.setattr(
        "skipdit_kernels.evaluation.bundled.load_bundled", lambda *a, **k: pytest.fail("model loaded first")
    )
    err = refused(capsys, ["sample", "--bundled", "skipdit", "--out", str(tmp_path / "folder.png" / "x.png")])
    assert "--out" in err and "does not exist" in err
    (tmp_path / "folder.png").mkdir()
    err = refused(capsys, ["sample", "--bundled", "skipdit", "--out", str(tmp_path / "folder.png")])
    assert "--out" in err and "is a folder" in err


@pytest.mark.parametrize("option", ["--out", "--export"])
def test_train_paths_are_checked_before_data_and_model(capsys, tmp_path, no_sampling, option):
    argv = ["train", "--steps", "1", "--out", str(tmp_path / "run")]
    if option == "--out":
        argv[-1] = _blocked(tmp_path)
    else:
        argv += ["--export", _blocked(tmp_path, "w.safetensors")]
    err = refused(capsys, argv)
    assert f"{option} " in err


def test_train_data_refusals_are_one_line(capsys, tmp_path, no_sampling):
    run = str(tmp_path / "run")
    err = refused(capsys, ["train", "--data", str(tmp_path / "missing.pt"), "--out", run])
    assert "--data" in err and "no such file or folder" in err
    (tmp_path / "corrupt.pt").write_bytes(b"not a pickle at all" * 10)
    err = refused(capsys, ["train", "--data", str(tmp_path / "corrupt.pt"), "--out", run])
    assert "--data" in err and "not a readable .pt file" in err
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    err = refused(capsys, ["train", "--data", str(tmp_path / "corrupt.safetensors"), "--out", run])
    assert "--data" in err and "not a readable .safetensors file" in err
    torch.save({"x": torch.zeros(1)}, tmp_path / "keys.pt")
    err = refused(capsys, ["train", "--data", str(tmp_path / "keys.pt"), "--out", run])
    assert "--data" in err and "expected the tensors 'images'" in err and "['x']" in err


def test_ckpt_folder_is_not_a_checkpoint(capsys, tmp_path, no_sampling):
    err = refused(capsys, ["sample", "--ckpt", str(tmp_path), "--out", str(tmp_path / "x.npz")])
    assert "--ckpt" in err and "is a folder, not a checkpoint file" in err


def test_a_checkpoint_that_does_not_fit_the_preset_is_one_line_verbose_gives_all(capsys, tmp_path, no_sampling):
    argv = ["sample", "--ckpt", BUNDLED, "--preset", "DiT-S/2", "--out", str(tmp_path / "x.npz")]
    err = refused(capsys, argv)
    assert "does not fit" in err and "more lines with --verbose" in err
    assert cli.main([*argv, "--verbose"]) == 2
    full = capsys.readouterr().err
    assert full.count("\n") > 5 and "does not fit" in full.splitlines()[0]


def test_one_source_of_weights(capsys, tmp_path, no_sampling):
    err = refused(capsys, ["sample", "--bundled", "dit", "--ckpt", BUNDLED, "--out", str(tmp_path / "x.npz")])
    assert "give one of --bundled, --ckpt, --random-init" in err
    assert "--bundled" in refused(capsys, ["sample", "--out", str(tmp_path / "x.npz")])


@pytest.mark.parametrize(
    "name,suffix,shape", [("skipdit", "png", None), ("dit", "npz", (2, 1, 16, 16)), ("video", "gif", None)]
)
def test_sample_bundled(tmp_path, capsys, name, suffix, shape):
    out = tmp_path / f"s.{suffix}"
    argv = [
        "sample",
        "--bundled",
        name,
        "--labels",
        "3",
        "7",
        "--steps",
        "2",
        "--method",
        "ddim",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "1 thread (--threads)" in printed and out.exists()
    if shape:
        assert np.load(out)["latents"].shape == shape


def test_sample_bundled_video_defaults_to_a_gif(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        cli.main(
            ["sample", "--bundled", "video", "--steps", "2", "--method", "ddim", "--threads", "1", "--no-progress"]
        )
        == 0
    )
    assert (tmp_path / "samples.gif").exists()


def test_threads_default_is_chosen_and_printed(tmp_path, capsys):
    from skipdit_kernels.commands import _timing

    threads, why = _timing.default_threads()
    assert 1 <= threads <= _timing.usable_cores() and "usable cores" in why
    assert _timing.default_threads(processes=64)[0] == 1
    assert (
        cli.main(
            [
                "sample",
                "--bundled",
                "skipdit",
                "--labels",
                "1",
                "--steps",
                "2",
                "--method",
                "ddim",
                "--no-progress",
                "--out",
                str(tmp_path / "x.npz"),
            ]
        )
        == 0
    )
    assert f"{threads} thread" in capsys.readouterr().out and torch.get_num_threads() == threads


def test_every_skipdit_environment_variable_is_registered_and_printed(capsys):
    from skipdit_kernels.io import environment

    names = set(
        subprocess.run(
            ["git", "grep", "-ohE", "SKIPDIT_[A-Z0-9_]+", "--", ".", ":!*.md"], cwd=ROOT, capture_output=True, text=True
        ).stdout.split()
    )
    if not names:
        pytest.skip("not a git checkout")
    registered = {v.name for v in environment.VARIABLES}
    assert names - registered - set(environment.NOT_VARIABLES) == set()
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in registered:
        assert name in out


# -- supported versions ---------------------------------------------------------------------------


def test_a_torch_without_triton_op_reports_triton_unavailable_with_the_reason(monkeypatch):
    from skipdit_kernels.ops import triton as triton_backend

    monkeypatch.delattr(torch.library, "triton_op", raising=False)
    ok, why = triton_backend.probe()
    assert not ok and "torch.library.triton_op" in why


def test_the_declared_torch_floor_is_the_one_the_readme_states_and_ci_tests():
    import re

    setup = open(os.path.join(ROOT, "setup.py")).read()
    floor = re.search(r'"torch>=([0-9.]+)"', setup).group(1)
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert f"torch >= {floor}" in readme
    assert "floor.sh" in open(os.path.join(ROOT, ".ci", "run")).read()
    major, minor = (int(x) for x in floor.split(".")[:2])
    assert tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (major, minor)


def test_sample_ddp_out_dir_is_checked_before_the_process_group(capsys, tmp_path, no_sampling, monkeypatch):
    monkeypatch.setattr(
        "skipdit_kernels.integrations.distributed.init_distributed",
        lambda *a, **k: pytest.fail("process group started before the --out-dir check"),
    )
    err = refused(capsys, ["sample-ddp", "--bundled", "skipdit", "--num-samples", "2", "--out-dir", _blocked(tmp_path)])
    assert "--out-dir" in err and "cannot write there" in err
