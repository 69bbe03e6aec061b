// Preconditions of the ops, checked by both drivers before any kernel runs.
#include <skipdit/ops.h>

#include <c10/util/Exception.h>

namespace skipdit {
namespace {

bool storage_dtype_ok(const Tensor& t) {
  auto s = t.scalar_type();
  return s == at::kFloat || s == at::kBFloat16 || s == at::kHalf;
}

void check_activation(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(storage_dtype_ok(t), op, ": ", name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
}

void check_same(const char* op, const char* name, const Tensor& ref, const Tensor& t) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), ", expected ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), ", expected ",
              ref.scalar_type());
}

// A GEMM weight: the activation dtype, or float32 (the GEMM then runs in fp32, e.g. bf16 on a CPU
// without bf16 units, with fp32 weight copies prepared once by the caller).
void check_weight_dtype(const char* op, const Tensor& act, const Tensor& w) {
  TORCH_CHECK(w.device() == act.device(), op, ": weight is on ", w.device(), ", expected ", act.device());
  TORCH_CHECK(w.scalar_type() == act.scalar_type() || w.scalar_type() == at::kFloat, op,
              ": weight dtype must be the activation dtype (", act.scalar_type(), ") or float32, got ",
              w.scalar_type());
}

}  // namespace

void check_adaln(const char* op, const Tensor& x, const Tensor& shift, const Tensor& scale) {
  check_activation(op, "x", x);
  TORCH_CHECK(x.dim() == 3, op, ": x must be (batch, tokens, hidden), got ", x.sizes());
  for (auto [name, t] : {std::pair<const char*, const Tensor*>{"shift", &shift}, {"scale", &scale}}) {
    check_same(op, name, x, *t);
    TORCH_CHECK(t->dim() == 2 && t->size(0) == x.size(0) && t->size(1) == x.size(2), op, ": ", name,
                " must be (batch, hidden) = (", x.size(0), ", ", x.size(2), "), got ", t->sizes());
  }
}

void check_gated(const Tensor& x, const Tensor& gate, const Tensor& y) {
  const char* op = "skipdit::gated_residual";
  check_activation(op, "x", x);
  TORCH_CHECK(x.dim() == 3, op, ": x must be (batch, tokens, hidden), got ", x.sizes());
  check_same(op, "gate", x, gate);
  check_same(op, "y", x, y);
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == x.size(0) && gate.size(1) == x.size(2), op,
              ": gate must be (batch, hidden), got ", gate.sizes());
  TORCH_CHECK(y.sizes() == x.sizes(), op, ": y must have x's shape ", x.sizes(), ", got ", y.sizes());
}

void check_linear(const char* op, const Tensor& h, const Tensor& weight, const std::optional<Tensor>& bias) {
  check_activation(op, "h", h);
  TORCH_CHECK(h.dim() >= 2, op, ": h must have at least 2 dimensions, got ", h.sizes());
  check_weight_dtype(op, h, weight);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == h.size(-1), op, ": weight must be (out, ", h.size(-1),
              "), got ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    check_same(op, "bias", weight, *bias);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be (", weight.size(0),
                ",), got ", bias->sizes());
  }
}

void check_linear_gated(const Tensor& x, const Tensor& h, const Tensor& weight, const std::optional<Tensor>& bias,
                        const Tensor& gate) {
  const char* op = "skipdit::linear_gated_residual";
  check_linear(op, h, weight, bias);
  check_activation(op, "x", x);
  check_same(op, "h", x, h);
  check_same(op, "gate", x, gate);
  TORCH_CHECK(x.dim() == 3 && h.dim() == 3 && h.size(0) == x.size(0) && h.size(1) == x.size(1), op,
              ": x and h must be (batch, tokens, *) with equal batch and tokens, got ", x.sizes(), " and ",
              h.sizes());
  TORCH_CHECK(weight.size(0) == x.size(2), op, ": weight must project to hidden ", x.size(2), ", got ",
              weight.sizes());
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == x.size(0) && gate.size(1) == x.size(2), op,
              ": gate must be (batch, hidden), got ", gate.sizes());
}

void check_skip_fuse(const char* op, const Tensor& x, const Tensor& skip, const Tensor& weight, const Tensor& rowsum,
                     const Tensor& bias) {
  check_activation(op, "x", x);
  TORCH_CHECK(x.dim() == 3, op, ": x must be (batch, tokens, hidden), got ", x.sizes());
  TORCH_CHECK(x.size(2) > 0, op, ": hidden must be positive");
  check_same(op, "skip", x, skip);
  TORCH_CHECK(skip.sizes() == x.sizes(), op, ": skip must have x's shape ", x.sizes(), ", got ", skip.sizes());
  check_weight_dtype(op, x, weight);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == 2 * x.size(2), op, ": folded weight must be (out, ",
              2 * x.size(2), "), got ", weight.sizes());
  for (auto [name, t] : {std::pair<const char*, const Tensor*>{"rowsum", &rowsum}, {"bias", &bias}}) {
    TORCH_CHECK(t->device() == x.device(), op, ": ", name, " is on ", t->device(), ", expected ", x.device());
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": folded ", name, " must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 1 && t->size(0) == weight.size(0), op, ": ", name, " must be (", weight.size(0),
                ",), got ", t->sizes());
  }
}

}  // namespace skipdit
