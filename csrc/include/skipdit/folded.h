// Host-side preparation of the CUDA driver's folded skip fusion (ATen ops). The CPU driver computes the
// same operand and its row statistics in one pass of its shift_pair kernel (csrc/cpu/kernels_impl.h),
// with the same formula; the reasoning below holds for both.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>

namespace skipdit {

// The folded GEMM's operand when it runs in fp32 (or TF32 on a GPU): z - p as one (rows, 2 * hidden)
// fp32 matrix, z = [x | skip] per row and p the row's mean (fp32; it need not be exact).
//
// acc - mean * rowsum cancels |mean| / std digits of acc, and TF32 rounds the GEMM's inputs to 11
// bits: rows with mean 300 and std 1 would keep almost none. From z - p the GEMM sees values of the
// row's spread, and the epilogue subtracts mean(z - p) * rowsum, where nothing large cancels. The
// statistics are then taken from z - p too (the row-statistics code shifts again, by z - p's first
// element, and its mean is mean(z - p) itself; the variance is z's). p is the mean rather than one
// element of the row: with p = z[0], |mean(z - p)| is of the order of the std, and under TF32 the GEMM's
// rounding of z - p and of W' (which rowsum does not see) leaves 2-3x the error of LayerNorm-then-GEMM
// (simulated); with the mean, about 1x. Half-precision GEMMs read z unshifted: z - p would be rounded
// to the half type again, while the products of exact half inputs accumulate in fp32 anyway.
inline at::Tensor shifted_pair(const at::Tensor& x2, const at::Tensor& s2) {
  // Kernel-internal arithmetic: no autograd recording (the out= calls would refuse inputs that
  // require grad, e.g. activations of a forward run outside no_grad).
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t rows = x2.size(0), hidden = x2.size(1);
  at::Tensor z = at::empty({rows, 2 * hidden}, x2.options().dtype(at::kFloat));
  const at::Tensor pivot =
      (at::sum(x2, {1}, /*keepdim=*/true, at::kFloat) + at::sum(s2, {1}, /*keepdim=*/true, at::kFloat))
          .div_(static_cast<double>(2 * hidden));
  at::Tensor zx = z.narrow(1, 0, hidden), zskip = z.narrow(1, hidden, hidden);
  at::sub_out(zx, x2, pivot);  // half inputs subtract in fp32 (pivot is fp32)
  at::sub_out(zskip, s2, pivot);
  return z;
}

}  // namespace skipdit
