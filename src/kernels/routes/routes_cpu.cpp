#include "kernels/routes/routes_cpu.h"

namespace strata::kernels {

template <class T>
void route_gather_cpu(const RouteGatherSizes& s, const T* src, const int32_t* index, T* out) {
  const int64_t C = s.channels, L = s.length;
  // The row of source route k holding cell or step `position` of batch b.
  auto source_row = [&](int64_t b, int64_t k, int64_t position) {
    return src + ((s.source_per_route ? b * s.routes + k : b) * L + position) * C;
  };
  const int64_t out_rows = s.sum_routes ? s.batch * L : s.batch * s.routes * L;
#pragma omp parallel for schedule(static) if (out_rows * C > (int64_t{1} << 16))
  for (int64_t row = 0; row < out_rows; ++row) {
    T* destination = out + row * C;
    const int64_t t = row % L;
    if (s.sum_routes) {
      const int64_t b = row / L;
      for (int64_t c = 0; c < C; ++c) destination[c] = T(0);
      for (int64_t k = 0; k < s.routes; ++k) {
        const T* source = source_row(b, k, index[k * L + t]);
        for (int64_t c = 0; c < C; ++c) destination[c] += source[c];
      }
    } else {
      const int64_t k = (row / L) % s.routes, b = row / L / s.routes;
      const T* source = source_row(b, k, index[k * L + t]);
      for (int64_t c = 0; c < C; ++c) destination[c] = source[c];
    }
  }
}

template void route_gather_cpu<float>(const RouteGatherSizes&, const float*, const int32_t*, float*);
template void route_gather_cpu<double>(const RouteGatherSizes&, const double*, const int32_t*, double*);

}  // namespace strata::kernels
