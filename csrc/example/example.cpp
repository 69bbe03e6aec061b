// Calls every skipdit op through torch's dispatcher on CPU, as a C++ embedder would, and checks each
// against the same computation written with plain ATen ops. Exit status 0 when all agree.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

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
  std::printf("%-24s max error %.3e (max |ref| %.3e) %s\n", what, err, ref, ok ? "ok" : "FAIL");
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
  const Tensor w1 = at::randn({4 * D, D}) / 10, b1 = at::randn({4 * D}), w2 = at::randn({D, 4 * D}) / 20,
               b2 = at::randn({D});

  auto capability = op<std::string()>("skipdit::cpu_capability");
  std::printf("skipdit CPU driver: %s\n", capability.call().c_str());

  auto adaln = op<Tensor(const Tensor&, const Tensor&, const Tensor&, double)>("skipdit::adaln_modulate");
  expect_close("adaln_modulate", adaln.call(x, shift, scale, eps), modulate_ref(x, shift, scale, eps), 1e-5);

  auto gated = op<Tensor(const Tensor&, const Tensor&, const Tensor&)>("skipdit::gated_residual");
  expect_close("gated_residual", gated.call(x, gate, y), x + gate.unsqueeze(1) * y, 1e-5);

  auto lin_gelu = op<Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&)>("skipdit::linear_gelu");
  const Tensor act = lin_gelu.call(x, w1, b1);
  expect_close("linear_gelu", act, at::gelu(at::linear(x, w1, b1), "tanh"), 1e-5);

  auto lin = op<Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&)>("skipdit::linear");
  expect_close("linear", lin.call(x, w1, b1), at::linear(x, w1, b1), 1e-5);

  auto lin_gated =
      op<Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, const Tensor&)>(
          "skipdit::linear_gated_residual");
  expect_close("linear_gated_residual", lin_gated.call(x, act, w2, b2, gate),
               x + gate.unsqueeze(1) * at::linear(act, w2, b2), 1e-5);

  // skip fusion with LayerNorm(2D) folded into the Linear(2D -> D), as ops.folding prepares it.
  const Tensor gamma = at::rand({2 * D}) + 0.5, beta = at::randn({2 * D}) / 10;
  const Tensor ws = at::randn({D, 2 * D}) / 14, bs = at::randn({D});
  const Tensor wfold = (ws.to(at::kDouble) * gamma.to(at::kDouble)).to(at::kFloat).contiguous();
  const Tensor rowsum = wfold.to(at::kDouble).sum(1).to(at::kFloat);
  const Tensor bfold = (at::mv(ws.to(at::kDouble), beta.to(at::kDouble)) + bs.to(at::kDouble)).to(at::kFloat);
  const Tensor fused_ref =
      at::linear(at::layer_norm(at::cat({x, skip}, -1), {2 * D}, gamma, beta, eps), ws, bs);

  auto skip_fuse = op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double)>(
      "skipdit::skip_fuse");
  expect_close("skip_fuse", skip_fuse.call(x, skip, wfold, rowsum, bfold, eps), fused_ref, 1e-4);

  auto skip_adaln = op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                  const Tensor&, const Tensor&, const Tensor&, double)>(
      "skipdit::skip_fuse_adaln");
  auto [h, m] = skip_adaln.call(x, skip, wfold, rowsum, bfold, shift, scale, eps);
  expect_close("skip_fuse_adaln (h)", h, fused_ref, 1e-4);
  expect_close("skip_fuse_adaln (mod)", m, modulate_ref(fused_ref, shift, scale, eps), 1e-4);

  // bf16 activations with fp32 weights: the fp32-GEMM path of CPUs without bf16 units.
  const Tensor xb = x.to(at::kBFloat16);
  expect_close("linear_gelu bf16/fp32 w", lin_gelu.call(xb, w1, b1), at::gelu(at::linear(x, w1, b1), "tanh"), 2e-2);

  // Preconditions are checked in C++ too.
  bool threw = false;
  try {
    adaln.call(x, shift.narrow(1, 0, D - 1), scale, eps);
  } catch (const c10::Error&) {
    threw = true;
  }
  std::printf("%-24s %s\n", "bad shape rejected", threw ? "ok" : "FAIL");
  failures += !threw;

  std::printf("%s\n", failures ? "FAILED" : "all ops agree");
  return failures ? 1 : 0;
}
