// CPU driver: validates, lays out rows, runs the vendor GEMM (oneDNN or torch's at::mm, see
// gemm_nt) and the row kernels of the capability picked at run time, in parallel over rows.
//
// GEMM ops run either as one GEMM over all rows followed by a parallel epilogue pass (default), or,
// with SKIPDIT_CPU_GEMM_ROWS=n > 0, as row blocks of n rows spread over the threads, each block's
// epilogue applied while its output is still in cache (measured in bench/kernels/bench_native.py).
#include <skipdit/ops.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "kernels.h"

namespace skipdit {

namespace {

bool cpu_has(const char* feature) {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  if (!std::strcmp(feature, "avx2"))
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!std::strcmp(feature, "avx512"))
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (!std::strcmp(feature, "bf16"))
    return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#endif
  (void)feature;
  return false;
}

bool x86_not_made_by_intel() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  return !__builtin_cpu_is("intel");
#else
  return false;
#endif
}

std::string lowercase_env(const char* var) {
  const char* v = std::getenv(var);
  std::string s(v != nullptr ? v : "");
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string requested_capability() {
  for (const char* var : {"SKIPDIT_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY"}) {
    std::string s = lowercase_env(var);
    if (!s.empty()) return s;
  }
  return "";
}

}  // namespace

namespace cpu {
namespace {

// The kernels for the best instruction set this CPU has, capped by SKIPDIT_CPU_CAPABILITY (or
// ATen's ATEN_CPU_CAPABILITY): default | avx2 | avx512.
const KernelTable& table() {
  static const KernelTable* t = [] {
    const std::string want = requested_capability();
    const bool allow512 = want.empty() || want.rfind("avx512", 0) == 0;
    const bool allow2 = allow512 || want == "avx2";
    if (allow512 && cpu_has("avx512")) return &table_avx512();
    if (allow2 && cpu_has("avx2")) return &table_avx2();
    return &table_default();
  }();
  return *t;
}

// fp32 GEMMs. torch's at::mm runs MKL's sgemm, which on x86 CPUs not made by Intel takes a code path
// about half as fast as oneDNN's JIT kernels (AMD EPYC with AVX-512: oneDNN 1.8-2.3x at the demo's,
// DiT-B/2's and DiT-XL/2's shapes, both at one thread; bench/results/gemm-*.md). So fp32 GEMMs of at
// least kOnednnMinFlops go to oneDNN through torch's own mkldnn::_linear_pointwise op where torch was
// built with it, on x86 CPUs not made by Intel (unmeasured on Intel, where MKL is its vendor's own
// library, and on other architectures). SKIPDIT_CPU_FP32_GEMM=onednn|torch overrides;
// torch.backends.mkldnn.enabled = False is respected.
constexpr int64_t kOnednnMinFlops = int64_t{1} << 21;  // below, oneDNN's per-call setup costs more

const c10::OperatorHandle* onednn_linear_op() {
  static const std::optional<c10::OperatorHandle> op = [] {
    auto found = c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
    // The boxed call below passes (X, W, B, attr, scalars, algorithm): use it only with that schema.
    if (found && found->hasSchema() && found->schema().arguments().size() == 6 &&
        found->schema().arguments()[3].name() == "attr")
      return found;
    return std::optional<c10::OperatorHandle>();
  }();
  return op ? &*op : nullptr;
}

bool fp32_gemm_on_onednn() {
  static const bool wanted = [] {
    const std::string s = lowercase_env("SKIPDIT_CPU_FP32_GEMM");
    if (s == "torch") return false;
    if (onednn_linear_op() == nullptr) return false;
    return s == "onednn" || x86_not_made_by_intel();
  }();
  return wanted && at::globalContext().userEnabledMkldnn();
}

// a (M, K) @ w^T (+ bias) on oneDNN, when fp32_gemm_on_onednn() wants this GEMM; else nothing.
std::optional<Tensor> onednn_linear(const Tensor& a, const Tensor& w, const Tensor& bias) {
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  if (a.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat || 2 * M * K * N < kOnednnMinFlops ||
      (bias.defined() && bias.scalar_type() != at::kFloat) || !fp32_gemm_on_onednn())
    return std::nullopt;
  torch::jit::Stack stack{a.contiguous(), w.contiguous(), bias.defined() ? c10::IValue(bias.contiguous()) : c10::IValue(),
                          c10::IValue(std::string("none")), c10::IValue(c10::List<std::optional<c10::Scalar>>()),
                          c10::IValue()};
  onednn_linear_op()->callBoxed(&stack);
  return stack[0].toTensor();
}

// a (M, K) @ w^T, w (N, K): into `out` (M, N) when torch's GEMM runs, else a new tensor.
Tensor gemm_nt(const Tensor& a, const Tensor& w, const Tensor& out) {
  if (auto y = onednn_linear(a, w, Tensor())) return *y;
  if (!out.defined()) return at::mm(a, w.t());
  at::mm_out(const_cast<Tensor&>(out), a, w.t());
  return out;
}

int64_t gemm_block_rows() {
  static const int64_t n = [] {
    const char* v = std::getenv("SKIPDIT_CPU_GEMM_ROWS");
    return v ? std::max<int64_t>(0, std::atoll(v)) : int64_t{0};
  }();
  return n;
}

Storage storage_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return Storage::f32;
    case at::kBFloat16:
      return Storage::bf16;
    case at::kHalf:
      return Storage::f16;
    default:
      TORCH_CHECK(false, "skipdit: unsupported dtype ", t.scalar_type());
  }
}

Tensor unit_last(const Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// A (batch, tokens, hidden) tensor with unit stride along hidden.
Rows rows3(const Tensor& t) {
  return Rows{const_cast<void*>(t.data_ptr()), std::max<int64_t>(t.size(1), 1), t.stride(0), t.stride(1), 0};
}
// A (rows, width) matrix with unit stride along width whose first row is row `first`.
Rows rows2(const Tensor& t, int64_t first) {
  return Rows{const_cast<void*>(t.data_ptr()), std::numeric_limits<int64_t>::max(), 0, t.stride(0), first};
}
BatchVec bvec(const Tensor& t) { return BatchVec{t.data_ptr(), t.stride(0)}; }

int64_t grain_for(int64_t width) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(width, 1)); }

void check_cpu(const char* op, const Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", t.device());
}

// GEMM + epilogue, returning the (M, width) output (options `out_opts`). gemm(target, r0, n) returns
// rows [r0, r0 + n) of the GEMM, written into `target` when one is given and it can (see gemm_nt);
// epi(r0, r1, acc_rows, out_rows, in_place) turns them into the output's rows, in_place telling
// whether they already are the output. By default one GEMM runs over all rows and, when its dtype is
// the output's, its result (a new tensor on either GEMM path) becomes the output, rewritten in place
// by a parallel epilogue: no separate output to allocate and fault in. With SKIPDIT_CPU_GEMM_ROWS=n,
// blocks of n rows run over the threads, each block's epilogue applied while it is still in cache.
template <typename Gemm, typename Epi>
Tensor gemm_rows(int64_t M, int64_t width, at::ScalarType compute, const at::TensorOptions& out_opts, Gemm gemm, Epi epi) {
  const bool same_dtype = compute == out_opts.dtype().toScalarType();
  if (M == 0 || width == 0) return at::empty({M, width}, out_opts);
  const int64_t block = gemm_block_rows();
  if (block <= 0 || block >= M) {
    const Tensor acc = gemm(Tensor(), 0, M);
    const Tensor out = same_dtype ? acc : at::empty({M, width}, out_opts);
    at::parallel_for(0, M, grain_for(width), [&](int64_t r0, int64_t r1) {
      epi(r0, r1, rows2(acc, 0), rows2(out, 0), same_dtype);
    });
    return out;
  }
  const Tensor out = at::empty({M, width}, out_opts);
  const int64_t nblocks = (M + block - 1) / block;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * block, n = std::min(block, M - r0);
      const Tensor target = same_dtype ? out.narrow(0, r0, n) : Tensor();
      const Tensor acc = gemm(target, r0, n);
      epi(r0, r0 + n, rows2(acc, r0), rows2(out, 0), target.defined() && acc.data_ptr() == target.data_ptr());
    }
  });
  return out;
}

Tensor as_compute(const Tensor& a, at::ScalarType compute) { return a.scalar_type() == compute ? a : a.to(compute); }

// Bias pointer for an epilogue (the GEMMs run without bias; the epilogue adds it in its pass).
const void* bias_ptr(const std::optional<Tensor>& bias, Tensor& keep) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  keep = bias->contiguous();
  return keep.data_ptr();
}

}  // namespace

Tensor adaln_modulate(const Tensor& x_in, const Tensor& shift_in, const Tensor& scale_in, double eps) {
  check_adaln("skipdit::adaln_modulate", x_in, shift_in, scale_in);
  check_cpu("skipdit::adaln_modulate", x_in);
  const Tensor x = unit_last(x_in), shift = unit_last(shift_in), scale = unit_last(scale_in);
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  Tensor out = at::empty({B, N, D}, x.options());
  if (out.numel() == 0) return out;
  const auto& k = table();
  const Storage st = storage_of(x);
  at::parallel_for(0, B * N, grain_for(D), [&](int64_t r0, int64_t r1) {
    k.adaln(st, rows3(x), bvec(shift), bvec(scale), rows3(out), N, D, static_cast<float>(eps), r0, r1);
  });
  return out;
}

Tensor gated_residual(const Tensor& x_in, const Tensor& gate_in, const Tensor& y_in) {
  check_gated(x_in, gate_in, y_in);
  check_cpu("skipdit::gated_residual", x_in);
  const Tensor x = unit_last(x_in), gate = unit_last(gate_in), y = unit_last(y_in);
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  Tensor out = at::empty({B, N, D}, x.options());
  if (out.numel() == 0) return out;
  const auto& k = table();
  const Storage st = storage_of(x);
  at::parallel_for(0, B * N, grain_for(D), [&](int64_t r0, int64_t r1) {
    k.gated(st, rows3(x), bvec(gate), st, rows3(y), nullptr, rows3(out), N, D, r0, r1);
  });
  return out;
}

namespace {
// h @ weight^T (+ bias), optionally through tanh-GELU, with the bias (and GELU) in the epilogue pass.
Tensor linear_act(const char* op, const Tensor& h_in, const Tensor& weight, const std::optional<Tensor>& bias,
                  bool gelu) {
  check_linear(op, h_in, weight, bias);
  check_cpu(op, h_in);
  const int64_t K = h_in.size(-1), Nout = weight.size(0);
  const Tensor h = h_in.reshape({-1, K});
  const int64_t M = h.size(0);
  auto out_sizes = h_in.sizes().vec();
  out_sizes.back() = Nout;
  const auto compute = weight.scalar_type();
  if (!gelu && compute == h_in.scalar_type()) {  // nothing to fuse but the bias, which oneDNN adds itself
    if (auto y = onednn_linear(h, weight, bias.has_value() ? *bias : Tensor())) return y->view(out_sizes);
  }
  const auto& k = table();
  const Storage st = storage_of(h_in), acc_st = storage_of(weight);
  Tensor bias_keep;
  const void* b = bias_ptr(bias, bias_keep);
  const Tensor out = gemm_rows(
      M, Nout, compute, h_in.options(),
      [&](const Tensor& target, int64_t r0, int64_t n) { return gemm_nt(as_compute(h.narrow(0, r0, n), compute), weight, target); },
      [&](int64_t r0, int64_t r1, Rows acc, Rows out_rows, bool in_place) {
        if (gelu || b != nullptr || !in_place) k.bias_act(st, acc_st, acc, b, out_rows, Nout, gelu, r0, r1);
      });
  return out.view(out_sizes);
}
}  // namespace

Tensor linear_gelu(const Tensor& h, const Tensor& weight, const std::optional<Tensor>& bias) {
  return linear_act("skipdit::linear_gelu", h, weight, bias, true);
}

Tensor linear(const Tensor& h, const Tensor& weight, const std::optional<Tensor>& bias) {
  return linear_act("skipdit::linear", h, weight, bias, false);
}

Tensor linear_gated_residual(const Tensor& x_in, const Tensor& h_in, const Tensor& weight,
                             const std::optional<Tensor>& bias, const Tensor& gate_in) {
  check_linear_gated(x_in, h_in, weight, bias, gate_in);
  check_cpu("skipdit::linear_gated_residual", x_in);
  const Tensor x = unit_last(x_in), gate = unit_last(gate_in);
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), K = h_in.size(2);
  const Tensor h = h_in.reshape({B * N, K});
  const auto compute = weight.scalar_type();
  const auto& k = table();
  const Storage st = storage_of(x), acc_st = storage_of(weight);
  Tensor bias_keep;
  const void* b = bias_ptr(bias, bias_keep);
  const Tensor out = gemm_rows(
      B * N, D, compute, x.options(),
      [&](const Tensor& target, int64_t r0, int64_t n) { return gemm_nt(as_compute(h.narrow(0, r0, n), compute), weight, target); },
      [&](int64_t r0, int64_t r1, Rows acc, Rows out_rows, bool) {
        k.gated(st, rows3(x), bvec(gate), acc_st, acc, b, out_rows, N, D, r0, r1);
      });
  return out.view({B, N, D});
}

namespace {

// skip_fuse and skip_fuse_adaln: statistics of [x | skip] per row, then one GEMM over the
// concatenated rows (fp32: [x | skip] - p; half precision: [x | skip] as it is), then the folded
// epilogue (and the adaLN modulation). One GEMM over 2 * hidden rather than two over the halves into
// one accumulator: a half-precision accumulator would round the first half's sums, and the bare
// (rows, 2 * hidden) GEMM is the op's floor (the concatenation costs one copy of the activations).
// Returns h (batch, tokens, out); `mod` (when given) is filled.
Tensor skip_fuse_impl(const Tensor& x_in, const Tensor& skip_in, const Tensor& weight, const Tensor& rowsum_in,
                      const Tensor& bias_in, const Tensor* shift_in, const Tensor* scale_in, double eps, Tensor* mod) {
  const Tensor x = unit_last(x_in), skip = unit_last(skip_in);
  const Tensor rowsum = rowsum_in.contiguous(), bias = bias_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), Dout = weight.size(0), M = B * N;
  if (M == 0 || Dout == 0) return at::empty({B, N, Dout}, x.options());
  const auto compute = weight.scalar_type();
  const Tensor x2 = x.reshape({M, D}), s2 = skip.reshape({M, D});
  const auto& k = table();
  const Storage st = storage_of(x), acc_st = storage_of(weight);
  const float feps = static_cast<float>(eps);
  // fp32 GEMMs read [x | skip] - p (ops.folding.skip_fuse_folded_torch, the model, says why; one pass
  // of the shift_pair kernel writes it and takes its statistics, what skipdit/folded.h's shifted_pair
  // computes for the CUDA driver, pinned to it by csrc/example); half-precision GEMMs read [x | skip].
  // The statistics come from the rows the GEMM reads.
  const bool shifted = compute == at::kFloat;
  Tensor stats = at::empty({2, M}, x.options().dtype(at::kFloat));
  float* mean = stats.data_ptr<float>();
  float* rstd = mean + M;
  Tensor zs;
  if (shifted) {
    zs = at::empty({M, 2 * D}, x.options().dtype(at::kFloat));
    at::parallel_for(0, M, grain_for(2 * D), [&](int64_t r0, int64_t r1) {
      k.shift_pair(st, rows3(x), rows3(skip), D, feps, zs.data_ptr<float>(), 2 * D, mean + r0, rstd + r0, r0, r1);
    });
  } else {
    zs = as_compute(at::cat({x2, s2}, 1), compute);
    at::parallel_for(0, M, grain_for(2 * D), [&](int64_t r0, int64_t r1) {
      k.pair_stats(storage_of(zs), rows2(zs, 0), rows2(zs.narrow(1, D, D), 0), D, feps, mean + r0, rstd + r0, r0, r1);
    });
  }

  Tensor shift, scale;
  BatchVec vshift{}, vscale{};
  Rows rmod{};
  if (mod != nullptr) {
    shift = unit_last(*shift_in);
    scale = unit_last(*scale_in);
    vshift = bvec(shift);
    vscale = bvec(scale);
    rmod = rows3(*mod);
  }
  const Tensor h = gemm_rows(
      M, Dout, compute, x.options(),
      [&](const Tensor& target, int64_t r0, int64_t n) { return gemm_nt(zs.narrow(0, r0, n), weight, target); },
      [&](int64_t r0, int64_t r1, Rows acc, Rows out_rows, bool) {
        k.folded(st, acc_st, acc, mean, rstd, 0, rowsum.data_ptr<float>(), bias.data_ptr<float>(), out_rows, Dout,
                 mod ? &vshift : nullptr, mod ? &vscale : nullptr, mod ? &rmod : nullptr, N, feps, r0, r1);
      });
  return h.view({B, N, Dout});
}

}  // namespace

Tensor skip_fuse_folded(const Tensor& x, const Tensor& skip, const Tensor& weight, const Tensor& rowsum,
                        const Tensor& bias, double eps) {
  check_skip_fuse("skipdit::skip_fuse_folded", x, skip, weight, rowsum, bias);
  check_cpu("skipdit::skip_fuse_folded", x);
  return skip_fuse_impl(x, skip, weight, rowsum, bias, nullptr, nullptr, eps, nullptr);
}

std::tuple<Tensor, Tensor> skip_fuse_adaln_folded(const Tensor& x, const Tensor& skip, const Tensor& weight,
                                                  const Tensor& rowsum, const Tensor& bias, const Tensor& shift,
                                                  const Tensor& scale, double eps) {
  const char* op = "skipdit::skip_fuse_adaln_folded";
  check_skip_fuse(op, x, skip, weight, rowsum, bias);
  check_adaln(op, x, shift, scale);
  check_cpu(op, x);
  TORCH_CHECK(weight.size(0) == x.size(2), op, ": weight must project back to hidden ", x.size(2), ", got ",
              weight.sizes());
  Tensor mod = at::empty_like(x, at::MemoryFormat::Contiguous);
  Tensor h = skip_fuse_impl(x, skip, weight, rowsum, bias, &shift, &scale, eps, &mod);
  return {h, mod};
}

std::tuple<Tensor, Tensor, Tensor> fold_skip_weights(const Tensor& norm_weight, const Tensor& norm_bias,
                                                     const Tensor& weight_in, const Tensor& bias) {
  const char* op = "skipdit::fold_skip_weights";
  check_cpu(op, weight_in);
  TORCH_CHECK(weight_in.dim() == 2, op, ": weight must be (out, 2 * hidden), got ", weight_in.sizes());
  const int64_t out = weight_in.size(0), K = weight_in.size(1);
  for (auto [name, t, n] : {std::tuple<const char*, const Tensor*, int64_t>{"norm_weight", &norm_weight, K},
                            {"norm_bias", &norm_bias, K},
                            {"bias", &bias, out}}) {
    TORCH_CHECK(t->device() == weight_in.device(), op, ": ", name, " is on ", t->device(), ", expected ",
                weight_in.device());
    TORCH_CHECK(t->is_floating_point(), op, ": ", name, " must be floating point, got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 1 && t->size(0) == n, op, ": ", name, " must be (", n, ",), got ", t->sizes());
  }
  const Tensor weight = unit_last(weight_in);
  const Storage st = storage_of(weight);
  const auto f32 = [](const Tensor& t) { return t.to(at::kFloat).contiguous(); };
  const Tensor gamma = f32(norm_weight), beta = f32(norm_bias), b = f32(bias);
  Tensor folded = at::empty({out, K}, weight.options());
  Tensor rowsum = at::empty({out}, weight.options().dtype(at::kFloat));
  Tensor fbias = at::empty({out}, weight.options().dtype(at::kFloat));
  if (out == 0) return {folded, rowsum, fbias};
  const auto& k = table();
  at::parallel_for(0, out, grain_for(K), [&](int64_t r0, int64_t r1) {
    k.fold(st, weight.data_ptr(), weight.stride(0), gamma.data_ptr<float>(), beta.data_ptr<float>(),
           b.data_ptr<float>(), folded.data_ptr(), rowsum.data_ptr<float>(), fbias.data_ptr<float>(), K, r0, r1);
  });
  return {folded, rowsum, fbias};
}

}  // namespace cpu

std::string cpu_capability() {
  std::string s = cpu::table().name;
  if (cpu_has("bf16")) s += "+bf16";
  return s;
}

std::string cpu_fp32_gemm() { return cpu::fp32_gemm_on_onednn() ? "onednn" : "torch"; }

}  // namespace skipdit

TORCH_LIBRARY_IMPL(skipdit, CPU, m) {
  m.impl("adaln_modulate", &skipdit::cpu::adaln_modulate);
  m.impl("gated_residual", &skipdit::cpu::gated_residual);
  m.impl("linear_gated_residual", &skipdit::cpu::linear_gated_residual);
  m.impl("linear_gelu", &skipdit::cpu::linear_gelu);
  m.impl("linear", &skipdit::cpu::linear);
  m.impl("skip_fuse_folded", &skipdit::cpu::skip_fuse_folded);
  m.impl("skip_fuse_adaln_folded", &skipdit::cpu::skip_fuse_adaln_folded);
  m.impl("fold_skip_weights", &skipdit::cpu::fold_skip_weights);
}
