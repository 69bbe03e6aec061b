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

// Per row j < R: the sum of (p[j][i] - pivot[j]), resp. of (p[j][i] - mean[j])^2. Four independent
// accumulators per row (the reductions are add-latency bound otherwise) and R rows per call, whose
// chains interleave; each row's summation order does not depend on R. The terms are computed from
// c - x (exactly -(x - c): the shifted sum subtracts them, the squares are equal), so that an x86
// subtract reads x straight from memory: one instruction, not a load and one.
template <int R, bool SUBTRACT, typename T, typename Term>
inline void rows_sum(const T* const* p, int64_t n, const float* centre, float* out, Term term) {
  const auto acc = [](auto a, auto t) { return SUBTRACT ? a - t : a + t; };
  Vf a[R][4], vc[R];
  for (int j = 0; j < R; ++j) {
    vc[j] = Vf(centre[j]);
    for (int u = 0; u < 4; ++u) a[j][u] = Vf(0.f);
  }
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW)
    for (int j = 0; j < R; ++j)
      for (int u = 0; u < 4; ++u) a[j][u] = acc(a[j][u], term(load_f(p[j] + i + u * kW), vc[j]));
  for (; i + kW <= n; i += kW)
    for (int j = 0; j < R; ++j) a[j][0] = acc(a[j][0], term(load_f(p[j] + i), vc[j]));
  for (int j = 0; j < R; ++j) {
    float s = hsum((a[j][0] + a[j][1]) + (a[j][2] + a[j][3]));
    for (int64_t k = i; k < n; ++k) s = acc(s, term(to_f(p[j][k]), centre[j]));
    out[j] = s;
  }
}

template <int R, typename T>
inline void rows_shifted_sum(const T* const* p, int64_t n, const float* pivot, float* out) {
  rows_sum<R, true>(p, n, pivot, out, [](auto x, auto c) { return shifted(c, x); });
}

template <int R, typename T>
inline void rows_m2(const T* const* p, int64_t n, const float* mean, float* out) {
  rows_sum<R, false>(p, n, mean, out, [](auto x, auto c) { return centred_square(c, x); });
}

template <typename T>
inline float row_shifted_sum(const T* p, int64_t n, float pivot) {
  float s;
  rows_shifted_sum<1>(&p, n, &pivot, &s);
  return s;
}

template <typename T>
inline float row_m2(const T* p, int64_t n, float mean) {
  float s;
  rows_m2<1>(&p, n, &mean, &s);
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

// Statistics (two passes, shared arithmetic) of R rows held in fp32.
template <int R>
inline void rows_stats(const float* const* x, int64_t n, float inv, float eps, float* mean, float* rstd) {
  float pivot[R], sum[R], m2[R];
  for (int j = 0; j < R; ++j) pivot[j] = x[j][0];
  rows_shifted_sum<R>(x, n, pivot, sum);
  for (int j = 0; j < R; ++j) mean[j] = mean_from_shifted_sum(sum[j], pivot[j], inv);
  rows_m2<R>(x, n, mean, m2);
  for (int j = 0; j < R; ++j) rstd[j] = rstd_from_m2(m2[j], inv, eps);
}

inline void row_stats(const float* x, int64_t n, float inv, float eps, float& mean, float& rstd) {
  rows_stats<1>(&x, n, inv, eps, &mean, &rstd);
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

// out[i] = LayerNorm(x)[i] * (1 + scale[i]) + shift[i] over one fp32 row. Restrict pointers: without
// them every store through `out` makes the compiler reload the modulation's pointers.
template <typename T>
inline void modulate_row(const float* __restrict x, const float* __restrict sh, const float* __restrict f,
                         T* __restrict out, int64_t n, float mean, float rstd) {
  // normalize(x, mean, rstd) as normalize(mean, x, -rstd), the same value (both factors negated
  // exactly), with x read by the subtract itself
  const Vf vm(mean), vnr(-rstd);
  int64_t i = 0;
  for (; i + kW <= n; i += kW)
    store_f(out + i, modulate_by_factor(normalize(vm, Vf::loadu(x + i), vnr), Vf::loadu(sh + i), Vf::loadu(f + i)));
  for (; i < n; ++i) out[i] = from_f<T>(modulate_by_factor(normalize(x[i], mean, rstd), sh[i], f[i]));
}

// ---- kernels ------------------------------------------------------------------------------------
template <typename T>
void adaln_t(Rows x, BatchVec shift, BatchVec scale, Rows out, int64_t tokens, int64_t hidden, float eps, int64_t r0,
             int64_t r1) {
  const float inv = 1.f / static_cast<float>(hidden);
  SampleModulation m(hidden);
  std::vector<float> buf(std::is_same_v<T, float> ? 0 : 2 * hidden);
  RowWalk<const T> xw(x, r0);
  RowWalk<T> ow(out, r0);
  SampleWalk sw(r0, tokens);
  bool fresh = true;
  auto modulate_next = [&](const float* xr, float mean, float rstd) {
    if (fresh)
      m.load(static_cast<const T*>(shift.data) + sw.b * shift.stride,
             static_cast<const T*>(scale.data) + sw.b * scale.stride, hidden);
    modulate_row(xr, m.shift.data(), m.factor.data(), ow.get(), hidden, mean, rstd);
    ow.next();
    fresh = sw.next();
  };
  // Two rows at a time: the latency chains of their statistics overlap.
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) {
    const float* xr[2];
    xr[0] = row_f32(xw.get(), hidden, buf.data());
    xw.next();
    xr[1] = row_f32(xw.get(), hidden, buf.data() + (buf.empty() ? 0 : hidden));
    xw.next();
    float mean[2], rstd[2];
    rows_stats<2>(xr, hidden, inv, eps, mean, rstd);
    modulate_next(xr[0], mean[0], rstd[0]);
    modulate_next(xr[1], mean[1], rstd[1]);
  }
  if (r < r1) {
    const float* xr = row_f32(xw.get(), hidden, buf.data());
    float mean, rstd;
    row_stats(xr, hidden, inv, eps, mean, rstd);
    modulate_next(xr, mean, rstd);
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

// The fp32 skip fusion's GEMM operand and its statistics in one pass over the inputs (what
// skipdit/folded.h's shifted_pair and pair_stats_t compute in five): per row, p = mean of [x | skip]
// (fp32, need not be exact), z = [x - p | skip - p] into row r of z (leading dimension ldz), then
// the statistics of z from cache.
template <typename T>
void shift_pair_t(Rows x, Rows skip, int64_t hidden, float eps, float* z, int64_t ldz, float* mean, float* rstd,
                  int64_t r0, int64_t r1) {
  const float inv = 1.f / static_cast<float>(2 * hidden);
  RowWalk<const T> xw(x, r0), sw(skip, r0);
  for (int64_t r = r0; r < r1; ++r, xw.next(), sw.next()) {
    const T* halves[2] = {xw.get(), sw.get()};
    const float p = (row_shifted_sum(halves[0], hidden, 0.f) + row_shifted_sum(halves[1], hidden, 0.f)) * inv;
    float* zr = z + r * ldz;
    const Vf vp(p);
    for (int h = 0; h < 2; ++h) {
      const T* in = halves[h];
      float* out = zr + h * hidden;
      int64_t i = 0;
      for (; i + kW <= hidden; i += kW) store_f(out + i, load_f(in + i) - vp);
      for (; i < hidden; ++i) out[i] = to_f(in[i]) - p;
    }
    const float pivot = zr[0];
    const float m = mean_from_shifted_sum(row_shifted_sum(zr, 2 * hidden, pivot), pivot, inv);
    mean[r - r0] = m;
    rstd[r - r0] = rstd_from_m2(row_m2(zr, 2 * hidden, m), inv, eps);
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
      modulate_row(hf, m.shift.data(), m.factor.data(), mw.get(), width, hm, hs);
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

void shift_pair(Storage st, Rows x, Rows skip, int64_t hidden, float eps, float* z, int64_t ldz, float* mean,
                float* rstd, int64_t r0, int64_t r1) {
  SKIPDIT_DISPATCH_STORAGE(st, T, shift_pair_t<T>(x, skip, hidden, eps, z, ldz, mean, rstd, r0, r1))
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
