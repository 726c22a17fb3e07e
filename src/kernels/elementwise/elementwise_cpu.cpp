// CPU reference of the element-wise family. The output is walked in dense order in
// chunks (one per OpenMP task); inside a chunk an odometer over the layout's dims
// tracks each input's offset, so strided and broadcast (stride 0) inputs are read
// in place without a division per element.
#include <algorithm>

#include "kernels/elementwise/elementwise_cpu.h"

namespace strata::kernels {

namespace {

constexpr int64_t kChunk = 16384;

// Calls body(i, offset_0, offset_1) for every dense output index i, with the offsets
// of inputs 0 and 1 at that element.
template <class Body>
void for_each_element(const ElementwiseLayout& layout, Body body) {
  const int last = layout.ndim - 1;
  const int64_t chunks = (layout.numel + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t begin = chunk * kChunk, end = std::min(layout.numel, begin + kChunk);
    int64_t coordinate[core_kernels::kMaxDims];
    int64_t offset[2] = {0, 0};
    for (int64_t rest = begin, d = last; d >= 0; --d) {
      coordinate[d] = rest % layout.shape[d];
      rest /= layout.shape[d];
      for (int k = 0; k < 2; ++k) offset[k] += coordinate[d] * layout.strides[k][d];
    }
    for (int64_t i = begin; i < end;) {
      // Run along the last dim, then carry into the dims before it.
      const int64_t run = std::min(end - i, layout.shape[last] - coordinate[last]);
      const int64_t stride_0 = layout.strides[0][last], stride_1 = layout.strides[1][last];
      for (int64_t j = 0; j < run; ++j) body(i + j, offset[0] + j * stride_0, offset[1] + j * stride_1);
      i += run;
      coordinate[last] += run;
      offset[0] += run * stride_0;
      offset[1] += run * stride_1;
      for (int d = last; d > 0 && coordinate[d] == layout.shape[d]; --d) {
        for (int k = 0; k < 2; ++k) offset[k] += layout.strides[k][d - 1] - coordinate[d] * layout.strides[k][d];
        coordinate[d] = 0;
        ++coordinate[d - 1];
      }
    }
  }
}

template <class T>
void unary(UnaryOp op, T* out, const T* in, const ElementwiseLayout& layout, T scalar) {
  for_each_element(layout, [&](int64_t i, int64_t offset, int64_t) { out[i] = unary_apply(op, in[offset], scalar); });
}

template <class T>
void binary(BinaryOp op, T* out, const T* a, const T* b, const ElementwiseLayout& layout, T scalar) {
  for_each_element(layout, [&](int64_t i, int64_t offset_a, int64_t offset_b) {
    out[i] = binary_apply(op, a[offset_a], b[offset_b], scalar);
  });
}

template <class T>
void masked_fill(T* out, const T* a, const uint8_t* mask, const ElementwiseLayout& layout, T value) {
  for_each_element(layout, [&](int64_t i, int64_t offset_a, int64_t offset_mask) {
    out[i] = mask[offset_mask] ? value : a[offset_a];
  });
}

}  // namespace

bool unary_cpu(UnaryOp op, DType dtype, void* out, const void* in, const ElementwiseLayout& layout, double scalar) {
  switch (dtype) {
    case DType::Float32:
      unary(op, static_cast<float*>(out), static_cast<const float*>(in), layout, static_cast<float>(scalar));
      return true;
    case DType::Float64:
      unary(op, static_cast<double*>(out), static_cast<const double*>(in), layout, scalar);
      return true;
    default: return false;
  }
}

bool binary_cpu(BinaryOp op, DType dtype, void* out, const void* a, const void* b, const ElementwiseLayout& layout,
                double scalar) {
  switch (dtype) {
    case DType::Float32:
      binary(op, static_cast<float*>(out), static_cast<const float*>(a), static_cast<const float*>(b), layout,
             static_cast<float>(scalar));
      return true;
    case DType::Float64:
      binary(op, static_cast<double*>(out), static_cast<const double*>(a), static_cast<const double*>(b), layout,
             scalar);
      return true;
    default: return false;
  }
}

bool masked_fill_cpu(DType dtype, void* out, const void* a, const uint8_t* mask, const ElementwiseLayout& layout,
                     double value) {
  switch (dtype) {
    case DType::Float32:
      masked_fill(static_cast<float*>(out), static_cast<const float*>(a), mask, layout, static_cast<float>(value));
      return true;
    case DType::Float64:
      masked_fill(static_cast<double*>(out), static_cast<const double*>(a), mask, layout, value);
      return true;
    default: return false;
  }
}

}  // namespace strata::kernels
