// Host-side preparation of the CUDA driver's folded skip fusion (ATen ops). The CPU driver computes the
// same operand and its row statistics in one pass of its shift_pair kernel (csrc/cpu/kernels_impl.h);
// csrc/example/example.cpp holds the two to each other on CPU tensors (ctest).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>

namespace skipdit {

// The folded GEMM's operand when it runs in fp32 (or TF32 on a GPU): z - p as one (rows, 2 * hidden)
// fp32 matrix, z = [x | skip] per row and p the row's mean in fp32. Why the shift, and why the mean:
// skipdit_kernels/ops/folding.py, skip_fuse_folded_torch (the torch model of the folded kernels).
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
