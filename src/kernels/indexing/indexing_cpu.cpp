#include "kernels/indexing/indexing_cpu.h"

namespace strata::kernels {

namespace {
constexpr int64_t kParallelThreshold = 32768;  // elements; below it threads cost more than they save
}

template <class T>
void index_select_cpu(const T* a, const int64_t* index, T* out, int64_t outer, int64_t n, int64_t k, int64_t inner) {
#pragma omp parallel for collapse(2) if (outer * k * inner > kParallelThreshold)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < k; ++j) {
      const T* row = a + (o * n + index[j]) * inner;
      T* destination = out + (o * k + j) * inner;
      for (int64_t i = 0; i < inner; ++i) destination[i] = row[i];
    }
}

// Threads split (o, i); each walks j in order, so two threads never add into one element.
template <class T>
void index_add_cpu(const T* src, const int64_t* index, T* accumulator, int64_t outer, int64_t n, int64_t k,
                   int64_t inner) {
#pragma omp parallel for collapse(2) if (outer * k * inner > kParallelThreshold)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i)
      for (int64_t j = 0; j < k; ++j) accumulator[(o * n + index[j]) * inner + i] += src[(o * k + j) * inner + i];
}

template <class T>
void gather_cpu(const T* a, const int64_t* index, T* out, int64_t outer, int64_t n, int64_t k, int64_t inner) {
#pragma omp parallel for collapse(2) if (outer * k * inner > kParallelThreshold)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t i = 0; i < inner; ++i) {
        int64_t position = (o * k + j) * inner + i;
        out[position] = a[(o * n + index[position]) * inner + i];
      }
}

template <class T>
void scatter_add_cpu(const T* src, const int64_t* index, T* accumulator, int64_t outer, int64_t n, int64_t k,
                     int64_t inner) {
#pragma omp parallel for collapse(2) if (outer * k * inner > kParallelThreshold)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i)
      for (int64_t j = 0; j < k; ++j) {
        int64_t position = (o * k + j) * inner + i;
        accumulator[(o * n + index[position]) * inner + i] += src[position];
      }
}

#define STRATA_INSTANTIATE(T)                                                                                     \
  template void index_select_cpu<T>(const T*, const int64_t*, T*, int64_t, int64_t, int64_t, int64_t);            \
  template void index_add_cpu<T>(const T*, const int64_t*, T*, int64_t, int64_t, int64_t, int64_t);               \
  template void gather_cpu<T>(const T*, const int64_t*, T*, int64_t, int64_t, int64_t, int64_t);                  \
  template void scatter_add_cpu<T>(const T*, const int64_t*, T*, int64_t, int64_t, int64_t, int64_t);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::kernels
