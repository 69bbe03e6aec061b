"""Every op's contract, from its spec (skipdit_kernels.ops.spec), on every backend that runs here.

- Each op on ``auto`` and on each backend its spec lists, in fp32, bf16 and fp16, in every memory
  layout of ``spec.LAYOUTS`` (contiguous, transposed, misaligned, stride 2, sliced) and over
  ``spec.SHAPES`` (empty batch, no tokens, one element, odd sizes, hidden 1152), against its
  reference: within ``spec.check_close``'s bound (twice the reference's own error against float64
  in that dtype, plus the spec's atol).
- ``torch.library.opcheck`` of the compiled ops behind each kernel backend (``skipdit::*``,
  ``skipdit_triton::*``): schema, fake tensors, autograd registration, AOT dispatch.

Triton runs here in its interpreter (TRITON_INTERPRET=1, python_tests/conftest.py): fp32 only (its
bf16 ``tl.dot`` is wrong there) and the shapes up to hidden 130; opcheck without the AOT-dispatch
checks, which need real launches in a traced graph (on a GPU: marker ``gpu``). The same cells on a
GPU at DiT-XL shapes: skipdit_kernels.testing.gpu_check (python_tests/ops/test_ops_gpu.py).
.ci/sanitize.sh runs this file against an ASan + UBSan build of the native CPU driver.
"""

import inspect

import pytest
import torch

from skipdit_kernels import ops
from skipdit_kernels.ops import spec

SPECS = spec.specs()
STATUS = ops.backend_status()
CASES = [(name, backend) for name, s in SPECS.items() for backend in ("auto", *s.backends)]
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
INTERPRETED_SHAPES = [shape for shape in spec.SHAPES if shape[2] <= 130]


def _require(backend: str, device: str = "cpu") -> None:
    if backend in STATUS and not STATUS[backend][0]:
        pytest.skip(f"{backend}: {STATUS[backend][1]}")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.mark.parametrize("dtype", spec.DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("op, backend", CASES, ids=[f"{o}-{b}" for o, b in CASES])
def test_op_matches_its_reference(op, backend, dtype):
    _require(backend)
    s = SPECS[op]
    shapes = spec.SHAPES
    if backend == "triton" and not torch.cuda.is_available():
        if dtype != torch.float32:
            pytest.skip("the Triton interpreter runs fp32 only")
        shapes = INTERPRETED_SHAPES
    for shape in shapes:
        for i, layout in enumerate(spec.LAYOUTS):
            args = s.sample_args(shape, out=shape[2] + 3, dtype=dtype, layout=layout, seed=sum(shape) + i, mean=0.3)
            with torch.no_grad(), ops.use_backend(backend):
                got = s.op(*args)
            err, bound = spec.check_close(s, got, args)
            assert err <= bound, f"{op} on {backend}, {shape} {dtype} {layout}: error {err:.3e} > bound {bound:.3e}"


def _library_op(s: spec.OpSpec, backend: str):
    """The compiled op behind ``s`` on ``backend`` (both libraries name it ``s.native or s.name``)."""
    namespace = torch.ops.skipdit if backend == "native" else torch.ops.skipdit_triton
    return getattr(namespace, s.native or s.name).default


OPCHECK = [(name, backend) for name, s in SPECS.items() for backend in ("native", "triton") if backend in s.backends]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("op, backend", OPCHECK, ids=[f"{o}-{b}" for o, b in OPCHECK])
def test_opcheck(op, backend, device):
    _require(backend, device)
    s = SPECS[op]
    args = s.kernel_args(s.sample_args((2, 5, 16), out=12, device=device))
    utils = {}
    if backend == "triton" and device == "cpu":  # the AOT-dispatch checks need real launches in a traced graph
        utils["test_utils"] = ("test_schema", "test_autograd_registration", "test_faketensor")
    with ops.use_backend(backend):  # loads the backend's library (Triton's ops are defined when first selected)
        torch.library.opcheck(_library_op(s, backend), args, **utils)


def test_every_public_op_has_a_spec():
    """The specs are the op list: every public op has one, with its reference's arguments."""
    backend_api = {"auto_backend", "available_backends", "backend_status", "current_backend", "use_backend"}
    public = {n for n in ops.__all__ if not n.endswith("_reference") and callable(getattr(ops, n))} - backend_api
    assert public == set(SPECS)
    for name, s in SPECS.items():
        assert s.op is getattr(ops, name)
        assert s.arg_names == list(inspect.signature(s.reference).parameters), name
        assert s.backends[0] == "torch" and set(s.backends) <= set(ops._backend.BACKENDS), name


def test_backends_register_what_the_specs_list():
    from skipdit_kernels.ops import native

    assert set(native.KERNELS) == {s.name for s in spec.with_backend("native")}
    if STATUS["native"][0]:
        for s in spec.with_backend("native"):
            assert hasattr(torch.ops.skipdit, s.native), s.native
    if STATUS["triton"][0]:
        with ops.use_backend("triton"):
            for s in spec.with_backend("triton"):
                assert ops._backend._kernels[s.name]["triton"] is not None, s.name
