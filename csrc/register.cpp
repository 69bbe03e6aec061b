// The one registration file: schemas of the `skipdit` op library and its CPU and CUDA kernels.
// torch's dispatcher runs the CPU or the CUDA driver by the inputs' device; fake (meta)
// implementations are registered from Python (skipdit_kernels/ops/native/_fake.py).
#include <skipdit/ops.h>

#include <torch/library.h>

TORCH_LIBRARY(skipdit, m) {
  m.def("adaln_modulate(Tensor x, Tensor shift, Tensor scale, float eps) -> Tensor");
  m.def("gated_residual(Tensor x, Tensor gate, Tensor y) -> Tensor");
  m.def("linear_gated_residual(Tensor x, Tensor h, Tensor weight, Tensor? bias, Tensor gate) -> Tensor");
  m.def("linear_gelu(Tensor h, Tensor weight, Tensor? bias) -> Tensor");
  // F.linear with the bias in the epilogue (and, on CPUs without bf16 units, fp32 weights for bf16 h).
  m.def("linear(Tensor h, Tensor weight, Tensor? bias) -> Tensor");
  // weight, rowsum, bias: the folded parameters (skipdit_kernels.ops.folding.fold_skip_weights).
  m.def("skip_fuse(Tensor x, Tensor skip, Tensor weight, Tensor rowsum, Tensor bias, float eps) -> Tensor");
  m.def(
      "skip_fuse_adaln(Tensor x, Tensor skip, Tensor weight, Tensor rowsum, Tensor bias, Tensor shift, "
      "Tensor scale, float eps) -> (Tensor, Tensor)");
  // (folded weight, rowsum, folded bias) of ops.folding.fold_skip_weights, in one pass; CPU only.
  m.def("fold_skip_weights(Tensor norm_weight, Tensor norm_bias, Tensor weight, Tensor bias) -> (Tensor, Tensor, Tensor)");
  m.def("cpu_capability() -> str", &skipdit::cpu_capability);
  m.def("cpu_fp32_gemm() -> str", &skipdit::cpu_fp32_gemm);
}

TORCH_LIBRARY_IMPL(skipdit, CPU, m) {
  m.impl("adaln_modulate", &skipdit::cpu::adaln_modulate);
  m.impl("gated_residual", &skipdit::cpu::gated_residual);
  m.impl("linear_gated_residual", &skipdit::cpu::linear_gated_residual);
  m.impl("linear_gelu", &skipdit::cpu::linear_gelu);
  m.impl("linear", &skipdit::cpu::linear);
  m.impl("skip_fuse", &skipdit::cpu::skip_fuse);
  m.impl("skip_fuse_adaln", &skipdit::cpu::skip_fuse_adaln);
  m.impl("fold_skip_weights", &skipdit::cpu::fold_skip_weights);
}

#ifdef SKIPDIT_WITH_CUDA
TORCH_LIBRARY_IMPL(skipdit, CUDA, m) {
  m.impl("adaln_modulate", &skipdit::cuda::adaln_modulate);
  m.impl("gated_residual", &skipdit::cuda::gated_residual);
  m.impl("linear_gated_residual", &skipdit::cuda::linear_gated_residual);
  m.impl("linear_gelu", &skipdit::cuda::linear_gelu);
  m.impl("linear", &skipdit::cuda::linear);
  m.impl("skip_fuse", &skipdit::cuda::skip_fuse);
  m.impl("skip_fuse_adaln", &skipdit::cuda::skip_fuse_adaln);
}
#endif

#ifdef SKIPDIT_PYTHON_MODULE
// Lets `import skipdit_kernels._C` load the library (and run the registrations above); the ops
// live in torch.ops.skipdit. No Python API of its own.
#include <Python.h>
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
