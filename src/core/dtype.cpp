#include "strata/core/dtype.h"

#include "strata/core/error.h"

namespace strata {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::BFloat16: return 2;
    case DType::Float16: return 2;
    case DType::Int32: return 4;
    case DType::Int64: return 8;
    case DType::UInt8: return 1;
    case DType::Bool: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::BFloat16: return "bfloat16";
    case DType::Float16: return "float16";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::UInt8: return "uint8";
    case DType::Bool: return "bool";
  }
  return "unknown";
}

DType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return DType::Float32;
  if (name == "float64" || name == "fp64" || name == "double") return DType::Float64;
  if (name == "bfloat16" || name == "bf16") return DType::BFloat16;
  if (name == "float16" || name == "fp16" || name == "half") return DType::Float16;
  if (name == "int32") return DType::Int32;
  if (name == "int64") return DType::Int64;
  if (name == "uint8") return DType::UInt8;
  if (name == "bool") return DType::Bool;
  STRATA_FAIL("unknown dtype '{}' (expected float32, float64, bfloat16, float16, int32, int64, uint8 or bool)", name);
}

}  // namespace strata
