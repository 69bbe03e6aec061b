"""torch.compile captures the op layer whole, in the default environment (no test-side patches):
optional imports (flash-attn) are resolved at import time, never inside traced code."""

import torch

import skipdit_kernels as sk
from skipdit_kernels.models.layers import DiTBlock

TINY_MODEL = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10)


def _model_inputs():
    return torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([1, 2])


def test_block_compiles_fullgraph_and_model_breaks_nowhere_in_ops():
    torch.manual_seed(0)
    block = DiTBlock(32, 4).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, c = torch.randn(2, 9, 32), torch.randn(2, 32)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")(x, c)
        assert torch.allclose(compiled, block(x, c), rtol=1e-5, atol=1e-6)

        model = sk.SkipDiT(**TINY_MODEL).eval()
        explained = torch._dynamo.explain(model)(*_model_inputs())
    from_ops = [r for r in explained.break_reasons if any("skipdit_kernels/ops" in f.filename for f in r.user_stack)]
    assert not from_ops, [r.reason.splitlines()[0] for r in from_ops]


def test_uncached_model_has_no_graph_breaks():
    model = sk.SkipDiT(**TINY_MODEL).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(*_model_inputs())
    assert explained.graph_break_count == 0, [r.reason.splitlines()[0] for r in explained.break_reasons]
