// CPU row kernels for one instruction set. Included by kernels_{default,avx2,avx512}.cpp after they
// define CPU_CAPABILITY (and CPU_CAPABILITY_AVX2 / _AVX512 with a matching `#pragma GCC target`),
// exactly as ATen's own per-capability kernels are built. Everything here has internal linkage or
// lives in the capability namespace, so the variants never collide.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include <skipdit/arith.h>

#include "kernels.h"

namespace skipdit {
namespace arith {
template <>
struct Math<at::vec::Vectorized<float>> {
  using V = at::vec::Vectorized<float>;
  static inline V splat(float v) { return V(v); }
  static inline V exp(const V& v) { return v.exp_u20(); }
  static inline V min(const V& a, const V& b) { return at::vec::minimum(a, b); }
  static inline V max(const V& a, const V& b) { return at::vec::maximum(a, b); }
};
}  // namespace arith

namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using Vf = at::vec::Vectorized<float>;
constexpr int64_t kW = Vf::size();
using namespace skipdit::arith;

// ---- storage <-> fp32 ---------------------------------------------------------------------------
inline float to_f(float v) { return v; }
inline float to_f(c10::BFloat16 v) { return static_cast<float>(v); }
inline float to_f(c10::Half v) { return static_cast<float>(v); }
template <typename T>
inline T from_f(float v) {
  return static_cast<T>(v);
}

// kW elements at a time; 16-bit types convert in registers (never a partial load/store).
inline Vf load_f(const float* p) { return Vf::loadu(p); }
inline Vf load_f(const c10::BFloat16* p) {
  Vf out;
  at::vec::load_fp32_from_bf16(p, out);
  return out;
}
inline Vf load_f(const c10::Half* p) {
  Vf out;
  at::vec::load_fp32_from_fp16(p, out);
  return out;
}
inline void store_f(float* p, const Vf& v) { v.store(p); }
// 16-bit stores round in registers (ATen's round-to-nearest-even conversions, NaN kept) and write
// exactly kW elements.
#if defined(CPU_CAPABILITY_AVX512)
inline void store_f(c10::BFloat16* p, const Vf& v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), at::vec::cvtfp32_bf16(__m512(v)));
}
inline void store_f(c10::Half* p, const Vf& v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), at::vec::cvtfp32_fp16(__m512(v)));
}
#elif defined(CPU_CAPABILITY_AVX2)
inline void store_f(c10::BFloat16* p, const Vf& v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), at::vec::cvtfp32_bf16(__m256(v)));
}
inline void store_f(c10::Half* p, const Vf& v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), at::vec::cvtfp32_fp16(__m256(v)));
}
#else
template <typename T>
inline void store_f(T* p, const Vf& v) {
  alignas(64) T buf[2 * kW];
  at::vec::convert_from_float<T>(v, v).store(buf);
  std::memcpy(p, buf, kW * sizeof(T));
}
#endif

// Walks rows r0, r0 + 1, ... of a Rows layout: one division at the start, none per row (two
// integer divisions per row and operand cost as much as the arithmetic of a 768-wide fp32 row).
template <typename T>
struct RowWalk {
  char* outer;  // start of the current outer block
  char* p;      // current row
  int64_t k, per, s_outer, s_inner;  // byte strides
  RowWalk(const Rows& rows, int64_t r) : per(rows.per_outer) {
    using U = std::remove_const_t<T>;
    const int64_t i = r - rows.first;
    s_outer = rows.s_outer * static_cast<int64_t>(sizeof(U));
    s_inner = rows.s_inner * static_cast<int64_t>(sizeof(U));
    k = i % per;
    outer = static_cast<char*>(rows.data) + (i / per) * s_outer;
    p = outer + k * s_inner;
  }
  T* get() const { return reinterpret_cast<T*>(p); }
  void next() {
    if (++k == per) {
      k = 0;
      outer += s_outer;
      p = outer;
    } else {
      p += s_inner;
    }
  }
};

// The sample index of rows r0, r0 + 1, ... (row r belongs to sample r / tokens), without divisions.
struct SampleWalk {
  int64_t b, n, tokens;
  SampleWalk(int64_t r, int64_t tokens_) : b(r / tokens_), n(r % tokens_), tokens(tokens_) {}
  // true when the next row starts a new sample
  bool next() {
    if (++n == tokens) {
      n = 0;
      ++b;
      return true;
    }
    return false;
  }
};

// A tree of lane shuffles (a scalar loop over the lanes is a 16-add dependency chain per reduction).
inline float hsum(const Vf& v) {
  return at::vec::vec_reduce_all<float>([](Vf& a, Vf& b) { return a + b; }, v);
}

// sum of (p[i] - pivot)
// Four independent accumulators: the reductions are add-latency bound otherwise.
template <typename T>
inline float row_shifted_sum(const T* p, int64_t n, float pivot) {
  Vf a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  const Vf vp(pivot);
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    a0 = a0 + shifted(load_f(p + i), vp);
    a1 = a1 + shifted(load_f(p + i + kW), vp);
    a2 = a2 + shifted(load_f(p + i + 2 * kW), vp);
    a3 = a3 + shifted(load_f(p + i + 3 * kW), vp);
  }
  for (; i + kW <= n; i += kW) a0 = a0 + shifted(load_f(p + i), vp);
  float s = hsum((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += shifted(to_f(p[i]), pivot);
  return s;
}

template <typename T>
inline float row_m2(const T* p, int64_t n, float mean) {
  Vf a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  const Vf vm(mean);
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    a0 = a0 + centred_square(load_f(p + i), vm);
    a1 = a1 + centred_square(load_f(p + i + kW), vm);
    a2 = a2 + centred_square(load_f(p + i + 2 * kW), vm);
    a3 = a3 + centred_square(load_f(p + i + 3 * kW), vm);
  }
  for (; i + kW <= n; i += kW) a0 = a0 + centred_square(load_f(p + i), vm);
  float s = hsum((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += centred_square(to_f(p[i]), mean);
  return s;
}

// A sample's shift and modulation factor (1 + scale) in fp32, converted once per sample rather than
// once per row (the same fp32 values the per-element formula computes).
struct SampleModulation {
  std::vector<float> shift, factor;
  explicit SampleModulation(int64_t n) : shift(n), factor(n) {}
  template <typename T>
  void load(const T* sh, const T* sc, int64_t n) {
    int64_t i = 0;
    for (; i + kW <= n; i += kW) {
      store_f(shift.data() + i, load_f(sh + i));
      store_f(factor.data() + i, modulation_factor(load_f(sc + i)));
    }
    for (; i < n; ++i) {
      shift[i] = to_f(sh[i]);
      factor[i] = modulation_factor(to_f(sc[i]));
    }
  }
};

// Row statistics (two passes, shared arithmetic) of a row held in fp32.
inline void row_stats(const float* x, int64_t n, float inv, float eps, float& mean, float& rstd) {
  const float pivot = x[0];
  mean = mean_from_shifted_sum(row_shifted_sum(x, n, pivot), pivot, inv);
  rstd = rstd_from_m2(row_m2(x, n, mean), inv, eps);
}

// The row as fp32: itself for fp32 storage, else converted once into `buf` (n floats, in L1), so that
// the statistics and the modulation passes read it without converting again.
inline const float* row_f32(const float* x, int64_t, float*) { return x; }
template <typename T>
inline const float* row_f32(const T* x, int64_t n, float* buf) {
  int64_t i = 0;
  for (; i + kW <= n; i += kW) store_f(buf + i, load_f(x + i));
  for (; i < n; ++i) buf[i] = to_f(x[i]);
  return buf;
}

// out[i] = LayerNorm(x)[i] * (1 + scale[i]) + shift[i] over one fp32 row.
template <typename T>
inline void modulate_row(const float* x, const SampleModulation& m, T* out, int64_t n, float mean, float rstd) {
  const Vf vm(mean), vr(rstd);
  const float* sh = m.shift.data();
  const float* f = m.factor.data();
  int64_t i = 0;
  for (; i + kW <= n; i += kW)
    store_f(out + i, modulate_by_factor(normalize(Vf::loadu(x + i), vm, vr), Vf::loadu(sh + i), Vf::loadu(f + i)));
  for (; i < n; ++i) out[i] = from_f<T>(modulate_by_factor(normalize(x[i], mean, rstd), sh[i], f[i]));
}

// ---- kernels ------------------------------------------------------------------------------------
template <typename T>
void adaln_t(Rows x, BatchVec shift, BatchVec scale, Rows out, int64_t tokens, int64_t hidden, float eps, int64_t r0,
             int64_t r1) {
  const float inv = 1.f / static_cast<float>(hidden);
  SampleModulation m(hidden);
  std::vector<float> buf(std::is_same_v<T, float> ? 0 : hidden);
  RowWalk<const T> xw(x, r0);
  RowWalk<T> ow(out, r0);
  SampleWalk sw(r0, tokens);
  bool fresh = true;
  for (int64_t r = r0; r < r1; ++r, xw.next(), ow.next(), fresh = sw.next()) {
    if (fresh)
      m.load(static_cast<const T*>(shift.data) + sw.b * shift.stride,
             static_cast<const T*>(scale.data) + sw.b * scale.stride, hidden);
    const float* xr = row_f32(xw.get(), hidden, buf.data());
    float mean, rstd;
    row_stats(xr, hidden, inv, eps, mean, rstd);
    modulate_row(xr, m, ow.get(), hidden, mean, rstd);
  }
}

template <typename T, typename Y, bool BIAS>
void gated_t(Rows x, BatchVec gate, Rows y, const Y* bias_in, Rows out, int64_t tokens, int64_t hidden, int64_t r0,
             int64_t r1) {
  // The sample's gate and the bias in fp32, converted once rather than per row.
  std::vector<float> gbuf(std::is_same_v<T, float> ? 0 : hidden);
  std::vector<float> bbuf(BIAS && !std::is_same_v<Y, float> ? hidden : 0);
  const float* bias = nullptr;
  if constexpr (BIAS) bias = row_f32(bias_in, hidden, bbuf.data());
  RowWalk<const T> xw(x, r0);
  RowWalk<const Y> yw(y, r0);
  RowWalk<T> ow(out, r0);
  SampleWalk sw(r0, tokens);
  const float* g = nullptr;
  bool fresh = true;
  for (int64_t r = r0; r < r1; ++r, xw.next(), yw.next(), ow.next(), fresh = sw.next()) {
    if (fresh) g = row_f32(static_cast<const T*>(gate.data) + sw.b * gate.stride, hidden, gbuf.data());
    const T* xr = xw.get();
    const Y* yr = yw.get();
    T* o = ow.get();
    int64_t i = 0;
    for (; i + kW <= hidden; i += kW) {
      Vf yv = load_f(yr + i);
      if constexpr (BIAS) yv = yv + Vf::loadu(bias + i);
      store_f(o + i, gate_residual(load_f(xr + i), Vf::loadu(g + i), yv));
    }
    for (; i < hidden; ++i) {
      float yv = to_f(yr[i]);
      if constexpr (BIAS) yv += bias[i];
      o[i] = from_f<T>(gate_residual(to_f(xr[i]), g[i], yv));
    }
  }
}

// The skip fusion's folded parameters (skipdit_kernels/ops/folding.py, the definition), rows [r0, r1)
// of the weight in one pass: folded = round_T(W * gamma), rowsum = sum of folded as stored (fp32),
// fbias = bias + W @ beta (fp32). gamma, beta, bias are fp32.
template <typename T>
void fold_t(const T* w, int64_t ld, const float* gamma, const float* beta, const float* bias, T* folded,
            float* rowsum, float* fbias, int64_t k, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* wr = w + r * ld;
    T* fr = folded + r * k;
    Vf rs(0.f), wb(0.f);
    int64_t i = 0;
    for (; i + kW <= k; i += kW) {
      const Vf wv = load_f(wr + i);
      store_f(fr + i, wv * Vf::loadu(gamma + i));
      rs = rs + load_f(fr + i);  // the rounded value, as the GEMM reads it
      wb = at::vec::fmadd(wv, Vf::loadu(beta + i), wb);
    }
    float rsum = hsum(rs), bsum = hsum(wb);
    for (; i < k; ++i) {
      const float wv = to_f(wr[i]);
      fr[i] = from_f<T>(wv * gamma[i]);
      rsum += to_f(fr[i]);
      bsum += wv * beta[i];
    }
    rowsum[r] = rsum;
    fbias[r] = bias[r] + bsum;
  }
}

template <typename T, typename A, bool BIAS, bool GELU>
void bias_act_t(Rows acc, const A* bias, Rows out, int64_t width, int64_t r0, int64_t r1) {
  RowWalk<const A> aw(acc, r0);
  RowWalk<T> ow(out, r0);
  for (int64_t r = r0; r < r1; ++r, aw.next(), ow.next()) {
    const A* a = aw.get();
    T* o = ow.get();
    int64_t i = 0;
    for (; i + kW <= width; i += kW) {
      Vf v = load_f(a + i);
      if constexpr (BIAS) v = v + load_f(bias + i);
      if constexpr (GELU) v = gelu_tanh(v);
      store_f(o + i, v);
    }
    for (; i < width; ++i) {
      float v = to_f(a[i]);
      if constexpr (BIAS) v += to_f(bias[i]);
      if constexpr (GELU) v = gelu_tanh(v);
      o[i] = from_f<T>(v);
    }
  }
}

template <typename T>
void pair_stats_t(Rows x, Rows skip, int64_t hidden, float eps, float* mean, float* rstd, int64_t r0, int64_t r1) {
  const float inv = 1.f / static_cast<float>(2 * hidden);
  RowWalk<const T> xw(x, r0), sw(skip, r0);
  for (int64_t r = r0; r < r1; ++r, xw.next(), sw.next()) {
    const T* xr = xw.get();
    const T* sr = sw.get();
    const float pivot = to_f(xr[0]);
    const float m =
        mean_from_shifted_sum(row_shifted_sum(xr, hidden, pivot) + row_shifted_sum(sr, hidden, pivot), pivot, inv);
    mean[r - r0] = m;
    rstd[r - r0] = rstd_from_m2(row_m2(xr, hidden, m) + row_m2(sr, hidden, m), inv, eps);
  }
}

template <typename T, typename A>
void folded_t(Rows acc, const float* mean, const float* rstd, int64_t r_base, const float* rowsum, const float* bias,
              Rows h, int64_t width, const BatchVec* shift, const BatchVec* scale, const Rows* mod, int64_t tokens,
              float eps, int64_t r0, int64_t r1) {
  const float inv = 1.f / static_cast<float>(width);
  const bool with_mod = mod != nullptr;
  SampleModulation m(with_mod ? width : 0);
  std::vector<float> buf(with_mod && !std::is_same_v<T, float> ? width : 0);
  RowWalk<const A> aw(acc, r0);
  RowWalk<T> hw(h, r0);
  RowWalk<T> mw(with_mod ? *mod : h, r0);
  SampleWalk sw(r0, tokens);
  bool fresh = true;
  for (int64_t r = r0; r < r1; ++r, aw.next(), hw.next(), mw.next(), fresh = sw.next()) {
    const A* a = aw.get();
    T* hr = hw.get();
    const float ms = mean[r - r_base], s = rstd[r - r_base];
    const Vf vm(ms), vs(s);
    int64_t i = 0;
    for (; i + kW <= width; i += kW)
      store_f(hr + i, folded_epilogue(load_f(a + i), vm, vs, load_f(rowsum + i), load_f(bias + i)));
    for (; i < width; ++i) hr[i] = from_f<T>(folded_epilogue(to_f(a[i]), ms, s, rowsum[i], bias[i]));
    if (with_mod) {
      // Statistics of h as stored (rounded to T), as the unfused chain sees it; the row is in L1.
      if (fresh)
        m.load(static_cast<const T*>(shift->data) + sw.b * shift->stride,
               static_cast<const T*>(scale->data) + sw.b * scale->stride, width);
      const float* hf = row_f32(static_cast<const T*>(hr), width, buf.data());
      float hm, hs;
      row_stats(hf, width, inv, eps, hm, hs);
      modulate_row(hf, m, mw.get(), width, hm, hs);
    }
  }
}

// ---- storage dispatch ---------------------------------------------------------------------------
#define SKIPDIT_DISPATCH_STORAGE(st, T, ...)      \
  switch (st) {                                   \
    case Storage::f32: {                          \
      using T = float;                            \
      __VA_ARGS__;                                \
      break;                                      \
    }                                             \
    case Storage::bf16: {                         \
      using T = c10::BFloat16;                    \
      __VA_ARGS__;                                \
      break;                                      \
    }                                             \
    case Storage::f16: {                          \
      using T = c10::Half;                        \
      __VA_ARGS__;                                \
      break;                                      \
    }                                             \
  }

void adaln(Storage st, Rows x, BatchVec shift, BatchVec scale, Rows out, int64_t tokens, int64_t hidden, float eps,
           int64_t r0, int64_t r1) {
  SKIPDIT_DISPATCH_STORAGE(st, T, adaln_t<T>(x, shift, scale, out, tokens, hidden, eps, r0, r1))
}

template <typename T, typename Y>
void gated_b(Rows x, BatchVec gate, Rows y, const void* bias, Rows out, int64_t tokens, int64_t hidden, int64_t r0,
             int64_t r1) {
  const Y* b = static_cast<const Y*>(bias);
  if (b) {
    gated_t<T, Y, true>(x, gate, y, b, out, tokens, hidden, r0, r1);
  } else {
    gated_t<T, Y, false>(x, gate, y, b, out, tokens, hidden, r0, r1);
  }
}

void gated(Storage st, Rows x, BatchVec gate, Storage y_st, Rows y, const void* bias, Rows out, int64_t tokens,
           int64_t hidden, int64_t r0, int64_t r1) {
  if (y_st == Storage::f32) {
    SKIPDIT_DISPATCH_STORAGE(st, T, gated_b<T, float>(x, gate, y, bias, out, tokens, hidden, r0, r1))
  } else {
    SKIPDIT_DISPATCH_STORAGE(st, T, gated_b<T, T>(x, gate, y, bias, out, tokens, hidden, r0, r1))
  }
}

template <typename T, typename A>
void bias_act_b(Rows acc, const void* bias, Rows out, int64_t width, bool gelu, int64_t r0, int64_t r1) {
  const A* b = static_cast<const A*>(bias);
  if (b && gelu) {
    bias_act_t<T, A, true, true>(acc, b, out, width, r0, r1);
  } else if (b) {
    bias_act_t<T, A, true, false>(acc, b, out, width, r0, r1);
  } else if (gelu) {
    bias_act_t<T, A, false, true>(acc, b, out, width, r0, r1);
  } else {
    bias_act_t<T, A, false, false>(acc, b, out, width, r0, r1);
  }
}

void bias_act(Storage st, Storage acc_st, Rows acc, const void* bias, Rows out, int64_t width, bool gelu, int64_t r0,
              int64_t r1) {
  if (acc_st == Storage::f32) {
    SKIPDIT_DISPATCH_STORAGE(st, T, bias_act_b<T, float>(acc, bias, out, width, gelu, r0, r1))
  } else {
    SKIPDIT_DISPATCH_STORAGE(st, T, bias_act_b<T, T>(acc, bias, out, width, gelu, r0, r1))
  }
}

void fold(Storage st, const void* w, int64_t ld, const float* gamma, const float* beta, const float* bias,
          void* folded, float* rowsum, float* fbias, int64_t k, int64_t r0, int64_t r1) {
  SKIPDIT_DISPATCH_STORAGE(st, T,
                           fold_t<T>(static_cast<const T*>(w), ld, gamma, beta, bias, static_cast<T*>(folded), rowsum,
                                     fbias, k, r0, r1))
}

void pair_stats(Storage st, Rows x, Rows skip, int64_t hidden, float eps, float* mean, float* rstd, int64_t r0,
                int64_t r1) {
  SKIPDIT_DISPATCH_STORAGE(st, T, pair_stats_t<T>(x, skip, hidden, eps, mean, rstd, r0, r1))
}

void folded(Storage st, Storage acc_st, Rows acc, const float* mean, const float* rstd, int64_t r_base,
            const float* rowsum, const float* bias, Rows h, int64_t width, const BatchVec* shift,
            const BatchVec* scale, const Rows* mod, int64_t tokens, float eps, int64_t r0, int64_t r1) {
  if (acc_st == Storage::f32) {
    SKIPDIT_DISPATCH_STORAGE(st, T,
                             folded_t<T, float>(acc, mean, rstd, r_base, rowsum, bias, h, width, shift, scale, mod,
                                                tokens, eps, r0, r1))
  } else {
    SKIPDIT_DISPATCH_STORAGE(st, T,
                             folded_t<T, T>(acc, mean, rstd, r_base, rowsum, bias, h, width, shift, scale, mod, tokens,
                                            eps, r0, r1))
  }
}

#undef SKIPDIT_DISPATCH_STORAGE

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace skipdit
