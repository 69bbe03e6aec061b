"""The backend registry: selection (use_backend, SKIPDIT_BACKEND, auto table), status reasons, light import."""

import json
import os
import subprocess
import sys

import pytest
import torch

from skipdit_kernels import ops
from skipdit_kernels.ops import _backend


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


def test_package_import_does_not_import_triton():
    out = _run(
        "import sys, skipdit_kernels, skipdit_kernels.ops as o; o.backend_status(); o.available_backends();"
        "print('triton' in sys.modules)"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_triton_status_says_why_without_cuda_or_interpreter():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: triton is available")
    out = _run(
        "from skipdit_kernels import ops; ok, why = ops.backend_status()['triton']; print(ok, '|', why)",
        TRITON_INTERPRET="0",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ok, why = out.stdout.strip().splitlines()[-1].split(" | ")
    assert ok == "False" and "CUDA" in why and "TRITON_INTERPRET" in why


def test_status_under_interpreter():
    ok, why = ops.backend_status()["triton"]
    assert ok, why
    assert "triton" in ops.available_backends() and "torch" in ops.available_backends()
    if not torch.cuda.is_available():
        assert "interpreter" in why


def test_use_backend_validates_and_nests():
    with pytest.raises(ValueError, match="unknown backend"):
        with ops.use_backend("cuda-magic"):
            pass
    assert ops.current_backend() in ("auto", "torch", "triton", "native")
    with ops.use_backend("torch"):
        assert ops.current_backend() == "torch"
        with ops.use_backend("triton"):
            assert ops.current_backend() == "triton"
            assert _backend.kernel_for("adaln_modulate", torch.device("cpu")) is not None
            assert _backend.kernel_for("attention", torch.device("cpu")) is None  # SDPA/flash for all
        assert ops.current_backend() == "torch"
        assert _backend.kernel_for("adaln_modulate", torch.device("cpu")) is None


def test_unavailable_backend_raises(monkeypatch):
    monkeypatch.setitem(_backend._availability_probes, "native", lambda: (False, "no library (test)"))
    with pytest.raises(RuntimeError, match="no library"):
        with ops.use_backend("native"):
            pass


def test_env_var(monkeypatch):
    monkeypatch.setenv("SKIPDIT_BACKEND", "triton")
    assert ops.current_backend() == "triton"
    assert _backend.kernel_for("skip_fuse", torch.device("cpu")) is not None
    monkeypatch.setenv("SKIPDIT_BACKEND", "Torch ")
    assert _backend.kernel_for("skip_fuse", torch.device("cpu")) is None
    monkeypatch.setenv("SKIPDIT_BACKEND", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        ops.current_backend()


@pytest.fixture
def auto_table():
    yield _backend.set_auto_table
    _backend.set_auto_table(None)


def test_auto_table_lookup(auto_table, monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setitem(_backend._availability_probes, "native", lambda: (True, "test"))
    monkeypatch.setitem(_backend._usable, "native", True)
    auto_table(
        {
            "cpu/adaln_modulate/float32": "native",
            "cpu/gated_residual/*": "native",
            "cpu/skip_fuse/float32": "triton",  # never triton on CPU
            "cuda/skip_fuse/bfloat16": "triton",
        }
    )
    assert ops.auto_backend("adaln_modulate", cpu, torch.float32) == "native"
    assert ops.auto_backend("adaln_modulate", cpu, torch.bfloat16) == "torch"  # unmeasured
    assert ops.auto_backend("gated_residual", cpu, torch.float16) == "native"  # dtype wildcard
    assert ops.auto_backend("skip_fuse", cpu, torch.float32) == "torch"
    assert ops.auto_backend("linear_gelu", cpu, torch.float32) == "torch"
    monkeypatch.setitem(_backend._usable, "triton", True)
    assert ops.auto_backend("skip_fuse", cuda, torch.bfloat16) == "triton"
    monkeypatch.setitem(_backend._usable, "native", False)  # measured, but missing here
    assert ops.auto_backend("adaln_modulate", cpu, torch.float32) == "torch"


def test_auto_runs_the_reference_by_default(auto_table):
    auto_table({})
    with ops.use_backend("auto"):
        assert _backend.kernel_for("skip_fuse", torch.device("cpu"), torch.float32) is None


def test_shipped_auto_table_is_valid():
    with open(_backend.AUTO_TABLE_PATH) as f:
        data = json.load(f)
    assert isinstance(data["table"], dict)
    for key, name in data["table"].items():
        kind, op, dtype = key.split("/")
        assert kind in ("cpu", "cuda") and name in _backend.BACKENDS, key
        assert dtype == "*" or isinstance(getattr(torch, dtype, None), torch.dtype), key
        assert not (kind == "cpu" and name == "triton"), key
        assert op in _backend._kernels or op in ("attention", "*"), key


def test_auto_avoids_backends_without_backward_when_grad_is_needed(auto_table, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setitem(_backend._usable, "native", True)
    monkeypatch.setattr(_backend, "_autograd", {"torch"})
    auto_table({"cpu/linear_gelu/float32": "native"})
    assert ops.auto_backend("linear_gelu", cpu, torch.float32, grad=False) == "native"
    assert ops.auto_backend("linear_gelu", cpu, torch.float32, grad=True) == "torch"
    w = torch.randn(4, 3, requires_grad=True)
    with ops.use_backend("auto"):
        out = ops.linear_gelu(torch.randn(2, 3), w, None)  # the reference: differentiable
    out.sum().backward()
    assert w.grad is not None
    assert _backend.needs_grad(w) and not _backend.needs_grad(w.detach(), None)
    with torch.no_grad():
        assert not _backend.needs_grad(w)


def test_chosen_backend_without_backward_runs_the_reference_when_grad_is_needed():
    if not ops.backend_status()["native"][0]:
        pytest.skip("native backend unavailable")
    lin = torch.nn.Linear(8, 16)
    h = torch.randn(1, 3, 8)
    with ops.use_backend("native"):
        out = ops.linear_gelu(h, lin.weight, lin.bias)  # not the kernel's "mm(): out=..." error
        out.sum().backward()
        assert lin.weight.grad is not None
        with torch.no_grad():
            assert torch.allclose(ops.linear_gelu(h, lin.weight, lin.bias), out, rtol=1e-5, atol=1e-6)


def test_resolution_is_memoised_yet_follows_context_env_and_table(auto_table, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setitem(_backend._usable, "triton", True)
    monkeypatch.delenv("SKIPDIT_BACKEND", raising=False)
    auto_table({"cpu/adaln_modulate/float32": "native"})
    native_ok = ops.backend_status()["native"][0]
    for _ in range(2):  # the second pass is answered from the memo and must agree
        assert (_backend.kernel_for("adaln_modulate", cpu, torch.float32) is not None) == native_ok
        with ops.use_backend("torch"):
            assert _backend.kernel_for("adaln_modulate", cpu, torch.float32) is None
            with ops.use_backend("triton"):
                assert (
                    _backend.kernel_for("adaln_modulate", cpu, torch.float32)
                    is _backend._kernels["adaln_modulate"]["triton"]
                )
            assert _backend.kernel_for("adaln_modulate", cpu, torch.float32) is None
        monkeypatch.setenv("SKIPDIT_BACKEND", "torch")
        assert _backend.kernel_for("adaln_modulate", cpu, torch.float32) is None
        monkeypatch.delenv("SKIPDIT_BACKEND")
    assert ("auto", "adaln_modulate", cpu, torch.float32, False) in _backend._resolved
    auto_table({})  # a new table is seen at once
    assert _backend.kernel_for("adaln_modulate", cpu, torch.float32) is None
    monkeypatch.setenv("SKIPDIT_BACKEND", "bogus")  # a bad value keeps raising, it is not memoised
    for _ in range(2):
        with pytest.raises(ValueError, match="bogus"):
            _backend.kernel_for("adaln_modulate", cpu, torch.float32)


def test_registering_a_kernel_forgets_memoised_resolutions(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setitem(_backend._kernels, "test_only_op", {})
    with ops.use_backend("triton"):
        assert _backend.kernel_for("test_only_op", cpu, torch.float32) is None
        kernel = _backend.register("test_only_op", "triton")(lambda x: x)
        assert _backend.kernel_for("test_only_op", cpu, torch.float32) is kernel
    _backend.forget_resolutions()
