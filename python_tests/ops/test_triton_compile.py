"""The Triton kernels lower to GPU code (sm_90 and sm_80) without a GPU: ahead-of-time compilation
to PTX/cubin with Triton's bundled toolchain. The interpreter accepts programs the compiler rejects
(types, layouts, dot operand shapes), so this is the check that the CPU suite can offer for the GPU
path. It says nothing about speed or about results on a device."""

import os
import subprocess
import sys
import textwrap

import pytest

from skipdit_kernels import ops

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ops.backend_status()["triton"][0], reason=ops.backend_status()["triton"][1]),
]

SCRIPT = textwrap.dedent(r"""
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from skipdit_kernels.ops.triton import _kernels as K

    arch, dt = int(sys.argv[1]), sys.argv[2]
    p = "*" + dt
    i32 = lambda names: {k: "i32" for k in names.split()}
    const = lambda names: {k: "constexpr" for k in names.split()}
    gemm = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "ALLOW_TF32": dt != "fp32"}
    cases = {
        "adaln": (K.adaln_kernel, {"x_ptr": p, "shift_ptr": p, "scale_ptr": p, "out_ptr": p,
                  **i32("M T D sxb sxt sxd shb shd scb scd"), "eps": "fp32", **const("BLOCK_M BLOCK_D")},
                  {"BLOCK_M": 4, "BLOCK_D": 2048}),
        "gated_residual": (K.gated_residual_kernel, {"x_ptr": p, "gate_ptr": p, "y_ptr": p, "out_ptr": p,
                  **i32("M T D sxb sxt sxd sgb sgd syb syt syd"), **const("BLOCK_M BLOCK_D")},
                  {"BLOCK_M": 8, "BLOCK_D": 256}),
        "linear_gated_residual": (K.linear_kernel, {**{k: p for k in "a_ptr w_ptr bias_ptr x_ptr gate_ptr out_ptr".split()},
                  **i32("M N K T sab sat sak swn swk sxb sxt sxn sgb sgn"),
                  **const("HAS_BIAS EPILOGUE ALLOW_TF32 BLOCK_M BLOCK_N BLOCK_K GROUP_M")},
                  {"HAS_BIAS": True, "EPILOGUE": 2, **gemm}),
        "skip_fuse": (K.skip_fuse_kernel, {"x_ptr": p, "s_ptr": p, "w_ptr": p, "rowsum_ptr": "*fp32", "bias_ptr": "*fp32",
                  "pivot_ptr": "*fp32", "out_ptr": p, **i32("M N D T sxb sxt sxd ssb sst ssd swn swk"), "eps": "fp32",
                  **const("ALLOW_TF32 SHIFT_A BLOCK_M BLOCK_N BLOCK_K GROUP_M")},
                  {"SHIFT_A": dt == "fp32", **gemm}),
    }
    if len(sys.argv) > 3:
        cases["linear_gelu"] = (cases["linear_gated_residual"][0], cases["linear_gated_residual"][1],
                                {"HAS_BIAS": True, "EPILOGUE": 1, **gemm})
    target = GPUTarget("cuda", arch, 64 if arch < 90 else 128)
    for name, (fn, signature, constexprs) in cases.items():
        src = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
        compiled = triton.compile(src, target=target, options={"num_warps": 4, "num_stages": 3})
        assert compiled.asm.get("cubin"), name
        print(name, "ok", flush=True)
""")


@pytest.mark.parametrize("arch, dtype", [(90, "bf16")])
def test_kernels_compile_for_gpu(arch, dtype):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(arch), dtype], env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0 and ("ptxas" in out.stderr and "not found" in out.stderr.lower()):
        pytest.skip("Triton's bundled ptxas is missing")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count(" ok") == 4
