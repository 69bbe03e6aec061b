"""Sequence parallelism (Ulysses) on 2 and 4 gloo processes: equal to single-process sampling within
fp32 rounding for SkipDiT, LatteSkip and LatteT2VSkip, with and without Skip-Cache and forecast,
alone and combined with CFG-parallel (2 x 2); the bytes each collective sends, counted, show that a
cached step moves no cached tensor between ranks."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from python_tests.integrations.ranks import ok, run_ranks
from python_tests.models.conftest import TINY, randomize
from skipdit_kernels import LatteSkip, SkipCache, SkipDiT, sample
from skipdit_kernels.integrations.distributed import RankInfo, sample_sequence_parallel

HERE = "python_tests.integrations.test_sequence_parallel"
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None  # LatteT2VSkip is a diffusers model
FORECAST = SkipCache(interval=2, shallow_blocks=1, forecast=1)
LATTE = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=8, num_heads=2, num_frames=3,
             num_classes=6, extras=2)  # fmt: skip

# name: (model, conditioning, sampler arguments); SkipDiT on a 10x10 latent: 25 tokens, 13 + 12 over 2 ranks
CASES = {
    "skipdit-forecast": ("skipdit25", [1, 5], dict(steps=5, method="ddim", cfg_scale=2.0, cache=FORECAST)),
    "skipdit-uncached": ("skipdit25", [3], dict(steps=3, method="ddpm", cfg_scale=1.0, cache=None)),
    "skipdit-reuse-ddpm": (
        "skipdit",
        [2, 7],
        dict(steps=4, method="ddpm", cfg_scale=2.0, cache=SkipCache(interval=2, shallow_blocks=1)),
    ),
    "latte-forecast": ("latte", [1, 4], dict(steps=5, method="ddim", cfg_scale=2.0, cache=FORECAST)),
    "latte-uncached": ("latte", [0], dict(steps=3, method="ddpm", cfg_scale=1.0, cache=None)),
    "t2v-forecast": ("t2v", None, dict(steps=5, method="ddim", cfg_scale=2.0, cache=FORECAST)),
    "t2v-uncached": ("t2v", None, dict(steps=2, method="ddpm", cfg_scale=2.0, cache=None)),
}


def build(name: str):
    torch.manual_seed(0)
    if name == "skipdit":
        return randomize(SkipDiT(**TINY), seed=1, std=0.05).eval()
    if name == "skipdit25":
        return randomize(SkipDiT(**{**TINY, "input_size": 10}), seed=1, std=0.05).eval()
    if name == "latte":
        return randomize(LatteSkip(**LATTE), seed=2, std=0.1).eval()
    from python_tests.integrations.test_latte_t2v import TINY as T2V
    from skipdit_kernels.integrations.latte_t2v import LatteT2VSkip

    return randomize(LatteT2VSkip(**T2V), seed=3, std=0.1).eval()


def conditioning(name: str, labels):
    if labels is not None:
        return labels
    model = build("t2v")
    g = torch.Generator().manual_seed(4)
    channels = model.config.caption_channels
    return {"encoder_hidden_states": torch.randn(2, 5, channels, generator=g),
            "negative_encoder_hidden_states": torch.randn(1, 5, channels, generator=g)}  # fmt: skip


def run_cases(info, names, cfg_parallel=False):
    """On every rank: each case's (latents, stats)."""
    results = {}
    for name in names:
        model_name, labels, kwargs = CASES[name]
        results[name] = sample_sequence_parallel(build(model_name), conditioning(model_name, labels), seed=11,
                                                 progress=False, cfg_parallel=cfg_parallel, info=info,
                                                 return_stats=True, **kwargs)  # fmt: skip
    return results


def run_two(info, names):
    """``run_cases``, then a model whose 3 heads 2 ranks cannot split (its error, on the same group)."""
    results = run_cases(info, names)
    try:
        sample_sequence_parallel(
            SkipDiT(**{**TINY, "hidden_size": 48, "num_heads": 3}), [1], steps=2, progress=False, info=info
        )
    except Exception as exc:  # noqa: BLE001 - checked by the test
        results["three heads"] = (type(exc).__name__, str(exc))
    return results


def single_process(name):
    model_name, labels, kwargs = CASES[name]
    return sample(build(model_name), conditioning(model_name, labels), seed=11, progress=False, **kwargs)


def assert_equal_within_fp32_rounding(actual, expected):
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=2e-6 * scale)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    names = [n for n in CASES if HAS_DIFFUSERS or not n.startswith("t2v")]
    payloads, _ = run_ranks(tmp_path_factory.mktemp("sp2"), 2, f"{HERE}:run_two", deadline_s=300, names=names)
    return [ok(p) for p in payloads]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_single_process_sampling(two_ranks, name):
    if name.startswith("t2v") and not HAS_DIFFUSERS:
        pytest.skip("LatteT2VSkip needs diffusers")
    (x0, stats0), (x1, stats1) = two_ranks[0][name], two_ranks[1][name]
    torch.testing.assert_close(x0, x1, rtol=0, atol=0)  # every rank holds the same x
    assert stats0.sequence_parallel == stats1.sequence_parallel == 2 and not stats0.cfg_parallel
    assert_equal_within_fp32_rounding(x0, single_process(name))


def ulysses_bytes(rows: int, tokens: list[int], rank: int, heads: int, head_dim: int, itemsize: int = 4) -> int:
    """Bytes one Ulysses attention sends from ``rank`` to the others, from the shapes alone: q, k, v
    of its tokens for the other ranks' heads, then the output of the other ranks' tokens for its heads."""
    world = len(tokens)
    group = heads // world
    qkv = 3 * rows * tokens[rank] * group * head_dim * (world - 1)
    out = rows * (sum(tokens) - tokens[rank]) * group * head_dim
    return (qkv + out) * itemsize


def test_a_cached_step_moves_no_cached_tensor(two_ranks):
    """Every byte a step sends is the attention of the units it runs plus the final gather of the
    hidden state: a cached step sends the 2 shallow units' attention, nothing of the deep state."""
    model = build("skipdit25")
    rows, hidden, heads, tokens = 2 * 2, TINY["hidden_size"], TINY["num_heads"], [13, 12]  # CFG doubles the batch
    for rank, results in enumerate(two_ranks):
        _, stats = results["skipdit-forecast"]
        attention = ulysses_bytes(rows, tokens, rank, heads, hidden // heads)
        gather = rows * max(tokens) * hidden * 4  # this rank's padded share, to the other rank
        assert stats.full_steps == [True, False, True, False, True]
        for full, sent in zip(stats.full_steps, stats.bytes_per_step):
            units = model.depth if full else 2  # 1 shallow unit on each side
            assert sent == units * attention + gather
        assert set(stats.bytes_by_collective) == {"attention all-to-all (q, k, v)", "attention all-to-all (output)",
                                                  "gathering the hidden state"}  # fmt: skip
        calls = stats.calls_by_collective
        assert (
            calls["attention all-to-all (q, k, v)"] == 3 * model.depth + 2 * 2
            and calls["gathering the hidden state"] == 5
        )
        # one status exchange before each collective (agreeing on the settings is one of them)
        assert stats.status_exchanges == sum(calls.values()) + 1


def test_latte_temporal_attention_stays_local(two_ranks):
    """LatteSkip shards the patches of every frame: only the spatial blocks exchange anything."""
    _, stats = two_ranks[0]["latte-uncached"]
    pairs = LATTE["depth"] // 2
    assert stats.calls_by_collective["attention all-to-all (q, k, v)"] == 3 * pairs  # one per spatial block
    rows = 1 * LATTE["num_frames"]  # 1 video of 3 frames, no CFG
    hidden, heads = LATTE["hidden_size"], LATTE["num_heads"]
    gather = rows * 8 * hidden * 4
    assert stats.bytes_per_step == [pairs * ulysses_bytes(rows, [8, 8], 0, heads, hidden // heads) + gather] * 3


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    """2 x 2 (CFG halves x token halves), then the 4-way token split, in the same 4 processes."""
    tmp = tmp_path_factory.mktemp("sp4")
    payloads, _ = run_ranks(tmp, 4, f"{HERE}:run_four", deadline_s=240)
    return [ok(p) for p in payloads]


def run_four(info):
    split = run_cases(info, ["skipdit-forecast", "latte-forecast"], cfg_parallel=True)
    return split, run_cases(info, ["skipdit-reuse-ddpm"])


@pytest.mark.parametrize("name", ["skipdit-forecast", "latte-forecast"])
def test_cfg_parallel_times_sequence_parallel_on_four_ranks(four_ranks, name):
    expected = single_process(name)
    for split, _ in four_ranks:
        x, stats = split[name]
        assert stats.sequence_parallel == 2 and stats.cfg_parallel
        assert "exchanging the CFG halves of the model output" in stats.bytes_by_collective
        torch.testing.assert_close(x, four_ranks[0][0][name][0], rtol=0, atol=0)
    assert_equal_within_fp32_rounding(four_ranks[0][0][name][0], expected)


def test_four_way_sequence_parallel(four_ranks):
    expected = single_process("skipdit-reuse-ddpm")
    for _, whole in four_ranks:
        x, stats = whole["skipdit-reuse-ddpm"]
        assert stats.sequence_parallel == 4
        assert_equal_within_fp32_rounding(x, expected)


def test_sequence_split_of_one_is_sample():
    info = RankInfo(0, 1, torch.device("cpu"), 10.0)
    model_name, labels, kwargs = CASES["skipdit-reuse-ddpm"]
    x = sample_sequence_parallel(build(model_name), labels, seed=11, progress=False, info=info, **kwargs)
    torch.testing.assert_close(x, single_process("skipdit-reuse-ddpm"), rtol=0, atol=0)


def test_heads_that_do_not_divide_are_refused(two_ranks):
    for results in two_ranks:
        error = results["three heads"]
        assert error[0] == "DistributedSamplingError", error
        assert "needs the attention heads divisible by 2; SkipDiT has 3 heads" in error[1]


def test_cli_sequence_parallel_under_torchrun(tmp_path):
    import numpy as np

    from python_tests.integrations.test_distributed import torchrun
    from skipdit_kernels.evaluation.bundled import load_bundled
    from skipdit_kernels.io.images import to_uint8

    done = torchrun(tmp_path, "--sequence-parallel", "2", "--labels", "0", "7", "--seed", "2", "--out-dir", "one")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 samples, sequence-parallel over 2" in done.stdout
    expected = sample(load_bundled("skipdit"), [0, 7], seed=2, steps=3, method="ddim", cfg_scale=3.0,
                      cache=SkipCache(interval=2, shallow_blocks=1), progress=False)  # fmt: skip
    with np.load(tmp_path / "one" / "samples.npz") as z:
        assert z["arr_0"].shape == (2, 16, 16, 3)
        assert np.abs(z["arr_0"][..., 0].astype(int) - to_uint8(expected)[..., 0]).max() <= 1
