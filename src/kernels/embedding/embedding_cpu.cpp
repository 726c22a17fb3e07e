#include "kernels/embedding/embedding_cpu.h"

#include <cstring>

namespace strata::kernels {

template <class T>
void embedding_forward_cpu(const T* weight, const int64_t* ids, T* out, int64_t tokens, int64_t dim) {
#pragma omp parallel for if (tokens * dim > 65536)
  for (int64_t t = 0; t < tokens; ++t)
    std::memcpy(out + t * dim, weight + ids[t] * dim, static_cast<size_t>(dim) * sizeof(T));
}

// Sequential over tokens (two tokens may share an id); the row add vectorises.
template <class T>
void embedding_backward_cpu(const T* grad_out, const int64_t* ids, T* grad_weight, int64_t tokens, int64_t dim) {
  for (int64_t t = 0; t < tokens; ++t) {
    T* row = grad_weight + ids[t] * dim;
    const T* grad_row = grad_out + t * dim;
#pragma omp simd
    for (int64_t c = 0; c < dim; ++c) row[c] += grad_row[c];
  }
}

template void embedding_forward_cpu<float>(const float*, const int64_t*, float*, int64_t, int64_t);
template void embedding_forward_cpu<double>(const double*, const int64_t*, double*, int64_t, int64_t);
template void embedding_backward_cpu<float>(const float*, const int64_t*, float*, int64_t, int64_t);
template void embedding_backward_cpu<double>(const double*, const int64_t*, double*, int64_t, int64_t);

}  // namespace strata::kernels
