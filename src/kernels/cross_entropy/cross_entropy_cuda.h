// Raw CUDA launchers of the fused cross-entropy loss (nvcc-safe: no Tensor, no
// fmt). logits (rows, classes) contiguous, float32 or bfloat16; targets (rows)
// int32 or int64; all float results are float32. Device pointers. classes < 2^30.
#pragma once

#include <cstdint>

#include "strata/core/dtype.h"

namespace strata::kernels {

struct CrossEntropyForwardCudaArguments {
  DType dtype = DType::Float32;
  int64_t rows = 0;
  int64_t classes = 0;
  const void* logits = nullptr;
  const void* targets = nullptr;
  bool targets_int64 = true;  // false: int32
  int64_t ignore_index = -100;
  float* row_loss = nullptr;       // (rows) workspace
  float* row_logsumexp = nullptr;  // (rows), for the backward
  float* loss = nullptr;           // scalar: mean over counted rows, 0 when none counts
  float* count = nullptr;          // scalar: the number of counted rows
  // (2): the first row whose target is neither in [0, classes) nor ignore_index,
  // and that target; (-1, 0) when every target is valid.
  int64_t* invalid_target = nullptr;
};

struct CrossEntropyBackwardCudaArguments {
  DType dtype = DType::Float32;
  int64_t rows = 0;
  int64_t classes = 0;
  const void* logits = nullptr;
  const void* targets = nullptr;
  bool targets_int64 = true;
  int64_t ignore_index = -100;
  const float* row_logsumexp = nullptr;  // from the forward
  const float* count = nullptr;          // from the forward
  const float* grad_loss = nullptr;      // scalar: the gradient of the loss
  void* dlogits = nullptr;               // (rows, classes), the logits' dtype
};

// Return false when the dtype is not supported.
bool cross_entropy_forward_cuda(const CrossEntropyForwardCudaArguments& args);
bool cross_entropy_backward_cuda(const CrossEntropyBackwardCudaArguments& args);

}  // namespace strata::kernels
