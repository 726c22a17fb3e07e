// CPU copy, fill and random kernels of the core.
#include <cmath>
#include <cstring>

#include "core/element_io.h"

namespace strata::core_kernels {

void copy_cpu(const StridedView& dst, const StridedView& src) {
  int64_t n = dst.numel();
  if (dst.dtype == src.dtype && dst.is_dense() && src.is_dense()) {
    std::memcpy(dst.data, src.data, static_cast<size_t>(n) * dtype_size(dst.dtype));
    return;
  }
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i)
    store_element(dst.data, dst.dtype, strided_offset(dst, i), load_element(src.data, src.dtype, strided_offset(src, i)));
}

void fill_cpu(const StridedView& dst, double value) {
  int64_t n = dst.numel();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) store_element(dst.data, dst.dtype, strided_offset(dst, i), value);
}

void random_cpu(const StridedView& dst, RandomKind kind, double a, double b, uint64_t seed, uint64_t offset) {
  int64_t n = dst.numel();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) store_element(dst.data, dst.dtype, i, random_element(kind, a, b, seed, offset, i));
}

}  // namespace strata::core_kernels
