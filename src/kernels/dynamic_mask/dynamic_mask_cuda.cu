// The DMA keep mask on CUDA (definitions in dynamic_mask_cpu.h), one thread per key
// and no sweep: thread j counts the keys before it that beat it, scanning backward
// and stopping once `window` of them are found (then j is never kept); otherwise
// it scans forward for the (window - count)-th later key that beats it, which is
// keep_end[j]. The 32 threads of a warp hold 32 consecutive keys, so their scans
// read consecutive biases (coalesced, and the (rows, length) biases stay in L2),
// and one warp is one block of kKeepEndBlock keys: block_keep_end is a warp maximum.
//
// Cost: each key scans until its fate is decided: about Lk * window / 2 reads per
// row when the biases are in random order, up to Lk^2 / 2 when they rise along the
// sequence (every key is beaten by few earlier ones and by many later).
#include <cstdint>

#include "kernels/attention/attention_args.h"
#include "kernels/dynamic_mask/dynamic_mask_cuda.h"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

constexpr int kThreads = 256;
static_assert(kKeepEndBlock == 32, "one warp computes one block of keep_end");

__global__ void __launch_bounds__(kThreads)
    keep_window_ends_kernel(const float* bias, int64_t length, int64_t window, int32_t* keep_end,
                            int32_t* block_keep_end) {
  const int64_t row = blockIdx.y, j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const float* b = bias + row * length;
  int32_t end = 0;
  if (j < length) {
    const float own = b[j];
    int64_t beaten_before = 0;
    for (int64_t other = j - 1; other >= 0 && beaten_before < window; --other) beaten_before += b[other] >= own;
    end = static_cast<int32_t>(j);
    if (beaten_before < window) {
      int64_t still_needed = window - beaten_before;
      end = static_cast<int32_t>(length);
      for (int64_t other = j + 1; other < length; ++other) {
        if (b[other] > own && --still_needed == 0) {
          end = static_cast<int32_t>(other);
          break;
        }
      }
    }
    keep_end[row * length + j] = end;
  }
  int32_t block_max = end;
  for (int offset = 16; offset > 0; offset /= 2) block_max = max(block_max, __shfl_xor_sync(0xffffffffu, block_max, offset));
  const int64_t blocks = (length + kKeepEndBlock - 1) / kKeepEndBlock;
  if (threadIdx.x % 32 == 0 && j < length) block_keep_end[row * blocks + j / kKeepEndBlock] = block_max;
}

}  // namespace

void keep_window_ends_cuda(const float* bias, int64_t rows, int64_t length, int64_t window, int32_t* keep_end,
                           int32_t* block_keep_end) {
  dim3 grid(static_cast<unsigned>((length + kThreads - 1) / kThreads), static_cast<unsigned>(rows));
  keep_window_ends_kernel<<<grid, kThreads, 0, cuda::stream()>>>(bias, length, window, keep_end, block_keep_end);
  STRATA_CUDA_CHECK_LAUNCH("keep_window_ends_kernel");
}

}  // namespace strata::kernels
