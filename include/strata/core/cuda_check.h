// Checked CUDA calls for .cu files. Kept free of fmt so nvcc sees a small header.
#pragma once

namespace strata::detail {
// Throws strata::Error naming the failed call (or kernel) and the CUDA error.
[[noreturn]] void throw_cuda_error(const char* file, int line, const char* what, int code, const char* name,
                                   const char* text);
// Throws strata::Error with a message already formatted (for .cu files, which use no fmt).
[[noreturn]] void throw_message(const char* file, int line, const char* message);
}  // namespace strata::detail

#ifdef __CUDACC__
#define STRATA_CUDA_CHECK(expr)                                                                        \
  do {                                                                                                 \
    cudaError_t strata_status_ = (expr);                                                               \
    if (strata_status_ != cudaSuccess)                                                                 \
      ::strata::detail::throw_cuda_error(__FILE__, __LINE__, #expr, static_cast<int>(strata_status_),  \
                                         cudaGetErrorName(strata_status_),                              \
                                         cudaGetErrorString(strata_status_));                           \
  } while (0)
// After a launch: reports a bad configuration or an earlier asynchronous fault, naming the kernel.
#define STRATA_CUDA_CHECK_LAUNCH(kernel_name)                                                          \
  do {                                                                                                 \
    cudaError_t strata_status_ = cudaGetLastError();                                                   \
    if (strata_status_ != cudaSuccess)                                                                 \
      ::strata::detail::throw_cuda_error(__FILE__, __LINE__, "launch of " kernel_name,                 \
                                         static_cast<int>(strata_status_),                             \
                                         cudaGetErrorName(strata_status_),                              \
                                         cudaGetErrorString(strata_status_));                           \
  } while (0)
#endif
