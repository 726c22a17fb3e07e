#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/embedding/embedding_cuda.h"
#include "kernels/common/cuda_convert.cuh"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxBlocks = 65535 * 8;

int row_blocks(int64_t tokens) { return static_cast<int>(std::min<int64_t>(tokens, kMaxBlocks)); }

// Word: uint4 (16 bytes), uint32_t or uint16_t; words_per_row = row_bytes / sizeof(Word).
template <class Word>
__global__ void embedding_forward_kernel(const Word* weight, const int64_t* ids, Word* out, int64_t tokens,
                                         int64_t vocab, int64_t words_per_row, int64_t* error) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    int64_t id = ids[t];
    Word* destination = out + t * words_per_row;
    if (id < 0 || id >= vocab) {
      if (threadIdx.x == 0) {
        error[1] = id;
        error[0] = 1;
      }
      for (int64_t w = threadIdx.x; w < words_per_row; w += blockDim.x) destination[w] = Word{};
      continue;
    }
    const Word* source = weight + id * words_per_row;
    for (int64_t w = threadIdx.x; w < words_per_row; w += blockDim.x) destination[w] = source[w];
  }
}

template <class T>
__global__ void embedding_backward_kernel(const T* grad_out, const int64_t* ids, float* grad_weight, int64_t tokens,
                                          int64_t dim) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    float* row = grad_weight + ids[t] * dim;
    const T* grad_row = grad_out + t * dim;
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) atomicAdd(row + c, to_float(grad_row[c]));
  }
}

template <class Word>
void launch_forward(const void* weight, const int64_t* ids, void* out, int64_t tokens, int64_t vocab,
                    int64_t row_bytes, int64_t* error) {
  embedding_forward_kernel<Word><<<row_blocks(tokens), kThreads, 0, cuda::stream()>>>(
      static_cast<const Word*>(weight), ids, static_cast<Word*>(out), tokens, vocab,
      row_bytes / static_cast<int64_t>(sizeof(Word)), error);
  STRATA_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

template <class T>
void launch_backward(const void* grad_out, const int64_t* ids, float* grad_weight, int64_t tokens, int64_t dim) {
  embedding_backward_kernel<T><<<row_blocks(tokens), kThreads, 0, cuda::stream()>>>(static_cast<const T*>(grad_out),
                                                                                   ids, grad_weight, tokens, dim);
  STRATA_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
}

bool aligned(const void* pointer, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(pointer) % bytes == 0; }

}  // namespace

void embedding_forward_cuda(const void* weight, const int64_t* ids, void* out, int64_t tokens, int64_t vocab,
                            int64_t row_bytes, int64_t* error) {
  if (tokens == 0 || row_bytes == 0) return;
  auto fits = [&](int64_t bytes) { return row_bytes % bytes == 0 && aligned(weight, bytes) && aligned(out, bytes); };
  if (fits(16)) launch_forward<uint4>(weight, ids, out, tokens, vocab, row_bytes, error);
  else if (fits(4)) launch_forward<uint32_t>(weight, ids, out, tokens, vocab, row_bytes, error);
  else launch_forward<uint16_t>(weight, ids, out, tokens, vocab, row_bytes, error);
}

bool embedding_backward_cuda(DType grad_dtype, const void* grad_out, const int64_t* ids, float* grad_weight,
                             int64_t tokens, int64_t dim) {
  bool supported = grad_dtype == DType::Float32 || grad_dtype == DType::BFloat16;
  if (!supported || tokens == 0 || dim == 0) return supported;
  if (grad_dtype == DType::Float32) launch_backward<float>(grad_out, ids, grad_weight, tokens, dim);
  else launch_backward<__nv_bfloat16>(grad_out, ids, grad_weight, tokens, dim);
  return true;
}

}  // namespace strata::kernels
