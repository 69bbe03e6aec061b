"""The ``native`` backend: the compiled kernels of csrc/ (torch.ops.skipdit.*).

Its ops are those whose spec (``ops.spec``) lists the ``native`` backend, each run by the library op
the spec names (``torch.ops.skipdit.<spec.native>``); torch's dispatcher runs the CPU or the CUDA
driver by the inputs' device.
The library comes from the installed extension (``skipdit_kernels._C``, built by ``pip install``),
or, when that is missing, from a cached JIT build (``build_jit()``, or ``SKIPDIT_NATIVE_JIT=1`` at
import; ``SKIPDIT_NATIVE_JIT=force`` uses the JIT build even when the extension is installed), or
from the shared library named by ``SKIPDIT_NATIVE_LIBRARY`` (a sanitizer build: .ci/sanitize.sh).
Importing this package never fails: without the library the backend reports why.

Weight preparation happens here, on every call (nothing is cached, so no update of the weights is
ever missed):
- ops that fold (``spec.folds``): the LayerNorm folded into the projection
  (``ops.folding.fold_skip_weights``); their library ops take the folded weights.
- bf16/fp16 GEMMs on a CPU without bf16 dot-product units (AVX2-only CPUs such as AMD Zen 3): the
  GEMM runs in fp32 with fp32 copies of the weights, the result rounded to the activation dtype;
  vendor bf16 GEMMs there run 6-7x slower than fp32.
"""

from __future__ import annotations

import importlib
import os

import torch

from .. import _backend, spec
from ..folding import fold_skip_weights

_HELPERS = ("fold_skip_weights",)  # driver-internal ops, not registered with the op layer
_state = {"loaded": False, "source": None, "error": "not loaded yet", "fakes": False}
KERNELS: dict = {}  # op name -> the native backend's kernel (the public op's signature)


def _missing_ops() -> list[str]:
    """The library ops the specs (and the driver helpers) need that torch.ops.skipdit lacks."""
    wanted = [op.native for op in spec.with_backend("native")] + list(_HELPERS)
    try:
        return [name for name in wanted if not hasattr(torch.ops.skipdit, name)]
    except Exception:
        return wanted


def load(jit: bool | None = None, verbose: bool = False) -> bool:
    """Load the kernels: the installed extension, else (when ``jit`` or SKIPDIT_NATIVE_JIT=1) a JIT build."""
    if _state["loaded"]:
        return True
    errors = []
    jit_env = os.environ.get("SKIPDIT_NATIVE_JIT", "0").strip().lower()
    library = os.environ.get("SKIPDIT_NATIVE_LIBRARY", "").strip()
    if library:  # a library built elsewhere (.ci/sanitize.sh's sanitizer build, debugging)
        try:
            torch.ops.load_library(library)
            _state["source"] = f"library {library}"
        except Exception as exc:
            errors.append(f"SKIPDIT_NATIVE_LIBRARY={library} did not load ({type(exc).__name__}: {exc})")
            jit = False
    elif jit_env == "force":  # the JIT build even when an extension is installed (tests, debugging)
        jit = True
    else:
        try:
            importlib.import_module("skipdit_kernels._C")
            _state["source"] = "installed extension"
        except Exception as exc:  # ImportError, or a library built against another torch
            errors.append(f"no installed extension ({type(exc).__name__}: {exc})")
    if _state["source"] is None:
        if jit is None:
            jit = jit_env in ("1", "true", "yes", "on")
        if jit:
            try:
                from ._jit import build_jit

                build_jit(verbose=verbose)
                _state["source"] = "JIT build"
            except Exception as exc:
                errors.append(f"JIT build failed ({type(exc).__name__}: {exc})")
        else:
            errors.append("JIT build not requested (skipdit_kernels.ops.native.build_jit() or SKIPDIT_NATIVE_JIT=1)")
    missing = _missing_ops() if _state["source"] is not None else []
    if _state["source"] is None or missing:
        _state["error"] = "; ".join(errors) or f"torch.ops.skipdit lacks {', '.join(missing)} (rebuild the extension)"
        _state["source"] = None
        return False
    from . import _fake

    if not _state["fakes"]:
        _fake.register_fakes()
        _state["fakes"] = True
    _state["loaded"] = True
    _state["error"] = None
    return True


def build_jit(verbose: bool = False) -> bool:
    """Compile csrc/ now (cached under ~/.cache/skipdit_kernels) and load it."""
    return load(jit=True, verbose=verbose)


def has_cuda_kernels() -> bool:
    return _state["loaded"] and torch._C._dispatch_has_kernel_for_dispatch_key("skipdit::adaln_modulate", "CUDA")


def cpu_capability() -> str:
    """The instruction set the CPU driver runs ("avx2", "avx512", "default"), "+bf16" with bf16 units."""
    return torch.ops.skipdit.cpu_capability() if _state["loaded"] else "unavailable"


def cpu_fp32_gemm() -> str:
    """Who runs the CPU driver's fp32 GEMMs: "onednn" (x86 CPUs not made by Intel, where MKL's sgemm
    is about half as fast) or "torch" (at::mm); ``SKIPDIT_CPU_FP32_GEMM=onednn|torch`` overrides."""
    return torch.ops.skipdit.cpu_fp32_gemm() if _state["loaded"] else "unavailable"


def cpu_has_bf16_units() -> bool:
    return _state["loaded"] and cpu_capability().endswith("+bf16")


def probe() -> tuple[bool, str]:
    if not _state["loaded"] and not load():
        return False, _state["error"]
    cuda = "with CUDA kernels" if has_cuda_kernels() else "CPU kernels only"
    return True, f"{_state['source']}, {cuda}, CPU driver {cpu_capability()}, fp32 GEMMs on {cpu_fp32_gemm()}"


# ---- weight preparation ------------------------------------------------------------------------
# Recomputed on every call, never cached (see ops.folding: a cache cannot see writes through .data).
def _gemm_in_fp32(act: torch.Tensor) -> bool:
    """Half-precision GEMMs on a CPU that has no bf16/fp16 units run in fp32."""
    return (
        act.device.type == "cpu"
        and act.dtype in (torch.bfloat16, torch.float16)
        and not (act.dtype == torch.bfloat16 and cpu_has_bf16_units())
    )


def _gemm_params(act, weight, bias):
    """The weights the GEMM reads: fp32 copies where the GEMM runs in fp32 (converting a weight
    costs about 1 % of the GEMM at batch 4 x 256 tokens: 0.16 / 0.54 ms against 47 / 100 ms for
    DiT-B / XL's fc1, one thread)."""
    if _gemm_in_fp32(act):
        return weight.float(), None if bias is None else bias.float()
    return weight, bias


def _folded(x, norm_weight, norm_bias, weight, bias):
    """(weight, rowsum, bias) folded as ops.folding.fold_skip_weights defines them; on a CPU by the
    driver's one-pass kernel (the ATen chain costs 5-15 % of the bf16 op at DiT shapes: it writes an
    fp32 product and converts the whole weight to fp32 for W @ beta)."""
    if weight.device.type == "cpu":
        w, rowsum, b = torch.ops.skipdit.fold_skip_weights(norm_weight, norm_bias, weight, bias)
    else:
        f = fold_skip_weights(norm_weight, norm_bias, weight, bias)
        w, rowsum, b = f.weight, f.rowsum, f.bias
    return (w.float() if _gemm_in_fp32(x) else w), rowsum, b


# ---- kernels for the op registry -----------------------------------------------------------------
def kernel(op: spec.OpSpec):
    """The native kernel of ``op``: its library op, after the weight preparation its spec asks for
    (folding, fp32 GEMM weights). Library ops are looked up per call: the library may load later."""
    name = op.native
    if op.folds:

        def run(x, skip, norm_weight, norm_bias, weight, bias, *rest):
            return getattr(torch.ops.skipdit, name)(x, skip, *_folded(x, norm_weight, norm_bias, weight, bias), *rest)
    elif op.gemm is not None:
        a, w, b = op.gemm

        def run(*args):
            args = list(args)
            args[w], args[b] = _gemm_params(args[a], args[w], args[b])
            return getattr(torch.ops.skipdit, name)(*args)
    else:

        def run(*args):
            return getattr(torch.ops.skipdit, name)(*args)

    run.__name__ = run.__qualname__ = op.name
    return run


def _register() -> None:
    for op in spec.with_backend("native"):
        KERNELS[op.name] = _backend.register(op.name, "native")(kernel(op))
    _backend.register_probe("native", probe)
    _backend.declare_dtypes("native", (torch.float32, torch.bfloat16, torch.float16))


try:
    load()
except Exception as exc:  # never fail the package import
    _state["error"] = f"{type(exc).__name__}: {exc}"
_register()
