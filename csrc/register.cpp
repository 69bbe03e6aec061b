// The schemas of the `skipdit` op library. Each driver registers its kernels next to them
// (TORCH_LIBRARY_IMPL at the end of cpu/ops_cpu.cpp and cuda/ops_cuda.cu); torch's dispatcher runs
// the CPU or the CUDA driver by the inputs' device. Fake (meta) implementations are registered from
// Python (skipdit_kernels/ops/native/_fake.py, from the op specs).
#include <skipdit/ops.h>

#include <torch/library.h>

TORCH_LIBRARY(skipdit, m) {
  m.def("adaln_modulate(Tensor x, Tensor shift, Tensor scale, float eps) -> Tensor");
  m.def("gated_residual(Tensor x, Tensor gate, Tensor y) -> Tensor");
  m.def("linear_gated_residual(Tensor x, Tensor h, Tensor weight, Tensor? bias, Tensor gate) -> Tensor");
  m.def("linear_gelu(Tensor h, Tensor weight, Tensor? bias) -> Tensor");
  // F.linear with the bias in the epilogue (and, on CPUs without bf16 units, fp32 weights for bf16 h).
  m.def("linear(Tensor h, Tensor weight, Tensor? bias) -> Tensor");
  // The skip fusion on folded parameters (weight, rowsum, bias of ops.folding.fold_skip_weights);
  // ops.skip_fuse / ops.skip_fuse_adaln fold the module's parameters and call these.
  m.def("skip_fuse_folded(Tensor x, Tensor skip, Tensor weight, Tensor rowsum, Tensor bias, float eps) -> Tensor");
  m.def(
      "skip_fuse_adaln_folded(Tensor x, Tensor skip, Tensor weight, Tensor rowsum, Tensor bias, Tensor shift, "
      "Tensor scale, float eps) -> (Tensor, Tensor)");
  // (folded weight, rowsum, folded bias) of ops.folding.fold_skip_weights, in one pass; CPU only.
  m.def("fold_skip_weights(Tensor norm_weight, Tensor norm_bias, Tensor weight, Tensor bias) -> (Tensor, Tensor, Tensor)");
  m.def("cpu_capability() -> str", &skipdit::cpu_capability);
  m.def("cpu_fp32_gemm() -> str", &skipdit::cpu_fp32_gemm);
}

#ifdef SKIPDIT_PYTHON_MODULE
// Lets `import skipdit_kernels._C` load the library (and run the registrations above); the ops
// live in torch.ops.skipdit. No Python API of its own.
#include <Python.h>
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
