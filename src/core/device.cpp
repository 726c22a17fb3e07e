#include "strata/core/device.h"

#include "core/strided.h"
#include "strata/core/error.h"

namespace strata {

std::string Device::str() const { return is_cpu() ? "cpu" : fmt::format("cuda:{}", index); }

int cuda_device_count() {
#ifdef STRATA_WITH_CUDA
  static const int count = core_kernels::cuda_count_devices();
  return count;
#else
  return 0;
#endif
}

bool cuda_available() { return cuda_device_count() > 0; }

Device parse_device(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  if (text == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  int index = 0;
  if (text == "cuda" || (text.rfind("cuda:", 0) == 0 && sscanf(text.c_str() + 5, "%d", &index) == 1)) {
    STRATA_CHECK(cuda_available(), "device '{}' asked for, but {}", text,
#ifdef STRATA_WITH_CUDA
                 "no CUDA device is visible"
#else
                 "this Strata was built without CUDA"
#endif
    );
    STRATA_CHECK(index >= 0 && index < cuda_device_count(), "device '{}' does not exist ({} CUDA devices visible)",
                 text, cuda_device_count());
    return Device::cuda(index);
  }
  STRATA_FAIL("unknown device '{}' (expected cpu, cuda, cuda:N or auto)", text);
}

}  // namespace strata
