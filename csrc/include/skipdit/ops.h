// The ops of the `skipdit` library (schemas in csrc/register.cpp) and their per-device drivers.
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

#define SKIPDIT_DECLARE_OPS                                                                                    \
  Tensor adaln_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, double eps);               \
  Tensor gated_residual(const Tensor& x, const Tensor& gate, const Tensor& y);                                 \
  Tensor linear_gated_residual(const Tensor& x, const Tensor& h, const Tensor& weight,                        \
                               const std::optional<Tensor>& bias, const Tensor& gate);                        \
  Tensor linear_gelu(const Tensor& h, const Tensor& weight, const std::optional<Tensor>& bias);               \
  Tensor linear(const Tensor& h, const Tensor& weight, const std::optional<Tensor>& bias);                    \
  Tensor skip_fuse(const Tensor& x, const Tensor& skip, const Tensor& weight, const Tensor& rowsum,           \
                   const Tensor& bias, double eps);                                                           \
  std::tuple<Tensor, Tensor> skip_fuse_adaln(const Tensor& x, const Tensor& skip, const Tensor& weight,       \
                                             const Tensor& rowsum, const Tensor& bias, const Tensor& shift,   \
                                             const Tensor& scale, double eps);

namespace cpu {
SKIPDIT_DECLARE_OPS
// The skip fusion's folded parameters (skipdit_kernels/ops/folding.py) in one pass over the weight;
// CPU only (the CUDA path folds with ATen ops, ops.folding.fold_skip_weights).
std::tuple<Tensor, Tensor, Tensor> fold_skip_weights(const Tensor& norm_weight, const Tensor& norm_bias,
                                                     const Tensor& weight, const Tensor& bias);
}
namespace cuda {
SKIPDIT_DECLARE_OPS
}

}  // namespace skipdit
