// Calls skipdit ops through torch's dispatcher on CPU, as a C++ embedder would, and checks each against
// the same computation written with plain ATen ops (every op against its torch reference, on every
// backend, is the Python contract test's: python_tests/ops/test_contract.py). Also holds the CPU
// driver's shift_pair kernel and the CUDA driver's shifted_pair (skipdit/folded.h, ATen ops, run here
// on CPU tensors) to one another: the fp32 skip fusion's GEMM operand [x | skip] - row mean.
// Exit status 0 when all agree.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <skipdit/folded.h>

#include <algorithm>
#include <vector>

#include "cpu/kernels.h"

#include <cstdio>
#include <string>
#include <tuple>

using at::Tensor;

namespace {

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

int failures = 0;

void expect_close(const char* what, const Tensor& got, const Tensor& want, double rel) {
  const double err = (got.to(at::kFloat) - want.to(at::kFloat)).abs().max().item<double>();
  const double ref = want.to(at::kFloat).abs().max().item<double>();
  const bool ok = err <= rel * std::max(ref, 1e-6);
  std::printf("%-40s max error %.3e (max |ref| %.3e) %s\n", what, err, ref, ok ? "ok" : "FAIL");
  failures += !ok;
}

void expect_le(const char* what, double value, double bound) {
  const bool ok = value <= bound;
  std::printf("%-40s %.3e <= %.3e %s\n", what, value, bound, ok ? "ok" : "FAIL");
  failures += !ok;
}

Tensor layer_norm(const Tensor& z, double eps) {
  return at::layer_norm(z, {z.size(-1)}, {}, {}, eps);
}

Tensor modulate_ref(const Tensor& x, const Tensor& shift, const Tensor& scale, double eps) {
  return layer_norm(x, eps) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int64_t B = 2, N = 33, D = 96;
  const double eps = 1e-6;
  const Tensor x = at::randn({B, N, D}), y = at::randn({B, N, D}), skip = at::randn({B, N, D}) + 0.5;
  const auto mod6 = (at::randn({B, 6 * D}) * 0.5).chunk(6, 1);  // non-contiguous views, as in DiT
  const Tensor &shift = mod6[0], &scale = mod6[1], &gate = mod6[2];

  auto capability = op<std::string()>("skipdit::cpu_capability");
  std::printf("skipdit CPU driver: %s\n", capability.call().c_str());

  auto adaln = op<Tensor(const Tensor&, const Tensor&, const Tensor&, double)>("skipdit::adaln_modulate");
  expect_close("adaln_modulate", adaln.call(x, shift, scale, eps), modulate_ref(x, shift, scale, eps), 1e-5);

  auto gated = op<Tensor(const Tensor&, const Tensor&, const Tensor&)>("skipdit::gated_residual");
  expect_close("gated_residual", gated.call(x, gate, y), x + gate.unsqueeze(1) * y, 1e-5);

  // skip fusion with LayerNorm(2D) folded into the Linear(2D -> D), as ops.folding.fold_skip_weights does.
  const Tensor gamma = at::rand({2 * D}) + 0.5, beta = at::randn({2 * D}) / 10;
  const Tensor ws = at::randn({D, 2 * D}) / 14, bs = at::randn({D});
  const Tensor wfold = (ws.to(at::kDouble) * gamma.to(at::kDouble)).to(at::kFloat).contiguous();
  const Tensor rowsum = wfold.to(at::kDouble).sum(1).to(at::kFloat);
  const Tensor bfold = (at::mv(ws.to(at::kDouble), beta.to(at::kDouble)) + bs.to(at::kDouble)).to(at::kFloat);
  const Tensor fused_ref =
      at::linear(at::layer_norm(at::cat({x, skip}, -1), {2 * D}, gamma, beta, eps), ws, bs);

  auto skip_fuse = op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double)>(
      "skipdit::skip_fuse_folded");
  expect_close("skip_fuse_folded", skip_fuse.call(x, skip, wfold, rowsum, bfold, eps), fused_ref, 1e-4);

  auto skip_adaln = op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                  const Tensor&, const Tensor&, const Tensor&, double)>(
      "skipdit::skip_fuse_adaln_folded");
  auto [h, m] = skip_adaln.call(x, skip, wfold, rowsum, bfold, shift, scale, eps);
  expect_close("skip_fuse_adaln_folded h", h, fused_ref, 1e-4);
  expect_close("skip_fuse_adaln_folded mod", m, modulate_ref(fused_ref, shift, scale, eps), 1e-4);

  // The fp32 skip fusion's GEMM operand: the CPU kernel (portable and AVX2 builds) against shifted_pair,
  // on rows of mean 300 (where a different pivot would show).
  {
    const int64_t M = B * N;
    const Tensor xs = (at::randn({M, D}) + 300).contiguous(), ss = (at::randn({M, D}) * 0.5 + 300).contiguous();
    const Tensor want = skipdit::shifted_pair(xs, ss);
    const Tensor var = std::get<0>(at::var_mean(want, {1}, /*correction=*/0));
    using skipdit::cpu::Rows;
    std::vector<const skipdit::cpu::KernelTable*> tables{&skipdit::cpu::table_default()};
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) tables.push_back(&skipdit::cpu::table_avx2());
#endif
    for (const auto* k : tables) {
      Tensor z = at::empty({M, 2 * D}), m = at::empty({M}), r = at::empty({M});
      const Rows rx{xs.data_ptr(), M, 0, D, 0}, rs{ss.data_ptr(), M, 0, D, 0};
      k->shift_pair(skipdit::cpu::Storage::f32, rx, rs, D, static_cast<float>(eps), z.data_ptr<float>(), 2 * D,
                    m.data_ptr<float>(), r.data_ptr<float>(), 0, M);
      const std::string name = std::string("shift_pair ") + k->name;
      // The same pivot up to its fp32 rounding (the two sum the row in different orders): z differs by
      // one constant per row, of a few units in the last place of |p| = 300.
      const Tensor d = z - want;
      const double spread = (std::get<0>(d.max(1)) - std::get<0>(d.min(1))).abs().max().item<double>();
      const double shift = d.abs().max().item<double>();
      expect_le((name + " z - z', spread per row").c_str(), spread, 1e-6);
      expect_le((name + " z - z', pivot rounding").c_str(), shift, 8 * 300 * 0x1p-24);
      expect_le((name + " mean vs its z").c_str(), (m - z.mean({1})).abs().max().item<double>(), 1e-6);
      expect_close((name + " rstd").c_str(), r, (var + eps).rsqrt(), 1e-5);
    }
  }

  // Preconditions are checked in C++ too.
  bool threw = false;
  try {
    adaln.call(x, shift.narrow(1, 0, D - 1), scale, eps);
  } catch (const c10::Error&) {
    threw = true;
  }
  std::printf("%-40s %s\n", "bad shape rejected", threw ? "ok" : "FAIL");
  failures += !threw;

  std::printf("%s\n", failures ? "FAILED" : "all ops agree");
  return failures ? 1 : 0;
}
