#pragma once

#include <string>

namespace strata {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::CUDA, index}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device&) const = default;
  std::string str() const;  // "cpu", "cuda:0"
};

// "cpu", "cuda", "cuda:1", or "auto" (cuda:0 when a device is present, else cpu).
Device parse_device(const std::string& text);

// True when Strata was built with CUDA and at least one device is visible.
bool cuda_available();
int cuda_device_count();

}  // namespace strata
