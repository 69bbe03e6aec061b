// The arithmetic of every fused op, written once.
//
// Each function is templated on the value type V: the CPU driver instantiates it with
// at::vec::Vectorized<float> (a SIMD register of fp32 lanes), the CUDA driver with float (one
// thread's element). Storage may be fp32, bf16 or fp16; values are always fp32 here, so the
// CPU tests exercise the arithmetic the GPU runs. Math primitives that differ per value type go
// through Math<V>, specialised below for float and in csrc/cpu for Vectorized<float>.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SKIPDIT_HD __host__ __device__ __forceinline__
#else
#define SKIPDIT_HD inline
#endif

namespace skipdit {
namespace arith {

template <typename V>
struct Math;

template <>
struct Math<float> {
  static SKIPDIT_HD float splat(float v) { return v; }
  static SKIPDIT_HD float exp(float v) {
#if defined(__CUDA_ARCH__)
    return __expf(v);
#else
    return std::exp(v);
#endif
  }
  static SKIPDIT_HD float min(float a, float b) { return a < b ? a : b; }
  static SKIPDIT_HD float max(float a, float b) { return a > b ? a : b; }
};

// ---- per-row statistics (fp32, two passes: mean first, then centred squares) ------------------
// Two passes rather than E[x^2]-E[x]^2, and the mean summed relative to a pivot (the row's first
// element): rows with a large mean (the folding cancellation case) keep full precision. Drivers sum
// `shifted(x, pivot)` for the mean and `centred_square(x, mean)` for the variance.
template <typename V>
SKIPDIT_HD V shifted(V x, V pivot) {
  return x - pivot;
}

SKIPDIT_HD float mean_from_shifted_sum(float shifted_sum, float pivot, float inv_count) {
  return pivot + shifted_sum * inv_count;
}

template <typename V>
SKIPDIT_HD V centred_square(V x, V mean) {
  V d = x - mean;
  return d * d;
}

SKIPDIT_HD float rstd_from_m2(float m2, float inv_count, float eps) {
  float var = m2 * inv_count;
  var = var > 0.f ? var : 0.f;
#if defined(__CUDA_ARCH__)
  return rsqrtf(var + eps);
#else
  return 1.f / std::sqrt(var + eps);
#endif
}

// ---- elementwise pieces -------------------------------------------------------------------------
// LayerNorm without affine parameters.
template <typename V>
SKIPDIT_HD V normalize(V x, V mean, V rstd) {
  return (x - mean) * rstd;
}

// adaLN modulation of a normalised value: xhat * (1 + scale) + shift. A driver that reuses one
// sample's factor 1 + scale over many rows computes it once (modulation_factor) and calls
// modulate_by_factor: the same values as modulate.
template <typename V>
SKIPDIT_HD V modulation_factor(V scale) {
  return Math<V>::splat(1.f) + scale;
}

template <typename V>
SKIPDIT_HD V modulate_by_factor(V xhat, V shift, V factor) {
  return xhat * factor + shift;
}

template <typename V>
SKIPDIT_HD V modulate(V xhat, V shift, V scale) {
  return modulate_by_factor(xhat, shift, modulation_factor(scale));
}

// Gated residual: x + gate * y.
template <typename V>
SKIPDIT_HD V gate_residual(V x, V gate, V y) {
  return x + gate * y;
}

// tanh-GELU: 0.5 v (1 + tanh(u)) with u = sqrt(2/pi) (v + 0.044715 v^3), evaluated as
// v * sigmoid(2u) = v / (1 + exp(-2u)) (an identity), with the exponent clamped so that it never
// overflows: one exp and one division per element.
template <typename V>
SKIPDIT_HD V gelu_tanh(V v) {
  const V k2 = Math<V>::splat(-2.f * 0.7978845608028654f);
  const V k3 = Math<V>::splat(-2.f * 0.7978845608028654f * 0.044715f);
  V t = v * (k2 + k3 * v * v);  // -2u
  t = Math<V>::min(Math<V>::max(t, Math<V>::splat(-80.f)), Math<V>::splat(80.f));
  return v / (Math<V>::splat(1.f) + Math<V>::exp(t));
}

// The folded-LayerNorm epilogue of skip_fuse: with W' = W * gamma, acc = [x | skip] @ W'^T,
//   Linear(LayerNorm([x | skip])) = rstd * (acc - mean * rowsum(W')) + (W @ beta + b).
template <typename V>
SKIPDIT_HD V folded_epilogue(V acc, V mean, V rstd, V rowsum, V bias) {
  return rstd * (acc - mean * rowsum) + bias;
}

}  // namespace arith
}  // namespace skipdit
