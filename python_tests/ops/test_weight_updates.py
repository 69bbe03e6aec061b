"""Weights updated in place are seen by the next call, on every backend, with no call to make.

Derived weights (the folded skip projections, the native backend's fp32 weight copies) are
recomputed on every call; a model whose weights were changed (through ``.data``, load_state_dict,
an optimiser step, or by swapping the Parameter objects) gives what a fresh model holding the new
weights gives.
"""

import pytest
import torch

import skipdit_kernels as sk
from skipdit_kernels import ops
from skipdit_kernels.ops import native

CONFIG = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=4, num_classes=10)
BACKENDS = ["auto", "torch", "native", "triton"]


def _random_model(seed: int, dtype: torch.dtype) -> sk.SkipDiT:
    model = sk.SkipDiT(**CONFIG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":  # the official init zeroes adaLN and the output: make all count
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.to(dtype).eval()


def _inputs(dtype):
    g = torch.Generator().manual_seed(7)
    return torch.randn(2, 4, 8, 8, generator=g).to(dtype), torch.tensor([3.0, 700.0]), torch.tensor([1, 9])


def _update_data_copy(model, new):
    with torch.no_grad():
        for p, q in zip(model.parameters(), new.parameters()):
            p.data.copy_(q.data)  # bypasses the version counter


def _update_load_state_dict(model, new):
    model.load_state_dict(new.state_dict())


def _update_parameter_swap(model, new):
    for (name, _), q in zip(list(model.named_parameters()), new.parameters()):
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        setattr(module, attr, torch.nn.Parameter(q.detach().clone(), requires_grad=False))


def _update_optimizer_step(model, new):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1.0)
    for p in trainable:
        p.grad = torch.randn_like(p) * 0.05
    optimizer.step()


UPDATES = {
    "data_copy": _update_data_copy,
    "load_state_dict": _update_load_state_dict,
    "parameter_swap": _update_parameter_swap,
    "optimizer_step": _update_optimizer_step,
}


def _backend_or_skip(backend):
    if backend != "auto":
        ok, why = ops.backend_status()[backend]
        if not ok:
            pytest.skip(f"backend {backend} unavailable: {why}")


@pytest.mark.parametrize("update", sorted(UPDATES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_updated_model_equals_fresh_model(update, backend):
    _backend_or_skip(backend)
    dtype = torch.float32
    model, new = _random_model(0, dtype), _random_model(1, dtype)
    x, t, y = _inputs(dtype)
    with torch.no_grad(), ops.use_backend(backend):
        before = model(x, t, y)  # warms anything that could be remembered
        UPDATES[update](model, new)
        fresh = _random_model(2, dtype)
        fresh.load_state_dict(model.state_dict())
        got, want = model(x, t, y), fresh(x, t, y)
    assert (got - before).abs().max() > 1e-3  # the update changed the output
    assert (got - want).abs().max().item() <= 1e-6


@pytest.mark.parametrize("fp32_gemm", [False, True], ids=["bf16-gemm", "fp32-gemm"])
def test_native_bf16_follows_data_writes(fp32_gemm, monkeypatch):
    """bf16 on the native backend, both with bf16 GEMMs and with the fp32 GEMMs (and fp32 weight
    copies) used on CPUs without bf16 units."""
    _backend_or_skip("native")
    monkeypatch.setattr(native, "cpu_has_bf16_units", lambda: not fp32_gemm)
    model, new = _random_model(0, torch.bfloat16), _random_model(1, torch.bfloat16)
    x, t, y = _inputs(torch.bfloat16)
    with torch.no_grad(), ops.use_backend("native"):
        model(x, t, y)
        _update_data_copy(model, new)
        assert torch.equal(model(x, t, y), new(x, t, y))
