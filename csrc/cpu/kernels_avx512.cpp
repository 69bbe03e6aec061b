// Row kernels for AVX512 CPUs (ATen's AVX512 capability), chosen at run time by ops_cpu.cpp.
// Built without per-file compiler flags (so setuptools, the JIT build and CMake compile it alike): with
// GCC a target pragma enables the instructions for this file only; GCC does not define the feature
// macros for a pragma in C++, so they are defined here for ATen's and Sleef's headers. Another
// compiler gets this variant only when the file is compiled with the flags; else the table falls back.
#include "kernels.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define SKIPDIT_HAVE_AVX512 1
#elif defined(__AVX__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define SKIPDIT_HAVE_AVX512 1
#endif

#ifdef SKIPDIT_HAVE_AVX512
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "kernels_impl.h"

namespace skipdit {
namespace cpu {
const KernelTable& table_avx512() {
  static const KernelTable t{"avx512", AVX512::adaln, AVX512::gated, AVX512::bias_act, AVX512::pair_stats, AVX512::shift_pair, AVX512::folded, AVX512::fold};
  return t;
}
}  // namespace cpu
}  // namespace skipdit
#else
namespace skipdit {
namespace cpu {
const KernelTable& table_avx512() { return table_default(); }
}  // namespace cpu
}  // namespace skipdit
#endif
