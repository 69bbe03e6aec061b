"""The fast path for diffusers' DiT blocks (``fast_blocks``): diffusers' ``BasicTransformerBlock``
through skipdit_kernels' fused ops, reading the block's own parameters, equals the block within
rounding (fp32, bf16), falls back to diffusers' forward for whatever it does not cover."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.integrations import diffusers as sd  # noqa: E402
from skipdit_kernels.integrations.diffusers.families import dit as dit_family  # noqa: E402

from .test_diffusers import STEPS, _cache_for, _randomize, dit_call, dit_pipeline  # noqa: E402


def _dit_transformer(dtype=torch.float32, norm_eps=1e-5):
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2, sample_size=10,
        patch_size=2, num_embeds_ada_norm=1000, norm_eps=norm_eps,
    )  # fmt: skip
    return _randomize(model, 11).to(dtype)


def _inputs(batch, dtype, contiguous=True):
    gen = torch.Generator().manual_seed(batch)
    h = torch.randn(batch, 32, 25, generator=gen).transpose(1, 2)  # 25 tokens (odd), hidden 32
    h = (h.contiguous() if contiguous else h).to(dtype)
    t = torch.tensor([999, 500, 1][:batch])
    y = torch.tensor([3, 1000, 7][:batch])  # 1000: the null class
    return h, t, y


def _counting_fast(monkeypatch) -> list[int]:
    calls, fast = [0], dit_family._dit_block_fast

    def counted(*args):
        calls[0] += 1
        return fast(*args)

    monkeypatch.setattr(dit_family, "_dit_block_fast", counted)
    return calls


@pytest.mark.parametrize("batch, contiguous", [(1, True), (3, False)])
@pytest.mark.parametrize("norm_eps", [1e-5, 1e-6])
def test_fast_block_equals_the_block_fp32(batch, contiguous, norm_eps):
    block = _dit_transformer(norm_eps=norm_eps).transformer_blocks[0]
    assert dit_family._dit_block_is_plain(block)
    h, t, y = _inputs(batch, torch.float32, contiguous)
    with torch.no_grad():
        expected = block(h, timestep=t, class_labels=y)
        got = dit_family._dit_block_fast(block, h, t, y)
    _assert_fp32_close(got, expected)


def _assert_fp32_close(got, expected):
    """Equal within fp32 rounding of the block's intermediates (the residual stream's scale)."""
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def _assert_bf16_within_twice_eager(fast, eager, reference):
    """flash-attn's rule (at most twice the eager error against an fp32 reference) with an atol of 1%
    of the output's scale (2.5 bf16 units in the last place there); the typical (RMS) error no worse
    than 1.5x."""
    assert fast.dtype == torch.bfloat16
    eager_err, fast_err = eager.float() - reference, fast.float() - reference
    atol = 1e-2 * reference.abs().max()
    assert fast_err.abs().max() <= 2 * eager_err.abs().max() + atol, (fast_err.abs().max(), eager_err.abs().max())
    assert fast_err.pow(2).mean().sqrt() <= 1.5 * eager_err.pow(2).mean().sqrt()


def test_fast_block_bf16_error_is_within_twice_the_blocks_own():
    block = _dit_transformer(torch.bfloat16).transformer_blocks[0]
    ref_block = copy.deepcopy(block).float()  # the same (bf16-rounded) weights in fp32
    h, t, y = _inputs(3, torch.bfloat16)
    with torch.no_grad():
        reference = ref_block(h.float(), timestep=t, class_labels=y)
        eager = block(h, timestep=t, class_labels=y)
        fast = dit_family._dit_block_fast(block, h, t, y)
    _assert_bf16_within_twice_eager(fast, eager, reference)


def test_fast_block_reads_the_live_parameters():
    block = _dit_transformer().transformer_blocks[0]
    h, t, y = _inputs(3, torch.float32)
    with torch.no_grad():
        before = dit_family._dit_block_fast(block, h, t, y)
        block.attn1.to_k.weight.data.mul_(1.5)  # through .data: no version counter sees it
        block.ff.net[2].weight.data.mul_(0.5)
        expected = block(h, timestep=t, class_labels=y)
        got = dit_family._dit_block_fast(block, h, t, y)
    assert not torch.allclose(got, before)
    _assert_fp32_close(got, expected)


def test_blocks_the_fast_path_does_not_cover_run_diffusers_forward():
    def fresh():
        return _dit_transformer().transformer_blocks[0]

    block = fresh()
    block.attn1.set_processor(AttnProcessor())
    assert not dit_family._dit_block_is_plain(block)
    block = fresh()
    block.register_forward_pre_hook(lambda *a: None)
    assert not dit_family._dit_block_is_plain(block)
    block = fresh()
    block.ff.net[2].register_forward_hook(lambda *a: None)
    assert not dit_family._dit_block_is_plain(block)
    block = fresh()
    block.train()
    assert not dit_family._dit_block_is_plain(block)
    block = fresh()
    block.attn1.to_q.forward = block.attn1.to_q.forward  # an instance forward (a wrapper, a patch)
    assert not dit_family._dit_block_is_plain(block)
    block = fresh()
    block.set_chunk_feed_forward(8)
    assert not dit_family._dit_block_is_plain(block)
    block = fresh()
    block.attn1.norm_q = torch.nn.LayerNorm(16)  # q/k norm
    assert not dit_family._dit_block_is_plain(block)
    gelu = diffusers.models.attention.BasicTransformerBlock(
        32, 2, 16, norm_type="ada_norm_zero", num_embeds_ada_norm=1000, activation_fn="gelu",
        attention_bias=True, norm_elementwise_affine=False,
    )  # fmt: skip
    assert not dit_family._dit_block_is_plain(gelu.eval())  # exact GELU, not tanh
    assert dit_family._dit_block_is_plain(fresh())


def test_pipeline_with_fast_blocks(monkeypatch):
    pipe = dit_pipeline()
    original = dit_call(pipe)
    cache = _cache_for("dit", start_t=1000)
    sd.apply_skip_cache(pipe, cache, fast_blocks=False)
    exact = dit_call(pipe)
    calls = _counting_fast(monkeypatch)
    # every step full: the original within rounding, and every block through the fast path
    sd.apply_skip_cache(pipe, sk.SkipCache(interval=1, shallow_blocks=1))
    torch.testing.assert_close(dit_call(pipe), original, rtol=1e-5, atol=1e-5)
    assert calls[0] == STEPS * 6
    # cached: the exact path's output within rounding
    sd.apply_skip_cache(pipe, cache)
    torch.testing.assert_close(dit_call(pipe), exact, rtol=1e-5, atol=1e-5)
    # another attention processor: every block runs diffusers' forward, bit-identical to fast_blocks=False
    for block in pipe.transformer.transformer_blocks:
        block.attn1.set_processor(AttnProcessor())
    calls[0] = 0
    sd.apply_skip_cache(pipe, cache, fast_blocks=False)
    exact = dit_call(pipe)
    sd.apply_skip_cache(pipe, cache)
    assert torch.equal(dit_call(pipe), exact) and calls[0] == 0
    # outside a request the transformer is diffusers' own
    sd.remove_skip_cache(pipe)
    for block in pipe.transformer.transformer_blocks:
        block.attn1.set_processor(diffusers.models.attention_processor.AttnProcessor2_0())
    assert torch.equal(dit_call(pipe), original) and calls[0] == 0
