// CUDA driver: a block per row, 128-bit loads where rows allow them, warp-shuffle + shared-memory
// reductions, any hidden size. The arithmetic is skipdit/arith.h, the same functions the CPU driver
// runs (and the CPU tests check); only indexing and launch are specific to this file. GEMMs are
// cuBLAS through at::addmm / at::mm (only c10/cuda headers here: no cuBLAS/cuSPARSE headers needed). Compile-checked in CI; run by the `gpu` tests on a GPU.
#include <skipdit/arith.h>
#include <skipdit/folded.h>
#include <skipdit/ops.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

namespace skipdit {
namespace cuda {
namespace {

using namespace skipdit::arith;
constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float to_f(T v) {
  return static_cast<float>(v);
}
template <typename T>
__device__ __forceinline__ T from_f(float v) {
  return static_cast<T>(v);
}

// Rows of a (batch, tokens, width) tensor with unit stride along width.
struct Rows {
  char* data;
  int64_t tokens, s_outer, s_inner;  // in elements
  template <typename T>
  __device__ __forceinline__ T* row(int64_t r) const {
    return reinterpret_cast<T*>(data) + (r / tokens) * s_outer + (r % tokens) * s_inner;
  }
};

// 16-byte packs: width and all row starts multiples of kPack elements -> vectorised loads.
template <typename T>
struct alignas(16) Pack {
  static constexpr int n = 16 / sizeof(T);
  T v[16 / sizeof(T)];
};

__device__ __forceinline__ float block_sum(float v, float* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = (blockDim.x + 31) / 32;
  __syncthreads();  // smem reuse across calls
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = threadIdx.x < nwarps ? smem[threadIdx.x] : 0.f;
  if (warp == 0) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) smem[32] = v;
  }
  __syncthreads();
  return smem[32];
}

// sum over the row of f(value), vectorised when VEC.
template <bool VEC, typename T, typename F>
__device__ __forceinline__ float row_reduce(const T* p, int64_t n, F f) {
  float s = 0.f;
  if constexpr (VEC) {
    using P = Pack<T>;
    const P* pp = reinterpret_cast<const P*>(p);
    for (int64_t i = threadIdx.x; i < n / P::n; i += blockDim.x) {
      P pk = pp[i];
#pragma unroll
      for (int j = 0; j < P::n; ++j) s += f(to_f(pk.v[j]));
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += f(to_f(p[i]));
  }
  return s;
}

// out[i] = g(i, in[i]) over a row.
template <bool VEC, typename T, typename G>
__device__ __forceinline__ void row_map(const T* in, T* out, int64_t n, G g) {
  if constexpr (VEC) {
    using P = Pack<T>;
    const P* ip = reinterpret_cast<const P*>(in);
    P* op = reinterpret_cast<P*>(out);
    for (int64_t i = threadIdx.x; i < n / P::n; i += blockDim.x) {
      P pk = ip[i], o;
#pragma unroll
      for (int j = 0; j < P::n; ++j) o.v[j] = from_f<T>(g(i * P::n + j, to_f(pk.v[j])));
      op[i] = o;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = from_f<T>(g(i, to_f(in[i])));
  }
}

// mean and rstd of a row (optionally of [a | b]), pivot-shifted two-pass, as on the CPU.
template <bool VEC, typename T>
__device__ __forceinline__ void row_stats(const T* a, const T* b, int64_t n, float eps, float* smem, float& mean,
                                          float& rstd) {
  const float pivot = to_f(a[0]);
  const int64_t count = b ? 2 * n : n;
  const float inv = 1.f / static_cast<float>(count);
  auto sh = [=](float v) { return shifted(v, pivot); };
  float s = row_reduce<VEC>(a, n, sh);
  if (b) s += row_reduce<VEC>(b, n, sh);
  mean = mean_from_shifted_sum(block_sum(s, smem), pivot, inv);
  const float m = mean;
  auto sq = [=](float v) { return centred_square(v, m); };
  float q = row_reduce<VEC>(a, n, sq);
  if (b) q += row_reduce<VEC>(b, n, sq);
  rstd = rstd_from_m2(block_sum(q, smem), inv, eps);
}

template <bool VEC, typename T>
__global__ void adaln_kernel(Rows x, const T* shift, int64_t s_shift, const T* scale, int64_t s_scale, Rows out,
                             int64_t width, float eps) {
  __shared__ float smem[33];
  const int64_t r = blockIdx.x, b = r / x.tokens;
  const T* xr = x.row<const T>(r);
  float mean, rstd;
  row_stats<VEC, T>(xr, nullptr, width, eps, smem, mean, rstd);
  const T* sh = shift + b * s_shift;
  const T* sc = scale + b * s_scale;
  row_map<VEC>(xr, out.row<T>(r), width,
               [=](int64_t i, float v) { return modulate(normalize(v, mean, rstd), to_f(sh[i]), to_f(sc[i])); });
}

template <typename T, typename Y>
__global__ void gated_kernel(Rows x, const T* gate, int64_t s_gate, Rows y, Rows out, int64_t width) {
  const int64_t r = blockIdx.x;
  const T* xr = x.row<const T>(r);
  const Y* yr = y.row<const Y>(r);
  const T* g = gate + (r / x.tokens) * s_gate;
  T* o = out.row<T>(r);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
    o[i] = from_f<T>(gate_residual(to_f(xr[i]), to_f(g[i]), to_f(yr[i])));
}

template <typename T, typename A>
__global__ void gelu_kernel(const A* acc, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = from_f<T>(gelu_tanh(to_f(acc[i])));
}

// h = folded epilogue of (acc [+ acc2]) with the statistics of the row pair (x, skip) stored as S (the
// inputs, or fp32 [x | skip] - p when the GEMM read that); then optionally mod = adaLN(h) with h's
// stored values.
template <bool VEC, typename S, typename T, typename A>
__global__ void folded_kernel(Rows x, Rows skip, int64_t hidden, const A* acc, const A* acc2, const float* rowsum,
                              const float* bias, T* h, int64_t width, const T* shift, int64_t s_shift, const T* scale,
                              int64_t s_scale, T* mod, float eps) {
  __shared__ float smem[33];
  const int64_t r = blockIdx.x;
  float mean, rstd;
  row_stats<VEC, S>(x.row<const S>(r), skip.row<const S>(r), hidden, eps, smem, mean, rstd);
  const A* a = acc + r * width;
  const A* a2 = acc2 ? acc2 + r * width : nullptr;
  T* hr = h + r * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    float v = to_f(a[i]);
    if (a2) v += to_f(a2[i]);
    hr[i] = from_f<T>(folded_epilogue(v, mean, rstd, rowsum[i], bias[i]));
  }
  if (mod == nullptr) return;
  __syncthreads();  // h's row is complete (and visible to the block)
  float hm, hs;
  row_stats<false, T>(hr, nullptr, width, eps, smem, hm, hs);
  const int64_t b = r / x.tokens;
  const T* sh = shift + b * s_shift;
  const T* sc = scale + b * s_scale;
  T* mr = mod + r * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
    mr[i] = from_f<T>(modulate(normalize(to_f(hr[i]), hm, hs), to_f(sh[i]), to_f(sc[i])));
}

// ---- host side -----------------------------------------------------------------------------------
Tensor unit_last(const Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

Rows rows3(const Tensor& t) {
  return Rows{static_cast<char*>(const_cast<void*>(t.data_ptr())), std::max<int64_t>(t.size(1), 1), t.stride(0),
              t.stride(1)};
}

// 128-bit access is possible when every row start is 16-byte aligned and the width fills packs.
bool vec_ok(std::initializer_list<const Tensor*> ts, int64_t width) {
  for (const Tensor* t : ts) {
    const int64_t pack = 16 / t->element_size();
    if (width % pack || reinterpret_cast<uintptr_t>(t->data_ptr()) % 16) return false;
    for (int64_t d = 0; d + 1 < t->dim(); ++d)
      if (t->stride(d) % pack) return false;
  }
  return true;
}

void check_cuda(const char* op, const Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": expected CUDA tensors, got ", t.device());
}

int threads_for(int64_t width) {
  int t = 32;
  while (t < kThreads && t < width) t *= 2;
  return t;
}

int64_t gelu_blocks(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, 65535LL * 8); }

#define SKIPDIT_CUDA_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()

}  // namespace

Tensor adaln_modulate(const Tensor& x_in, const Tensor& shift_in, const Tensor& scale_in, double eps) {
  check_adaln("skipdit::adaln_modulate", x_in, shift_in, scale_in);
  check_cuda("skipdit::adaln_modulate", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = unit_last(x_in), shift = unit_last(shift_in), scale = unit_last(scale_in);
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  Tensor out = at::empty({B, N, D}, x.options());
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool vec = vec_ok({&x, &out}, D);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "skipdit_adaln", [&] {
    auto launch = [&](auto vec_tag) {
      constexpr bool V = decltype(vec_tag)::value;
      adaln_kernel<V, scalar_t><<<B * N, threads_for(V ? D / Pack<scalar_t>::n : D), 0, stream>>>(
          rows3(x), shift.data_ptr<scalar_t>(), shift.stride(0), scale.data_ptr<scalar_t>(), scale.stride(0),
          rows3(out), D, static_cast<float>(eps));
    };
    if (vec) launch(std::true_type{}); else launch(std::false_type{});
  });
  SKIPDIT_CUDA_CHECK_LAUNCH();
  return out;
}

namespace {
template <typename Y>
void launch_gated(const Tensor& x, const Tensor& gate, const Tensor& y, Rows yrows, Tensor& out) {
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "skipdit_gated", [&] {
    using YT = std::conditional_t<std::is_same_v<Y, void>, scalar_t, float>;
    gated_kernel<scalar_t, YT><<<B * N, threads_for(D), 0, stream>>>(rows3(x), gate.data_ptr<scalar_t>(),
                                                                     gate.stride(0), yrows, rows3(out), D);
  });
  SKIPDIT_CUDA_CHECK_LAUNCH();
}
}  // namespace

Tensor gated_residual(const Tensor& x_in, const Tensor& gate_in, const Tensor& y_in) {
  check_gated(x_in, gate_in, y_in);
  check_cuda("skipdit::gated_residual", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = unit_last(x_in), gate = unit_last(gate_in), y = unit_last(y_in);
  Tensor out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;
  launch_gated<void>(x, gate, y, rows3(y), out);
  return out;
}

namespace {
Tensor linear_acc(const Tensor& h2, const Tensor& weight, const std::optional<Tensor>& bias) {
  const Tensor a = h2.scalar_type() == weight.scalar_type() ? h2 : h2.to(weight.scalar_type());
  if (bias.has_value() && bias->defined()) return at::addmm(*bias, a, weight.t());
  return at::mm(a, weight.t());
}
}  // namespace

Tensor linear_gelu(const Tensor& h_in, const Tensor& weight, const std::optional<Tensor>& bias) {
  check_linear("skipdit::linear_gelu", h_in, weight, bias);
  check_cuda("skipdit::linear_gelu", h_in);
  const c10::cuda::CUDAGuard guard(h_in.device());
  const int64_t K = h_in.size(-1), Nout = weight.size(0);
  Tensor acc = linear_acc(h_in.reshape({-1, K}), weight, bias);
  auto sizes = h_in.sizes().vec();
  sizes.back() = Nout;
  // GELU in place on the GEMM's output when the dtypes agree (one pass, no second buffer).
  Tensor out = acc.scalar_type() == h_in.scalar_type() ? acc : at::empty(acc.sizes(), h_in.options());
  const int64_t n = acc.numel();
  if (n == 0) return out.view(sizes);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h_in.scalar_type(), "skipdit_gelu", [&] {
    if (acc.scalar_type() == at::kFloat) {
      gelu_kernel<scalar_t, float>
          <<<gelu_blocks(n), kThreads, 0, stream>>>(acc.data_ptr<float>(), out.data_ptr<scalar_t>(), n);
    } else {
      gelu_kernel<scalar_t, scalar_t>
          <<<gelu_blocks(n), kThreads, 0, stream>>>(acc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n);
    }
  });
  SKIPDIT_CUDA_CHECK_LAUNCH();
  return out.view(sizes);
}

Tensor linear(const Tensor& h_in, const Tensor& weight, const std::optional<Tensor>& bias) {
  check_linear("skipdit::linear", h_in, weight, bias);
  check_cuda("skipdit::linear", h_in);
  const c10::cuda::CUDAGuard guard(h_in.device());
  auto sizes = h_in.sizes().vec();
  sizes.back() = weight.size(0);
  return linear_acc(h_in.reshape({-1, h_in.size(-1)}), weight, bias).to(h_in.scalar_type()).view(sizes);
}

Tensor linear_gated_residual(const Tensor& x_in, const Tensor& h_in, const Tensor& weight,
                             const std::optional<Tensor>& bias, const Tensor& gate_in) {
  check_linear_gated(x_in, h_in, weight, bias, gate_in);
  check_cuda("skipdit::linear_gated_residual", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Tensor x = unit_last(x_in), gate = unit_last(gate_in);
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  Tensor acc = linear_acc(h_in.reshape({B * N, h_in.size(2)}), weight, bias).view({B, N, D});
  // The residual pass rewrites the GEMM output in place when the dtypes agree.
  Tensor out = acc.scalar_type() == x.scalar_type() ? acc : at::empty({B, N, D}, x.options());
  if (out.numel() == 0) return out;
  if (acc.scalar_type() == at::kFloat && x.scalar_type() != at::kFloat) {
    launch_gated<float>(x, gate, acc, rows3(acc), out);
  } else {
    launch_gated<void>(x, gate, acc, rows3(acc), out);
  }
  return out;
}

namespace {
void skip_fuse_cuda(const Tensor& x_in, const Tensor& skip_in, const Tensor& weight, const Tensor& rowsum_in,
                    const Tensor& bias_in, const Tensor* shift_in, const Tensor* scale_in, double eps, Tensor& h,
                    Tensor* mod) {
  const Tensor x = unit_last(x_in), skip = unit_last(skip_in);
  const Tensor rowsum = rowsum_in.contiguous(), bias = bias_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), Dout = weight.size(0), M = B * N;
  if (M == 0 || Dout == 0) return;
  const auto compute = weight.scalar_type();
  const Tensor x2 = x.reshape({M, D}), s2 = skip.reshape({M, D});
  // The accumulator stays fp32 (acc - mean * rowsum cancels). fp32 (and TF32) GEMMs read
  // [x | skip] - p in one GEMM (skipdit/folded.h; ops.folding.skip_fuse_folded_torch says why) and the statistics come from the same rows;
  // half-precision GEMMs read x and skip and write fp32 outputs (mm.dtype) that the epilogue adds.
  const bool shifted = compute == at::kFloat;
  Tensor acc, acc2, stats_x = x, stats_skip = skip;
  if (shifted) {
    const Tensor zs = shifted_pair(x2, s2);
    acc = at::mm(zs, weight.t());
    const Tensor zs3 = zs.view({B, N, 2 * D});
    stats_x = zs3.narrow(2, 0, D);
    stats_skip = zs3.narrow(2, D, D);
  } else {
    acc = at::mm(x2, weight.narrow(1, 0, D).t(), at::kFloat);
    acc2 = at::mm(s2, weight.narrow(1, D, D).t(), at::kFloat);
  }
  Tensor shift, scale;
  if (mod) {
    shift = unit_last(*shift_in);
    scale = unit_last(*scale_in);
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool vec = vec_ok({&stats_x, &stats_skip}, D);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "skipdit_skip_fuse", [&] {
    auto launch = [&](auto vec_tag, auto stats_tag) {
      constexpr bool V = decltype(vec_tag)::value;
      using S = std::conditional_t<decltype(stats_tag)::value, float, scalar_t>;
      folded_kernel<V, S, scalar_t, float><<<M, threads_for(std::max(Dout, V ? D / Pack<S>::n : D)), 0, stream>>>(
          rows3(stats_x), rows3(stats_skip), D, acc.data_ptr<float>(), acc2.defined() ? acc2.data_ptr<float>() : nullptr,
          rowsum.data_ptr<float>(), bias.data_ptr<float>(), h.data_ptr<scalar_t>(), Dout,
          mod ? shift.data_ptr<scalar_t>() : nullptr, mod ? shift.stride(0) : 0,
          mod ? scale.data_ptr<scalar_t>() : nullptr, mod ? scale.stride(0) : 0,
          mod ? mod->data_ptr<scalar_t>() : nullptr, static_cast<float>(eps));
    };
    auto launch_vec = [&](auto stats_tag) {
      if (vec) launch(std::true_type{}, stats_tag); else launch(std::false_type{}, stats_tag);
    };
    if (shifted) launch_vec(std::true_type{}); else launch_vec(std::false_type{});
  });
  SKIPDIT_CUDA_CHECK_LAUNCH();
}
}  // namespace

Tensor skip_fuse_folded(const Tensor& x, const Tensor& skip, const Tensor& weight, const Tensor& rowsum,
                        const Tensor& bias, double eps) {
  check_skip_fuse("skipdit::skip_fuse_folded", x, skip, weight, rowsum, bias);
  check_cuda("skipdit::skip_fuse_folded", x);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor h = at::empty({x.size(0), x.size(1), weight.size(0)}, x.options());
  skip_fuse_cuda(x, skip, weight, rowsum, bias, nullptr, nullptr, eps, h, nullptr);
  return h;
}

std::tuple<Tensor, Tensor> skip_fuse_adaln_folded(const Tensor& x, const Tensor& skip, const Tensor& weight,
                                                  const Tensor& rowsum, const Tensor& bias, const Tensor& shift,
                                                  const Tensor& scale, double eps) {
  const char* op = "skipdit::skip_fuse_adaln_folded";
  check_skip_fuse(op, x, skip, weight, rowsum, bias);
  check_adaln(op, x, shift, scale);
  check_cuda(op, x);
  TORCH_CHECK(weight.size(0) == x.size(2), op, ": weight must project back to hidden ", x.size(2), ", got ",
              weight.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor h = at::empty(x.sizes(), x.options());
  Tensor mod = at::empty(x.sizes(), x.options());
  skip_fuse_cuda(x, skip, weight, rowsum, bias, &shift, &scale, eps, h, &mod);
  return {h, mod};
}

}  // namespace cuda
}  // namespace skipdit

TORCH_LIBRARY_IMPL(skipdit, CUDA, m) {
  m.impl("adaln_modulate", &skipdit::cuda::adaln_modulate);
  m.impl("gated_residual", &skipdit::cuda::gated_residual);
  m.impl("linear_gated_residual", &skipdit::cuda::linear_gated_residual);
  m.impl("linear_gelu", &skipdit::cuda::linear_gelu);
  m.impl("linear", &skipdit::cuda::linear);
  m.impl("skip_fuse_folded", &skipdit::cuda::skip_fuse_folded);
  m.impl("skip_fuse_adaln_folded", &skipdit::cuda::skip_fuse_adaln_folded);
}
