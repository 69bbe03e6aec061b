// Row kernels for any x86-64 / other CPU (ATen's DEFAULT capability: no explicit SIMD flags).
#define CPU_CAPABILITY DEFAULT
#include "kernels_impl.h"

namespace skipdit {
namespace cpu {
const KernelTable& table_default() {
  static const KernelTable t{"default", DEFAULT::adaln, DEFAULT::gated, DEFAULT::bias_act, DEFAULT::pair_stats, DEFAULT::shift_pair,
                             DEFAULT::folded, DEFAULT::fold};
  return t;
}
}  // namespace cpu
}  // namespace skipdit
