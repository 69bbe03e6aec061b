"""The ``triton`` backend: Triton kernels registered as ``torch.library.triton_op`` (``skipdit_triton::*``).

Importing this package is light: it never imports Triton. The probe looks Triton up with
``importlib.util.find_spec`` and needs a CUDA device, or ``TRITON_INTERPRET=1`` (Triton's numpy
interpreter: a test tool for CPU machines, never a speed path). The kernels are compiled and
registered the first time the backend is selected (``use_backend("triton")``, SKIPDIT_BACKEND, or
``auto`` on CUDA).

Ops: those whose spec (``ops.spec``) lists the ``triton`` backend; each has its entry point, under
the op's name, in ``_ops.py``. ``attention`` has no Triton kernel: every backend runs flash-attn's
kernel when it qualifies, else torch SDPA (see ops/attention.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from .. import _backend


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() == "1"


def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s CUDA device the current one for a launch: Triton compiles for, and launches on,
    the current device and its current stream, whatever device the tensors are on (a model on
    ``cuda:1`` would otherwise run its kernels on ``cuda:0``). A no-op for CPU tensors (interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def probe() -> tuple[bool, str]:
    if not hasattr(torch.library, "triton_op"):
        return False, f"torch {torch.__version__} has no torch.library.triton_op (torch >= 2.6)"
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if torch.cuda.is_available():
        return True, f"CUDA kernels on {torch.cuda.get_device_name()}"
    if interpreting():
        return True, "Triton interpreter (TRITON_INTERPRET=1): numpy simulation on CPU, for tests only"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter, for tests)"


def load() -> None:
    """Import Triton, define the ``skipdit_triton::*`` ops and register them as backend kernels."""
    ok, why = probe()
    if not ok:
        raise RuntimeError(f"backend 'triton' is not available: {why}")
    from .. import spec
    from . import _ops

    for op in spec.with_backend("triton"):
        _backend.register(op.name, "triton")(getattr(_ops, op.name))


_backend.register_probe("triton", probe)
_backend.register_loader("triton", load)
_backend.declare_autograd("triton")  # every op has register_autograd (vjp of its torch formula)
