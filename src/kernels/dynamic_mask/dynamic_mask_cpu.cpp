#include "kernels/dynamic_mask/dynamic_mask_cpu.h"

#include <algorithm>
#include <queue>
#include <vector>

#include "kernels/attention/attention_args.h"

namespace strata::kernels {

template <class T>
void keep_window_ends_cpu(const T* bias, int64_t rows, int64_t length, int64_t window, int32_t* keep_end,
                          int32_t* block_keep_end) {
  const int64_t blocks = (length + kKeepEndBlock - 1) / kKeepEndBlock;
#pragma omp parallel for schedule(static) if (rows * length > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const T* b = bias + r * length;
    int32_t* ends = keep_end + r * length;
    // "a beats c": the priority queue's top is the key every other key beats, the worst.
    auto beats = [b](int32_t a, int32_t c) { return b[a] > b[c] || (b[a] == b[c] && a < c); };
    std::priority_queue<int32_t, std::vector<int32_t>, decltype(beats)> kept(beats);
    for (int64_t e = 0; e < length; ++e) {
      kept.push(static_cast<int32_t>(e));
      if (static_cast<int64_t>(kept.size()) > window) {
        ends[kept.top()] = static_cast<int32_t>(e);
        kept.pop();
      }
    }
    for (; !kept.empty(); kept.pop()) ends[kept.top()] = static_cast<int32_t>(length);
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = block * kKeepEndBlock, last = std::min(length, first + kKeepEndBlock);
      block_keep_end[r * blocks + block] = *std::max_element(ends + first, ends + last);
    }
  }
}

template void keep_window_ends_cpu<float>(const float*, int64_t, int64_t, int64_t, int32_t*, int32_t*);
template void keep_window_ends_cpu<double>(const double*, int64_t, int64_t, int64_t, int32_t*, int32_t*);

}  // namespace strata::kernels
