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
template <typename T>
inline void store_f(T* p, const Vf& v) {
  alignas(64) T buf[2 * kW];
  at::vec::convert_from_float<T>(v, v).store(buf);
  std::memcpy(p, buf, kW * sizeof(T));
}

inline float hsum(const Vf& v) {
  alignas(64) float buf[kW];
  v.store(buf);
  float s = 0.f;
  for (int64_t i = 0; i < kW; ++i) s += buf[i];
  return s;
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

// out[i] = LayerNorm(x)[i] * (1 + scale[i]) + shift[i] over one row.
template <typename T>
inline void modulate_row(const T* x, const T* shift, const T* scale, T* out, int64_t n, float mean, float rstd) {
  const Vf vm(mean), vr(rstd);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) store_f(out + i, modulate(normalize(load_f(x + i), vm, vr), load_f(shift + i), load_f(scale + i)));
  for (; i < n; ++i) out[i] = from_f<T>(modulate(normalize(to_f(x[i]), mean, rstd), to_f(shift[i]), to_f(scale[i])));
}

// ---- kernels ------------------------------------------------------------------------------------
template <typename T>
void adaln_t(Rows x, BatchVec shift, BatchVec scale, Rows out, int64_t tokens, int64_t hidden, float eps, int64_t r0,
             int64_t r1) {
  const float inv = 1.f / static_cast<float>(hidden);
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x.row<const T>(r);
    const int64_t b = r / tokens;
    const float pivot = to_f(xr[0]);
    const float mean = mean_from_shifted_sum(row_shifted_sum(xr, hidden, pivot), pivot, inv);
    const float rstd = rstd_from_m2(row_m2(xr, hidden, mean), inv, eps);
    modulate_row(xr, static_cast<const T*>(shift.data) + b * shift.stride,
                 static_cast<const T*>(scale.data) + b * scale.stride, out.row<T>(r), hidden, mean, rstd);
  }
}

template <typename T, typename Y, bool BIAS>
void gated_t(Rows x, BatchVec gate, Rows y, const Y* bias, Rows out, int64_t tokens, int64_t hidden, int64_t r0,
             int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x.row<const T>(r);
    const Y* yr = y.row<const Y>(r);
    T* o = out.row<T>(r);
    const T* g = static_cast<const T*>(gate.data) + (r / tokens) * gate.stride;
    int64_t i = 0;
    for (; i + kW <= hidden; i += kW) {
      Vf yv = load_f(yr + i);
      if constexpr (BIAS) yv = yv + load_f(bias + i);
      store_f(o + i, gate_residual(load_f(xr + i), load_f(g + i), yv));
    }
    for (; i < hidden; ++i) {
      float yv = to_f(yr[i]);
      if constexpr (BIAS) yv += to_f(bias[i]);
      o[i] = from_f<T>(gate_residual(to_f(xr[i]), to_f(g[i]), yv));
    }
  }
}

template <typename T, typename A, bool BIAS, bool GELU>
void bias_act_t(Rows acc, const A* bias, Rows out, int64_t width, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const A* a = acc.row<const A>(r);
    T* o = out.row<T>(r);
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
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x.row<const T>(r);
    const T* sr = skip.row<const T>(r);
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
  for (int64_t r = r0; r < r1; ++r) {
    const A* a = acc.row<const A>(r);
    T* hr = h.row<T>(r);
    const float m = mean[r - r_base], s = rstd[r - r_base];
    const Vf vm(m), vs(s);
    int64_t i = 0;
    for (; i + kW <= width; i += kW)
      store_f(hr + i, folded_epilogue(load_f(a + i), vm, vs, load_f(rowsum + i), load_f(bias + i)));
    for (; i < width; ++i) hr[i] = from_f<T>(folded_epilogue(to_f(a[i]), m, s, rowsum[i], bias[i]));
    if (mod != nullptr) {
      // Statistics of h as stored (rounded to T), as the unfused chain sees it; the row is in L1.
      const int64_t b = r / tokens;
      const float hp = to_f(hr[0]);
      const float hm = mean_from_shifted_sum(row_shifted_sum<T>(hr, width, hp), hp, inv);
      const float hs = rstd_from_m2(row_m2<T>(hr, width, hm), inv, eps);
      modulate_row<T>(hr, static_cast<const T*>(shift->data) + b * shift->stride,
                      static_cast<const T*>(scale->data) + b * scale->stride, mod->row<T>(r), width, hm, hs);
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
