#include "strata/kernels/accumulate.h"

#include "kernels/accumulate/accumulate_cuda.h"

namespace strata::kernels {

namespace {
template <class T>
void accumulate_cpu(T* destination, const T* source, int64_t n) {
#pragma omp parallel for simd if (n > 65536)
  for (int64_t i = 0; i < n; ++i) destination[i] += source[i];
}
}  // namespace

void accumulate(Tensor& destination, const Tensor& source) {
  STRATA_CHECK(destination.shape() == source.shape() && destination.dtype() == source.dtype() &&
                   destination.device() == source.device(),
               "accumulate: {} and {} differ", destination.str(), source.str());
  STRATA_CHECK(destination.is_contiguous(), "accumulate: destination {} is not contiguous", destination.str());
  Tensor contiguous_source = source.contiguous();
  destination.storage().bump_version();
  int64_t n = destination.numel();
  bool supported = true;
  if (destination.device().is_cpu()) {
    switch (destination.dtype()) {
      case DType::Float32: accumulate_cpu(destination.data<float>(), contiguous_source.data<float>(), n); break;
      case DType::Float64: accumulate_cpu(destination.data<double>(), contiguous_source.data<double>(), n); break;
      default: supported = false;
    }
  } else {
#ifdef STRATA_WITH_CUDA
    supported = accumulate_cuda(destination.dtype(), destination.data_ptr(), contiguous_source.data_ptr(), n);
#endif
  }
  STRATA_CHECK(supported, "accumulate: {} is not supported", destination.str());
}

}  // namespace strata::kernels
