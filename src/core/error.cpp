#include "strata/core/error.h"

#include "strata/core/cuda_check.h"

namespace strata::detail {

void throw_error(const char* file, int line, std::string message) {
  throw Error(std::move(message), fmt::format("{}:{}", file, line));
}

void throw_cuda_error(const char* file, int line, const char* what, int code, const char* name, const char* text) {
  throw Error(fmt::format("CUDA error in {}: {} ({}, code {})", what, text, name, code),
              fmt::format("{}:{}", file, line));
}

void throw_message(const char* file, int line, const char* message) { throw_error(file, line, message); }

}  // namespace strata::detail
