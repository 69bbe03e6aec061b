"""Data-parallel and CFG-parallel sampling on torch.distributed: 2 CPU processes on gloo over
127.0.0.1, started by the tests (each with a deadline, so a hang fails instead of blocking CI)."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch

from python_tests.integrations.ranks import free_port, ok, run_ranks
from python_tests.models.conftest import TINY, randomize
from skipdit_kernels import SkipCache, SkipDiT, sample
from skipdit_kernels.integrations.distributed import (
    RankInfo,
    batch_seeds,
    sample_cfg_parallel,
    sample_ddp,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEADLINE_S = 50  # per spawned run; the collectives' own timeout is shorter
TIMEOUT_S = 15.0
COMMON = dict(steps=4, method="ddpm", cfg_scale=2.0, cache=SkipCache(interval=2, shallow_blocks=1))


def assert_equal_within_fp32_rounding(actual, expected):
    """The random tiny model drives DDPM latents to ~500, where one fp32 ulp is ~6e-5; the same
    ``sample()`` call on 1 and on 2 threads already differs by ~1e-4 there."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * scale)


def tiny_model(**overrides) -> SkipDiT:
    torch.manual_seed(0)
    return randomize(SkipDiT(**{**TINY, **overrides}), seed=1, std=0.05)


def _scenario(info, scenario: str, **kwargs):
    """One rank of a 2-rank run (``ranks.run_ranks``)."""
    model = tiny_model(**kwargs.pop("model", {}))
    if info.rank == 1 and scenario in ("raise", "crash"):
        real = model.run_block

        calls = [0]

        def failing(i, *args):
            calls[0] += 1
            if calls[0] > 3:  # mid-trajectory
                if scenario == "crash":
                    os._exit(3)
                raise RuntimeError("injected failure")
            return real(i, *args)

        model.run_block = failing
    if scenario == "mismatch" and info.rank == 1:
        kwargs["seed"] = kwargs.get("seed", 0) + 1
    if scenario == "cfg":
        return sample_cfg_parallel(model, info=info, progress=False, **kwargs)
    return sample_ddp(model, info=info, progress=False, **kwargs)


def run_two(tmp_path, scenario: str, **kwargs) -> tuple[list, float]:
    """``_scenario`` on 2 spawned processes; (each rank's payload or None if it left none, seconds)."""
    return run_ranks(tmp_path, 2, f"{__name__}:_scenario", deadline_s=DEADLINE_S, timeout_s=TIMEOUT_S,
                     scenario=scenario, **kwargs)  # fmt: skip


def single_process(tmp_path, name="single", **kwargs) -> str:
    info = RankInfo(0, 1, torch.device("cpu"), TIMEOUT_S)
    return sample_ddp(
        tiny_model(**kwargs.pop("model", {})), out_dir=str(tmp_path / name), info=info, progress=False, **kwargs
    )


def test_data_parallel_equals_single_process_sampling(tmp_path):
    kwargs = dict(num_samples=5, batch_size=2, seed=7, **COMMON)  # 3 batches, the last one short
    payloads, _ = run_two(tmp_path, "ddp", out_dir=str(tmp_path / "two"), **kwargs)
    path = ok(payloads[0])
    assert ok(payloads[1]) is None and path == str(tmp_path / "two" / "samples.npz")
    with np.load(path) as z:
        assert sorted(z.files) == ["arr_0", "labels"]
        latents, labels = z["arr_0"], z["labels"]
    assert latents.dtype == np.float32 and latents.shape == (5, 4, 8, 8)
    assert labels.dtype == np.int64 and labels.shape == (5,) and labels.min() >= 0 and labels.max() < 10

    model = tiny_model()
    for b, (start, stop) in enumerate([(0, 2), (2, 4), (4, 5)]):
        expected = sample(model, labels[start:stop], seed=batch_seeds(7, b)[0], progress=False, **COMMON)
        assert_equal_within_fp32_rounding(torch.from_numpy(latents[start:stop]), expected)

    with np.load(single_process(tmp_path, **kwargs)) as z:  # world size 1 gives the same file
        np.testing.assert_array_equal(z["labels"], labels)
        np.testing.assert_allclose(z["arr_0"], latents, rtol=1e-5, atol=1e-5)


def test_npz_layout_of_images(tmp_path):
    """A pixel model (1 channel) gives uint8 N x H x W x 3, as FID tools read; given labels are kept."""
    path = single_process(tmp_path, model=dict(in_channels=1), num_samples=3, batch_size=2, labels=[3, 1, 4],
                          steps=2, cfg_scale=1.0)  # fmt: skip
    with np.load(path) as z:
        images, labels = z["arr_0"], z["labels"]
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey
    np.testing.assert_array_equal(labels, [3, 1, 4])


def test_npz_layout_after_a_vae(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,),
        layers_per_block=1, latent_channels=4, norm_num_groups=4,
    )  # fmt: skip
    vae.save_pretrained(tmp_path / "vae")
    path = single_process(tmp_path, num_samples=2, batch_size=2, steps=2, cfg_scale=1.0, vae=str(tmp_path / "vae"))
    with np.load(path) as z:
        assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (2, 8, 8, 3)


def test_cfg_parallel_equals_single_process_sampling(tmp_path):
    kwargs = dict(class_labels=[1, 5, 9], seed=3, **COMMON)
    payloads, _ = run_two(tmp_path, "cfg", **kwargs)
    x0, x1 = ok(payloads[0]), ok(payloads[1])
    torch.testing.assert_close(x0, x1, rtol=0, atol=0)  # both ranks hold the same x
    expected = sample(tiny_model(), [1, 5, 9], seed=3, progress=False, **COMMON)
    assert x0.shape == expected.shape == (3, 4, 8, 8)
    assert_equal_within_fp32_rounding(x0, expected)


def test_cfg_parallel_needs_guidance_and_two_ranks():
    info = RankInfo(0, 1, torch.device("cpu"), TIMEOUT_S)
    with pytest.raises(ValueError, match="exactly 2 ranks"):
        sample_cfg_parallel(tiny_model(), [1], steps=2, info=info)


@pytest.mark.parametrize("scenario", ["raise", "crash"])
def test_a_failing_rank_fails_the_run_without_hanging(tmp_path, scenario):
    payloads, seconds = run_two(tmp_path, scenario, out_dir=str(tmp_path / "run"), num_samples=4, batch_size=2,
                                **COMMON)  # fmt: skip
    assert seconds < DEADLINE_S
    if scenario == "raise":  # both ranks learn what failed where
        for payload in payloads:
            assert payload[:2] == ("error", "DistributedSamplingError")
            assert "rank 1 failed on batch 1: RuntimeError: injected failure" in payload[2]
    else:  # rank 1 vanished: rank 0 fails within the collective timeout
        assert payloads[1] is None
        assert payloads[0][:2] == ("error", "DistributedSamplingError"), payloads[0]
        assert "rank 0: sample_ddp: sending a batch to rank 0 failed" in payloads[0][2]
    assert not (tmp_path / "run" / "samples.npz").exists()


def test_ranks_with_other_settings_are_refused(tmp_path):
    payloads, _ = run_two(tmp_path, "mismatch", out_dir=str(tmp_path / "run"), num_samples=2, batch_size=2, **COMMON)
    for payload in payloads:
        assert payload[:2] == ("error", "DistributedSamplingError")
        assert "rank 1 was started with other settings than rank 0: seed=1 (rank 0: 0)" in payload[2]


def test_resumption_skips_written_batches(tmp_path, monkeypatch):
    import skipdit_kernels.integrations.distributed as distributed

    kwargs = dict(num_samples=5, batch_size=2, seed=11, steps=2, cfg_scale=1.0)
    with np.load(single_process(tmp_path, "whole", **kwargs)) as z:
        whole = z["arr_0"]

    calls = []
    real_sample = distributed.sample

    def stopping(model, labels, **kw):  # the run stops in its third batch
        calls.append(kw["seed"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_sample(model, labels, **kw)

    monkeypatch.setattr(distributed, "sample", stopping)
    with pytest.raises(KeyboardInterrupt):
        single_process(tmp_path, "resumed", **kwargs)
    assert sorted(os.listdir(tmp_path / "resumed" / "batches")) == ["batch-000000.npz", "batch-000001.npz"]

    calls.clear()
    monkeypatch.setattr(distributed, "sample", lambda *a, **kw: (calls.append(kw["seed"]), real_sample(*a, **kw))[1])
    with np.load(single_process(tmp_path, "resumed", **kwargs)) as z:
        np.testing.assert_array_equal(z["arr_0"], whole)
    assert calls == [batch_seeds(11, 2)[0]]  # only the missing batch was sampled

    with pytest.raises(ValueError, match="holds a run with other settings .*seed: 11 then, 12 now"):
        single_process(tmp_path, "resumed", **{**kwargs, "seed": 12})


def torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "skipdit_kernels.cli", "sample-ddp", "--bundled", "skipdit",
               "--steps", "3", "--method", "ddim", "--cfg", "3", "--cache", "2", "--shallow", "1", "--timeout", str(TIMEOUT_S),
               "--no-progress", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ROOT})  # fmt: skip


def test_cli_data_parallel_under_torchrun(tmp_path):
    done = torchrun(tmp_path, "--num-samples", "3", "--batch-size", "2", "--seed", "5", "--out-dir", "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 samples, data parallel over 2 rank(s)" in done.stdout
    from skipdit_kernels.evaluation.bundled import load_bundled

    model = load_bundled("skipdit")
    with np.load(tmp_path / "run" / "samples.npz") as z:
        images, labels = z["arr_0"], z["labels"]
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    info = RankInfo(0, 1, torch.device("cpu"), TIMEOUT_S)
    path = sample_ddp(model, 3, tmp_path / "one", batch_size=2, seed=5, steps=3, method="ddim", cfg_scale=3.0,
                      cache=SkipCache(interval=2, shallow_blocks=1), info=info, progress=False)  # fmt: skip
    with np.load(path) as z:
        np.testing.assert_array_equal(z["labels"], labels)
        assert np.abs(z["arr_0"].astype(int) - images).max() <= 1  # uint8 rounding of fp32-close samples


def test_cli_refuses_to_mix_runs_without_a_traceback(tmp_path, capsys):
    from skipdit_kernels.cli import main

    common = ["sample-ddp", "--bundled", "skipdit", "--num-samples", "2", "--steps", "2", "--cfg", "1",
              "--no-progress", "--out-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(common + ["--seed", "5"]) == 0  # one plain process: world size 1
    assert main(common + ["--seed", "6"]) == 2
    err = capsys.readouterr().err
    assert (
        f"skipdit sample-ddp: error: '{tmp_path / 'run'}' holds a run with other settings (seed: 5 then, 6 now)" in err
    )


def test_cli_cfg_parallel_under_torchrun(tmp_path):
    done = torchrun(tmp_path, "--cfg-parallel", "--labels", "0", "7", "--seed", "2", "--out-dir", "one")
    assert done.returncode == 0, done.stderr[-3000:]
    from skipdit_kernels.evaluation.bundled import load_bundled
    from skipdit_kernels.io.images import to_uint8

    expected = sample(load_bundled("skipdit"), [0, 7], seed=2, steps=3, method="ddim", cfg_scale=3.0,
                      cache=SkipCache(interval=2, shallow_blocks=1), progress=False)  # fmt: skip
    with np.load(tmp_path / "one" / "samples.npz") as z:
        assert z["arr_0"].shape == (2, 16, 16, 3)
        assert np.abs(z["arr_0"][..., 0].astype(int) - to_uint8(expected)[..., 0]).max() <= 1
