"""forecast_blend: reference vs the torch path and the Triton kernel (interpreter on CPU)."""

import importlib.util

import pytest
import torch

from skipdit_kernels import ops
from skipdit_kernels.cache.forecast import lagrange_weights
from skipdit_kernels.ops.forecast_blend import forecast_blend_reference

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or not ops.backend_status()["triton"][0],
    reason="triton backend unavailable",
)


def _history(k, shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for _ in range(k)]


def _weights(k):
    return lagrange_weights([0, 3, 6, 9][:k], 3 * k + 1)


def _exact(history, weights):
    return sum(h.double() * w for h, w in zip(history, weights))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(4, 256, 64), (3, 17, 1152), (5,)])
def test_torch_path_matches_reference(k, shape):
    history, weights = _history(k, shape), _weights(k)
    ref = forecast_blend_reference(history, weights)
    torch.testing.assert_close(ref.double(), _exact(history, weights), rtol=1e-5, atol=1e-5)
    with ops.use_backend("torch"):
        torch.testing.assert_close(ops.forecast_blend(history, weights), ref, rtol=1e-6, atol=1e-5)
        wt = torch.tensor(weights, dtype=torch.float32)
        torch.testing.assert_close(ops.forecast_blend(history, wt), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_error_within_twice_the_eager_error(dtype):
    history32, weights = _history(3, (2, 33, 96)), _weights(3)
    history = [h.to(dtype) for h in history32]
    exact = _exact(history, weights)
    eager = sum(h * w for h, w in zip(history, weights))  # naive eager arithmetic in the dtype
    out = ops.forecast_blend(history, weights)
    assert out.dtype == dtype
    assert (out.double() - exact).abs().max() <= 2 * (eager.double() - exact).abs().max() + 1e-3


def test_single_history_with_unit_weight_is_the_tensor_itself():
    (h,) = _history(1, (2, 3))
    assert ops.forecast_blend([h], [1.0]) is h


@needs_triton
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(2, 17, 96), (1, 1500)])
def test_triton_matches_reference(k, shape):
    history, weights = _history(k, shape), _weights(k)
    ref = forecast_blend_reference(history, weights)
    with ops.use_backend("triton"):
        torch.testing.assert_close(ops.forecast_blend(history, weights), ref, rtol=1e-6, atol=1e-5)
    from skipdit_kernels.ops.forecast_blend import forecast_blend_triton

    out = torch.empty_like(history[0])
    wt = torch.tensor(weights, dtype=torch.float32)
    assert forecast_blend_triton(history, wt, out=out) is out  # persistent output, device weights
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    wt.copy_(torch.tensor(_weights(k)[::-1]))  # refilled weights, same buffers (the graph path)
    forecast_blend_triton(history, wt, out=out)
    torch.testing.assert_close(out, forecast_blend_reference(history, _weights(k)[::-1]), rtol=1e-6, atol=1e-5)


def test_bad_arguments():
    h = _history(2, (2, 3))
    with pytest.raises(ValueError, match="1..4"):
        ops.forecast_blend([], [])
    with pytest.raises(ValueError, match="1..4"):
        ops.forecast_blend(_history(5, (2,)), [0.2] * 5)
    with pytest.raises(ValueError, match="2 history tensors but 3 weights"):
        ops.forecast_blend(h, [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"history\[1\]"):
        ops.forecast_blend([h[0], h[1].double()], [0.5, 0.5])
    with pytest.raises(ValueError, match="list or tuple"):
        ops.forecast_blend(torch.stack(h), [0.5, 0.5])
    with pytest.raises(ValueError, match="1-D tensor of 2"):
        ops.forecast_blend(h, torch.ones(3))
