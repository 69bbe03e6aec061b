"""A request that raises midway (an error inside a block, out of memory, Ctrl-C) leaves nothing behind:
through ``sample()`` and its executor, a diffusers pipeline and distributed sampling, the next
request equals the same request on a fresh model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels.sampling import SkipStackExecutor, executor_for

from ..cache.test_request_faults import FAULTS, raising
from ..models.conftest import TINY, randomize

CACHES = [None, sk.SkipCache(interval=2, shallow_blocks=1), sk.SkipCache(interval=2, shallow_blocks=2, forecast=1)]
KW = dict(steps=6, method="ddim", cfg_scale=3.0, seed=4, progress=False)


@pytest.mark.parametrize("cache", CACHES, ids=["uncached", "reuse", "forecast"])
@pytest.mark.parametrize("exc", FAULTS, ids=type)
@pytest.mark.parametrize("fail_at", [0, 3, 5])  # the last block runs every step (after the boundary): steps 0, 3, 5
def test_a_sample_call_that_raises_leaves_nothing_for_the_next(cache, exc, fail_at):
    model = randomize(sk.SkipDiT(**TINY), std=0.05)
    fresh = copy.deepcopy(model)
    first = sk.sample(model, [1, 2], cache=cache, **KW)
    executor = executor_for(model)
    (signature,) = executor.signatures
    (used,) = executor.buffer_sets(signature)
    with raising(model.blocks[-1], exc, on_call=fail_at), pytest.raises(type(exc)):
        sk.sample(model, [1, 2], cache=cache, **KW)
    assert used not in executor.buffer_sets(signature)  # the interrupted run's buffers are never reused
    again = sk.sample(model, [1, 2], cache=cache, **KW)
    assert torch.equal(again, first) and torch.equal(again, sk.sample(fresh, [1, 2], cache=cache, **KW))


@pytest.mark.parametrize("exc", FAULTS, ids=type)
def test_an_executor_run_that_raises_keeps_no_buffers(exc):
    model = randomize(sk.SkipDiT(**TINY), std=0.05)
    executor = SkipStackExecutor(model)
    cache = sk.SkipCache(interval=2, shallow_blocks=1, forecast=1)
    with raising(model.blocks[-1], exc, on_call=4), pytest.raises(type(exc)):
        sk.sample(model, [3], cache=cache, executor=executor, **KW)
    assert not executor.signatures
    got = sk.sample(model, [3], cache=cache, executor=executor, **KW)
    assert torch.equal(got, sk.sample(model, [3], cache=cache, executor=SkipStackExecutor(model), **KW))
    assert len(executor.signatures) == 1


def test_a_pipeline_call_that_raises_inside_a_block_leaves_nothing_for_the_next():
    diffusers = pytest.importorskip("diffusers")
    from skipdit_kernels.integrations import diffusers as sd

    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=6, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_eps=1e-6,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    )  # fmt: skip
    with torch.no_grad():
        for p in [*transformer.parameters(), *vae.parameters()]:
            p.copy_(torch.randn(p.shape) * 0.1)
    pipe = diffusers.DiTPipeline(transformer.eval(), vae.eval(), diffusers.DDIMScheduler(clip_sample=False))
    sd.apply_skip_cache(pipe, sk.SkipCache(interval=2, shallow_blocks=1))

    def call():
        return pipe(class_labels=[3, 7], guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
                    num_inference_steps=6, output_type="pt").images  # fmt: skip

    want = call()
    for exc in FAULTS:
        with raising(transformer.transformer_blocks[3], exc, on_call=2), pytest.raises(type(exc)):
            call()
        assert "forward" not in transformer.__dict__  # the request closed with the exception
        assert torch.equal(call(), want)


def test_distributed_sampling_resumed_after_a_raise_inside_a_block_equals_an_uninterrupted_run(tmp_path):
    from skipdit_kernels.integrations.distributed import RankInfo, sample_ddp

    def run(model, name):
        info = RankInfo(0, 1, torch.device("cpu"), 60.0)
        return sample_ddp(
            model,
            5,
            str(tmp_path / name),
            batch_size=2,
            seed=11,
            steps=4,
            method="ddim",
            cfg_scale=3.0,
            cache=sk.SkipCache(interval=2, shallow_blocks=1),
            info=info,
            progress=False,
        )

    model = randomize(sk.SkipDiT(**TINY), std=0.05)
    with np.load(run(copy.deepcopy(model), "whole")) as z:
        whole = z["arr_0"]
    with raising(model.blocks[-1], RuntimeError("boom"), on_call=6), pytest.raises(RuntimeError):  # batch 2, step 2
        run(model, "resumed")
    with np.load(run(model, "resumed")) as z:
        np.testing.assert_array_equal(z["arr_0"], whole)
