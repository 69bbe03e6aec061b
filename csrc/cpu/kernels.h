// The CPU driver's row kernels, compiled once per instruction set (kernels_{default,avx2,avx512}.cpp
// include kernels_impl.h under a capability) and picked at run time (ops_cpu.cpp). Their interface
// is raw pointers and strides, so the capability-specific object files share no ATen code paths.
#pragma once

#include <cstdint>

namespace skipdit {
namespace cpu {

enum class Storage : int { f32 = 0, bf16 = 1, f16 = 2 };

// Rows of a (rows, hidden) matrix with unit stride along hidden: row r (r >= first) starts at element
//   data + ((r - first) / per_outer) * s_outer + ((r - first) % per_outer) * s_inner.
// A (batch, tokens, hidden) tensor is {data, tokens, stride(0), stride(1), 0}.
struct Rows {
  void* data;
  int64_t per_outer;
  int64_t s_outer;
  int64_t s_inner;
  int64_t first;
  template <typename T>
  T* row(int64_t r) const {
    int64_t i = r - first;
    return static_cast<T*>(data) + (i / per_outer) * s_outer + (i % per_outer) * s_inner;
  }
};

// Per-sample vectors (shift, scale, gate): sample b at data + b * stride, unit stride along hidden.
struct BatchVec {
  const void* data;
  int64_t stride;
};

// Every kernel handles rows [r0, r1); row r belongs to sample r / tokens.
struct KernelTable {
  const char* name;
  // out = LayerNorm(x) * (1 + scale) + shift
  void (*adaln)(Storage st, Rows x, BatchVec shift, BatchVec scale, Rows out, int64_t tokens, int64_t hidden,
                float eps, int64_t r0, int64_t r1);
  // out = x + gate * (y + bias); y (and bias, may be null) stored as y_st (st, or f32 when y is an fp32
  // GEMM accumulator); out may alias y. The GEMMs run without bias: adding it here saves addmm's pass
  // that broadcasts the bias into the output before the GEMM.
  void (*gated)(Storage st, Rows x, BatchVec gate, Storage y_st, Rows y, const void* bias, Rows out, int64_t tokens,
                int64_t hidden, int64_t r0, int64_t r1);
  // out = gelu_tanh(acc + bias), or acc + bias without `gelu`; acc (and bias, may be null) stored as
  // acc_st (f32 or st); out may alias acc.
  void (*bias_act)(Storage st, Storage acc_st, Rows acc, const void* bias, Rows out, int64_t width, bool gelu,
                   int64_t r0, int64_t r1);
  // mean and rstd of each row of [x | skip] (2 * hidden values)
  void (*pair_stats)(Storage st, Rows x, Rows skip, int64_t hidden, float eps, float* mean, float* rstd, int64_t r0,
                     int64_t r1);
  // fp32 skip fusion: z row r = [x - p | skip - p], p the row's mean (z has leading dimension ldz),
  // and mean/rstd of z's row (indexed by r - r0).
  void (*shift_pair)(Storage st, Rows x, Rows skip, int64_t hidden, float eps, float* z, int64_t ldz, float* mean,
                     float* rstd, int64_t r0, int64_t r1);
  // h = rstd * (acc - mean * rowsum) + bias (rounded to st); with mod != nullptr also
  // mod = LayerNorm(h) * (1 + scale) + shift. mean/rstd are indexed by r - r_base.
  void (*folded)(Storage st, Storage acc_st, Rows acc, const float* mean, const float* rstd, int64_t r_base,
                 const float* rowsum, const float* bias, Rows h, int64_t width, const BatchVec* shift,
                 const BatchVec* scale, const Rows* mod, int64_t tokens, float eps, int64_t r0, int64_t r1);
  // The skip fusion's folded parameters for weight rows [r0, r1) (w: rows of k elements, leading
  // dimension ld; folded: contiguous): folded = W * gamma rounded to st, rowsum = its row sums,
  // fbias = bias + W @ beta. gamma, beta (k), bias, rowsum, fbias (rows) are fp32.
  void (*fold)(Storage st, const void* w, int64_t ld, const float* gamma, const float* beta, const float* bias,
               void* folded, float* rowsum, float* fbias, int64_t k, int64_t r0, int64_t r1);
};

const KernelTable& table_default();
const KernelTable& table_avx2();
const KernelTable& table_avx512();

}  // namespace cpu
}  // namespace skipdit
