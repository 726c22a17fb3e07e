#include "strata/core/rng.h"

#include "core/strided.h"

namespace strata {

Generator& default_generator() {
  static Generator generator;
  return generator;
}

void manual_seed(uint64_t seed) { default_generator() = Generator{seed, 0}; }

namespace {

Tensor random_tensor(const Shape& shape, DType dtype, Device device, core_kernels::RandomKind kind, double a,
                     double b, int64_t words_per_element, Generator& generator) {
  Tensor out = Tensor::empty(shape, dtype, device);
  core_kernels::StridedView view;
  view.data = out.data_ptr();
  view.dtype = dtype;
  view.ndim = out.dim();
  for (int d = 0; d < out.dim(); ++d) view.shape[d] = shape[d], view.strides[d] = out.strides()[d];
  uint64_t offset = generator.reserve(out.numel() * words_per_element);
  if (out.numel() == 0) return out;
  if (device.is_cpu()) {
    core_kernels::random_cpu(view, kind, a, b, generator.seed, offset);
  } else {
#ifdef STRATA_WITH_CUDA
    core_kernels::random_cuda(view, kind, a, b, generator.seed, offset);
#endif
  }
  return out;
}

}  // namespace

Tensor rand_uniform(const Shape& shape, double low, double high, DType dtype, Device device, Generator& generator) {
  STRATA_CHECK(is_floating(dtype), "rand_uniform: dtype {} is not floating", dtype_name(dtype));
  return random_tensor(shape, dtype, device, core_kernels::RandomKind::Uniform, low, high, 1, generator);
}

Tensor rand_normal(const Shape& shape, double mean, double stddev, DType dtype, Device device, Generator& generator) {
  STRATA_CHECK(is_floating(dtype), "rand_normal: dtype {} is not floating", dtype_name(dtype));
  return random_tensor(shape, dtype, device, core_kernels::RandomKind::Normal, mean, stddev, 2, generator);
}

Tensor rand_bernoulli(const Shape& shape, double keep_probability, Device device, Generator& generator) {
  STRATA_CHECK(keep_probability >= 0.0 && keep_probability <= 1.0,
               "rand_bernoulli: probability {} is outside [0, 1]", keep_probability);
  return random_tensor(shape, DType::UInt8, device, core_kernels::RandomKind::Bernoulli, keep_probability, 0.0, 1,
                       generator);
}

}  // namespace strata
