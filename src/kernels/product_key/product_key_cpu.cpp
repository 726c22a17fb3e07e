#include "kernels/product_key/product_key_cpu.h"

#include <omp.h>

#include <algorithm>

namespace strata::kernels {

void product_key_value_indices_cpu(const int32_t* first, const int32_t* second, const int32_t* best, int64_t tokens,
                                   int64_t k, int64_t n_keys, int32_t* value_index) {
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t candidate = best[t * k + j];
      value_index[t * k + j] =
          static_cast<int32_t>(first[t * k + candidate / k] * n_keys + second[t * k + candidate % k]);
    }
}

template <class T>
void product_key_value_grad_cpu(const T* grad_out, const int32_t* value_index, const T* weights, int64_t tokens,
                                int64_t k, int64_t dim, T* grad_values) {
#pragma omp parallel if (tokens * k * dim > 65536)
  {
    // This thread's share of the columns.
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t begin = dim * id / threads, end = dim * (id + 1) / threads;
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const T weight = weights[t * k + j];
        const T* from = grad_out + t * dim;
        T* to = grad_values + static_cast<int64_t>(value_index[t * k + j]) * dim;
        for (int64_t c = begin; c < end; ++c) to[c] += weight * from[c];
      }
  }
}

template void product_key_value_grad_cpu<float>(const float*, const int32_t*, const float*, int64_t, int64_t, int64_t,
                                                float*);
template void product_key_value_grad_cpu<double>(const double*, const int32_t*, const double*, int64_t, int64_t,
                                                 int64_t, double*);

}  // namespace strata::kernels
