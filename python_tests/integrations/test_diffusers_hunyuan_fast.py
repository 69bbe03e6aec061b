"""The fast path for diffusers' HunyuanDiT blocks (``fast_blocks``): ``HunyuanDiTBlock`` through
skipdit_kernels' ops on its own parameters equals the block within rounding (fp32, bf16, with and
without the long skip), and falls back to diffusers' forward for whatever it does not cover."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402
from diffusers.models.embeddings import get_2d_rotary_pos_embed  # noqa: E402
from diffusers.models.transformers.hunyuan_transformer_2d import HunyuanDiTBlock  # noqa: E402

import skipdit_kernels as sk  # noqa: E402
from skipdit_kernels.integrations import diffusers as sd  # noqa: E402
from skipdit_kernels.integrations.diffusers.families import hunyuan_dit as hunyuan_family  # noqa: E402

from .test_diffusers import (  # noqa: E402
    STEPS,
    ReferenceSkipCache,
    _cache_for,
    _randomize,
    hunyuan_call,
    hunyuan_pipeline,
)
from .test_diffusers_fast import _assert_bf16_within_twice_eager, _assert_fp32_close  # noqa: E402

HIDDEN, HEAD_DIM, CROSS = 40, 20, 12  # 2 heads; the rotary tables need head_dim % 4 == 0


def _block(skip: bool, dtype=torch.float32, qk_norm=True, seed=3) -> HunyuanDiTBlock:
    block = HunyuanDiTBlock(
        HIDDEN, HIDDEN // HEAD_DIM, cross_attention_dim=CROSS, activation_fn="gelu-approximate", ff_inner_dim=4 * HIDDEN,
        skip=skip, qk_norm=qk_norm,
    )  # fmt: skip
    return _randomize(block, seed).to(dtype)


def _inputs(batch, dtype=torch.float32, skip=True, rotary=True, contiguous=True):
    """25 tokens (a 5x5 grid, odd), 17 text tokens (odd)."""
    gen = torch.Generator().manual_seed(batch)
    h = torch.randn(batch, HIDDEN, 25, generator=gen).transpose(1, 2)
    h = (h.contiguous() if contiguous else h).to(dtype)
    temb = torch.randn(batch, HIDDEN, generator=gen).to(dtype)
    text = torch.randn(batch, 17, CROSS, generator=gen).to(dtype)
    long_skip = torch.randn(batch, 25, HIDDEN, generator=gen).to(dtype) if skip else None
    tables = get_2d_rotary_pos_embed(HEAD_DIM, ((0, 0), (5, 5)), (5, 5), use_real=True) if rotary else None  # fp32
    return h, temb, text, tables, long_skip


def _both(block, h, temb, text, rotary, skip):
    with torch.no_grad():
        expected = block(h, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary, skip=skip)
        got = hunyuan_family._hunyuan_block_fast(block, h, temb, text, rotary, skip)
    return got, expected


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("batch, contiguous, rotary", [(1, True, True), (3, False, True), (2, True, False)])
def test_fast_block_equals_the_block_fp32(skip, batch, contiguous, rotary):
    block = _block(skip)
    assert hunyuan_family._hunyuan_block_is_plain(block)
    got, expected = _both(block, *_inputs(batch, skip=skip, rotary=rotary, contiguous=contiguous))
    _assert_fp32_close(got, expected)


def test_fast_block_without_qk_norm_equals_the_block():
    block = _block(True, qk_norm=False)
    assert hunyuan_family._hunyuan_block_is_plain(block)
    _assert_fp32_close(*_both(block, *_inputs(2)))


@pytest.mark.parametrize("skip", [False, True])
def test_fast_block_bf16_error_is_within_twice_the_blocks_own(skip):
    block = _block(skip, torch.bfloat16)
    ref_block = copy.deepcopy(block).float()  # the same (bf16-rounded) weights in fp32
    h, temb, text, rotary, long_skip = _inputs(3, torch.bfloat16, skip=skip)
    with torch.no_grad():
        reference = ref_block(h.float(), encoder_hidden_states=text.float(), temb=temb.float(), image_rotary_emb=rotary,
                              skip=None if long_skip is None else long_skip.float())  # fmt: skip
    fast, eager = _both(block, h, temb, text, rotary, long_skip)
    _assert_bf16_within_twice_eager(fast, eager, reference)


def test_fast_block_reads_the_live_parameters():
    block = _block(True)
    inputs = _inputs(3)
    before, _ = _both(block, *inputs)
    with torch.no_grad():  # through .data: no version counter sees it
        for p in (block.skip_linear.weight, block.skip_norm.weight, block.norm1.linear.bias, block.attn1.to_k.weight,
                  block.attn1.norm_q.weight, block.attn2.to_v.weight, block.norm3.bias, block.ff.net[2].weight):  # fmt: skip
            p.data.mul_(1.5)
    got, expected = _both(block, *inputs)
    assert not torch.allclose(got, before)
    _assert_fp32_close(got, expected)


def _fallbacks():
    """Each: a change to a fresh plain block after which diffusers' forward must run."""

    def processor(b):
        b.attn2.set_processor(AttnProcessor2_0())

    def rms_q_norm(b):
        b.attn1.norm_q = diffusers.models.normalization.RMSNorm(HEAD_DIM, eps=1e-6)

    def exact_gelu(b):
        b.ff.net[0].approximate = "none"

    def skip_norm_type(b):
        b.skip_norm = torch.nn.LayerNorm(2 * HIDDEN)  # not FP32LayerNorm: no fp32 upcast

    def plain_norm2(b):
        b.norm2 = torch.nn.LayerNorm(HIDDEN)

    def lora_like(b):
        b.attn1.to_q = torch.nn.Sequential(b.attn1.to_q)

    def residual(b):
        b.attn1.residual_connection = True

    def rescale(b):
        b.attn2.rescale_output_factor = 2.0

    return {
        "processor": processor, "rms q norm": rms_q_norm, "exact gelu": exact_gelu, "skip norm type": skip_norm_type,
        "norm2 type": plain_norm2, "replaced linear": lora_like, "residual connection": residual, "rescale": rescale,
        "train": lambda b: b.train(),
        "block pre-hook": lambda b: b.register_forward_pre_hook(lambda *a: None),
        "submodule hook": lambda b: b.attn2.to_k.register_forward_hook(lambda *a: None),
        "skip_norm hook": lambda b: b.skip_norm.register_forward_hook(lambda *a: None),
        "instance forward": lambda b: setattr(b.norm1, "forward", b.norm1.forward),
    }  # fmt: skip


@pytest.mark.parametrize("change", sorted(_fallbacks()))
def test_blocks_the_fast_path_does_not_cover_run_diffusers_forward(change):
    block = _block(True)
    assert hunyuan_family._hunyuan_block_is_plain(block)
    _fallbacks()[change](block)
    assert not hunyuan_family._hunyuan_block_is_plain(block)


def test_a_global_hook_falls_back():
    block = _block(True)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert not hunyuan_family._hunyuan_block_is_plain(block)
    finally:
        handle.remove()
    assert hunyuan_family._hunyuan_block_is_plain(block)


def test_inputs_of_another_dtype_fall_back():
    block = _block(True)
    h, temb, text, rotary, skip = _inputs(2)
    ctx = dict(temb=temb, text=text, rotary=rotary)
    assert hunyuan_family._hunyuan_inputs_fit(block, h, ctx, skip)
    assert hunyuan_family._hunyuan_inputs_fit(block, h, {**ctx, "rotary": None}, skip)
    assert hunyuan_family._hunyuan_inputs_fit(
        block, h, {**ctx, "rotary": tuple(r.double() for r in rotary)}, skip
    )  # applied in fp32
    assert not hunyuan_family._hunyuan_inputs_fit(block, h.double(), ctx, skip)
    assert not hunyuan_family._hunyuan_inputs_fit(block, h, {**ctx, "temb": temb.bfloat16()}, skip)
    assert not hunyuan_family._hunyuan_inputs_fit(block, h, {**ctx, "text": text.bfloat16()}, skip)
    assert not hunyuan_family._hunyuan_inputs_fit(block, h, ctx, skip.bfloat16())


def _counting_fast(monkeypatch) -> list[int]:
    calls, fast = [0], hunyuan_family._hunyuan_block_fast

    def counted(*args):
        calls[0] += 1
        return fast(*args)

    monkeypatch.setattr(hunyuan_family, "_hunyuan_block_fast", counted)
    return calls


def _assert_pipeline_close(got, expected):
    # rounding differences through STEPS sampler steps of a random model: relative to the latents' scale
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_pipeline_with_fast_blocks(monkeypatch):
    pipe = hunyuan_pipeline()
    original = hunyuan_call(pipe)
    cache = _cache_for("hunyuan")
    sd.apply_skip_cache(pipe, cache, fast_blocks=False)
    exact = hunyuan_call(pipe)
    calls = _counting_fast(monkeypatch)
    layers = pipe.transformer.config.num_layers
    # every step full: the original within rounding, every block through the fast path
    sd.apply_skip_cache(pipe, sk.SkipCache(interval=1, shallow_blocks=1))
    _assert_pipeline_close(hunyuan_call(pipe), original)
    assert calls[0] == STEPS * layers
    # cached: the exact path's output within rounding
    sd.apply_skip_cache(pipe, cache)
    _assert_pipeline_close(hunyuan_call(pipe), exact)
    # another processor: every block runs diffusers' forward, bit-identical to fast_blocks=False
    for block in pipe.transformer.blocks:
        block.attn1.set_processor(AttnProcessor2_0())
    calls[0] = 0
    sd.apply_skip_cache(pipe, cache, fast_blocks=False)
    exact = hunyuan_call(pipe)
    sd.apply_skip_cache(pipe, cache)
    assert torch.equal(hunyuan_call(pipe), exact) and calls[0] == 0


def test_controlnet_pipeline_with_fast_blocks(monkeypatch):
    pipe = hunyuan_pipeline(controlnet=True)
    cache = _cache_for("hunyuan")
    ref = ReferenceSkipCache(pipe.transformer, cache)  # diffusers' own forward, every residual on its popped skip
    expected = hunyuan_call(pipe)
    ref.remove()
    calls = _counting_fast(monkeypatch)
    sd.apply_skip_cache(pipe, cache)
    got = hunyuan_call(pipe)
    assert calls[0] > 0
    _assert_pipeline_close(got, expected)
    assert not torch.allclose(hunyuan_call(pipe, controlnet_conditioning_scale=0.0), got, rtol=1e-3, atol=1e-3)
