"""skipdit_kernels.testing.gpu_check: what it says without a GPU, and that its checks catch wrong
kernels (run here on CPU backends); the whole check on a GPU is the ``gpu`` test at the end."""

import json
import os
import subprocess
import sys

import pytest
import torch

from skipdit_kernels import ops
from skipdit_kernels.ops import _backend, native, spec
from skipdit_kernels.testing import gpu_check as G

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = (2, 7, 40)


def _status(monkeypatch, triton=(False, "off"), native_status=(True, "patched")):
    """Pretend these backend statuses (ops re-exports _backend's function: patch both)."""
    status = lambda: {"torch": (True, ""), "triton": triton, "native": native_status}  # noqa: E731
    monkeypatch.setattr(_backend, "backend_status", status)
    monkeypatch.setattr(ops, "backend_status", status)
    monkeypatch.setattr(_backend, "ensure_loaded", lambda name: None)
    # kernel_for memoises resolutions: a fresh memo for the patched registry, the old one back after
    monkeypatch.setattr(_backend, "_resolved", {})


def _run_check(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "skipdit_kernels.testing.gpu_check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_says_no_cuda_device_and_exits_2():
    out = _run_check("--no-write")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no CUDA device" in out.stdout and "nothing checked" in out.stdout
    assert "Traceback" not in out.stderr + out.stdout


def test_hidden_devices_say_no_cuda_device_and_exit_2():
    out = _run_check("--no-write", env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 2 and "no CUDA device" in out.stdout, out.stdout + out.stderr
    assert "CUDA_VISIBLE_DEVICES=" in out.stdout and "Traceback" not in out.stderr


def test_slice_layout_is_off_the_vector_path():
    x = spec.specs()["adaln_modulate"].sample_args((2, 3, 1152), dtype=torch.bfloat16, layout="slice")[0]
    assert x.shape == (2, 3, 1152) and x.stride(-1) == 1
    assert x.storage_offset() == 1 and x.stride(1) % 8 != 0  # misaligned start, odd row stride
    assert spec.specs()["adaln_modulate"].sample_args((2, 3, 1152), layout="contiguous")[0].is_contiguous()


def test_the_table_is_the_specs():
    """Every op with kernels, on each backend its spec lists (native has no forecast_blend kernel)."""
    assert set(G.OPS) == {n for n, s in spec.specs().items() if len(s.backends) > 1}
    assert ("forecast_blend", "triton") in G.CELLS and ("forecast_blend", "native") not in G.CELLS
    assert ("linear", "native") in G.CELLS and ("linear", "triton") not in G.CELLS
    with pytest.raises(ValueError, match="no native kernel"):
        G.check_op("forecast_blend", "native", device="cpu", shape=SMALL)


@pytest.mark.parametrize("layout", G.LAYOUTS)
@pytest.mark.parametrize("dtype", ("fp32", "bf16"))
@pytest.mark.parametrize("op", G.OPS)
def test_checks_pass_for_the_cpu_backends(op, dtype, layout):
    backends = ["torch"] + (["native"] if ops.backend_status()["native"][0] else [])
    for backend in backends:
        if (op, backend) in G.CELLS:
            row = G.check_op(op, backend, dtype, layout, device="cpu", shape=SMALL)
            assert row["ok"] and row["err"] <= row["bound"], row


def test_a_wrong_kernel_fails_its_cell(monkeypatch):
    wrong = lambda x, gate, y: x + gate[:, None] * y * 1.001  # noqa: E731
    monkeypatch.setitem(_backend._kernels.setdefault("gated_residual", {}), "native", wrong)
    _status(monkeypatch)
    row = G.check_op("gated_residual", "native", "fp32", "contiguous", device="cpu", shape=SMALL)
    assert not row["ok"] and row["err"] > row["bound"], row


def test_a_kernel_that_raises_is_a_failed_cell_with_its_message(monkeypatch):
    def broken(*args):
        raise RuntimeError("illegal memory access")

    monkeypatch.setitem(_backend._kernels.setdefault("adaln_modulate", {}), "native", broken)
    _status(monkeypatch)
    row = G.check_op("adaln_modulate", "native", "bf16", "slice", device="cpu", shape=SMALL)
    assert not row["ok"] and "illegal memory access" in row["error"]


def test_a_cpu_only_native_build_is_a_failure_on_cuda(monkeypatch):
    _status(monkeypatch, triton=(False, "triton is not installed"))
    monkeypatch.setattr(native, "has_cuda_kernels", lambda: False)
    assert "no CUDA kernels" in G.backend_problem("native", "cuda")
    assert G.backend_problem("native", "cpu") is None
    assert "not installed" in G.backend_problem("triton", "cuda")


def test_tf32_large_mean_check_on_cpu():
    """The property the GPU check asserts under TF32, on the CPU drivers (no TF32 here)."""
    for backend in ["torch"] + (["native"] if ops.backend_status()["native"][0] else []):
        row = G.check_tf32_large_mean(backend, device="cpu", shape=(1, 16, 256))
        assert row["ok"], row


def test_auto_is_torch_on_cuda_until_a_gpu_has_measured_the_kernels():
    for op in G.OPS:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            assert ops.auto_backend(op, torch.device("cuda"), dtype) == "torch", (op, dtype)


@pytest.mark.gpu
def test_gpu_check_passes_and_writes_results(tmp_path):
    out = _run_check("--out", str(tmp_path))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "verdict: PASS" in out.stdout
    (result,) = tmp_path.glob("gpu-check-*.json")
    rows = json.loads(result.read_text())["rows"]
    assert rows and all(r["ok"] for r in rows)
