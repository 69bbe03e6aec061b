// What the drivers of the `skipdit` library (schemas in csrc/register.cpp) share: argument checks and
// the CPU capability report.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <string>
#include <tuple>

namespace skipdit {
using at::Tensor;

// Preconditions shared by both drivers (TORCH_CHECK; the Python layer raises ValueError first).
void check_adaln(const char* op, const Tensor& x, const Tensor& shift, const Tensor& scale);
void check_gated(const Tensor& x, const Tensor& gate, const Tensor& y);
void check_linear(const char* op, const Tensor& h, const Tensor& weight, const std::optional<Tensor>& bias);
void check_linear_gated(const Tensor& x, const Tensor& h, const Tensor& weight, const std::optional<Tensor>& bias,
                        const Tensor& gate);
void check_skip_fuse(const char* op, const Tensor& x, const Tensor& skip, const Tensor& weight, const Tensor& rowsum,
                     const Tensor& bias);

// The CPU capability the CPU driver dispatches to ("default", "avx2", "avx512"), plus "+bf16" when
// the CPU has bf16 dot-product units (avx512_bf16 or amx_bf16).
std::string cpu_capability();
// Who runs the CPU driver's fp32 GEMMs: "onednn" or "torch" (at::mm; MKL in torch's x86 builds).
std::string cpu_fp32_gemm();

// The kernels themselves are defined in each driver (cpu/ops_cpu.cpp, cuda/ops_cuda.cu), which
// registers them with torch's dispatcher; callers reach them through torch.ops.skipdit.*.

}  // namespace skipdit
