#include "kernels/indexing/index_check.h"

namespace strata::kernels {

namespace {
[[noreturn]] void throw_out_of_range(const char* op, int64_t value, int64_t n, int dim, const Tensor& target) {
  STRATA_FAIL("{}: index {} is out of range for dim {} of {} (size {})", op, value, dim, target.str(), n);
}
}  // namespace

Tensor index_as_int64(const Tensor& index) { return index.to(DType::Int64).contiguous(); }

void check_index_range_cpu(const char* op, const Tensor& index, int64_t n, int dim, const Tensor& target) {
  const int64_t* values = index.data<int64_t>();
  for (int64_t p = 0; p < index.numel(); ++p)
    if (values[p] < 0 || values[p] >= n) throw_out_of_range(op, values[p], n, dim, target);
}

Tensor cuda_index_error_buffer(Device device) { return Tensor::zeros({2}, DType::Int64, device); }

void raise_reported_index_error(const char* op, const Tensor& error_buffer, int64_t n, int dim, const Tensor& target) {
  std::vector<int64_t> report = error_buffer.to_vector<int64_t>();
  if (report[0] != 0) throw_out_of_range(op, report[1], n, dim, target);
}

}  // namespace strata::kernels
