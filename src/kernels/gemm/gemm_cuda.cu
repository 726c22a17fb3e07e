// CUDA matrix products through cuBLASLt.
//
// cuBLAS is column-major and Strata row-major. A row-major (rows, cols) matrix with
// row stride ld is, read column-major, its transpose: a (cols, rows) matrix with
// leading dimension ld. So the row-major product c = a @ b is computed as the
// column-major product c^T = b^T @ a^T: cuBLAS's first operand is our b, its second
// our a, and no data moves.
//
// Per device, one cuBLASLt handle and one 32 MiB workspace are created on first use and
// kept for the life of the process (tearing them down at exit can run after the CUDA
// driver has shut down). A "plan" (the matmul and layout descriptors plus the
// algorithm cuBLASLt's heuristic picked) is cached per shape, strides, transposes,
// dtypes and pointer alignment, so the heuristic runs once per distinct product.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <unordered_map>

#include "kernels/gemm/gemm_cuda.h"
#include "strata/core/cuda_check.h"
#include "strata/core/cuda_stream.h"

namespace strata::kernels {

namespace {

[[noreturn]] void throw_cublas_error(const char* file, int line, const char* call, cublasStatus_t status) {
  char message[768];
  std::snprintf(message, sizeof message, "cuBLAS call %s failed: %s (%s)", call, cublasGetStatusName(status),
                cublasGetStatusString(status));
  detail::throw_message(file, line, message);
}

#define STRATA_CUBLAS_CHECK(expr)                                           \
  do {                                                                      \
    cublasStatus_t strata_cublas_status_ = (expr);                          \
    if (strata_cublas_status_ != CUBLAS_STATUS_SUCCESS)                     \
      throw_cublas_error(__FILE__, __LINE__, #expr, strata_cublas_status_); \
  } while (0)

constexpr size_t kWorkspaceBytes = size_t{32} << 20;
// Distinct products cached before the cache starts over (generation with a growing
// length would otherwise add one plan per step forever).
constexpr size_t kMaxCachedPlans = 4096;

struct DeviceState {
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;  // for the reference path only, created on first use
  void* workspace = nullptr;
};

std::mutex state_mutex;

int current_device() {
  int device = 0;
  STRATA_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

DeviceState& device_state(int device) {
  static auto* states = new std::unordered_map<int, DeviceState>();  // never destroyed, see the top
  std::lock_guard<std::mutex> lock(state_mutex);
  DeviceState& state = (*states)[device];
  if (!state.lt) {
    STRATA_CUBLAS_CHECK(cublasLtCreate(&state.lt));
    STRATA_CUDA_CHECK(cudaMalloc(&state.workspace, kWorkspaceBytes));
  }
  return state;
}

cudaDataType_t cuda_type(DType dtype) { return dtype == DType::BFloat16 ? CUDA_R_16BF : CUDA_R_32F; }

bool supported(DType input_dtype, DType output_dtype) {
  if (input_dtype == DType::Float32) return output_dtype == DType::Float32;
  if (input_dtype == DType::BFloat16) return output_dtype == DType::Float32 || output_dtype == DType::BFloat16;
  return false;
}

// The largest power of two (at most 256, cuBLASLt's default requirement) dividing the
// address of every matrix of the batch.
uint32_t alignment_bytes(const void* data, int64_t batch_stride, size_t element_size, int64_t batch) {
  uint64_t bits = reinterpret_cast<uintptr_t>(data) | 256u;
  if (batch > 1) bits |= static_cast<uint64_t>(batch_stride) * element_size;
  return static_cast<uint32_t>(bits & (~bits + 1));
}

struct PlanKey {
  int device;
  DType input_dtype, output_dtype;
  bool transpose_a, transpose_b, allow_tf32;
  int64_t m, n, k, batch, lda, ldb, ldc, stride_a, stride_b, stride_c;
  uint32_t align_a, align_b, align_c;

  bool operator==(const PlanKey& other) const {
    return device == other.device && input_dtype == other.input_dtype && output_dtype == other.output_dtype &&
           transpose_a == other.transpose_a && transpose_b == other.transpose_b && allow_tf32 == other.allow_tf32 &&
           m == other.m && n == other.n && k == other.k && batch == other.batch && lda == other.lda &&
           ldb == other.ldb && ldc == other.ldc && stride_a == other.stride_a && stride_b == other.stride_b &&
           stride_c == other.stride_c && align_a == other.align_a && align_b == other.align_b &&
           align_c == other.align_c;
  }
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    size_t hash = 0;
    auto mix = [&hash](int64_t value) {
      hash ^= std::hash<int64_t>()(value) + 0x9e3779b97f4a7c15ull + (hash << 6) + (hash >> 2);
    };
    for (int64_t value : {int64_t{key.device}, int64_t(key.input_dtype), int64_t(key.output_dtype),
                          int64_t{key.transpose_a} | int64_t{key.transpose_b} << 1 | int64_t{key.allow_tf32} << 2,
                          key.m, key.n, key.k, key.batch, key.lda, key.ldb, key.ldc, key.stride_a, key.stride_b,
                          key.stride_c, int64_t{key.align_a} << 32 | key.align_b, int64_t{key.align_c}})
      mix(value);
    return hash;
  }
};

struct Plan {
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t first = nullptr, second = nullptr, output = nullptr;  // cuBLAS's A (our b), B (our a), C = D
  cublasLtMatmulAlgo_t algorithm;
};

void destroy(Plan& plan) {
  if (plan.operation) cublasLtMatmulDescDestroy(plan.operation);
  if (plan.first) cublasLtMatrixLayoutDestroy(plan.first);
  if (plan.second) cublasLtMatrixLayoutDestroy(plan.second);
  if (plan.output) cublasLtMatrixLayoutDestroy(plan.output);
}

// A column-major layout of rows x cols with leading dimension ld, strided over the batch.
cublasLtMatrixLayout_t make_layout(DType dtype, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                                   int64_t batch_stride) {
  cublasLtMatrixLayout_t layout = nullptr;
  STRATA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, cuda_type(dtype), static_cast<uint64_t>(rows),
                                                 static_cast<uint64_t>(cols), ld));
  if (batch > 1) {
    int32_t count = static_cast<int32_t>(batch);
    STRATA_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    STRATA_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                         &batch_stride, sizeof batch_stride));
  }
  return layout;
}

Plan make_plan(const PlanKey& key, cublasLtHandle_t lt) {
  Plan plan;
  try {
    cublasComputeType_t compute =
        key.input_dtype == DType::Float32 && key.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    STRATA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.operation, compute, CUDA_R_32F));
    cublasOperation_t first_op = key.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t second_op = key.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    STRATA_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan.operation, CUBLASLT_MATMUL_DESC_TRANSA, &first_op, sizeof first_op));
    STRATA_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan.operation, CUBLASLT_MATMUL_DESC_TRANSB, &second_op, sizeof second_op));
    // Stored column-major shapes: b^T is (n, k), stored as (k, n) when b is transposed;
    // a^T is (k, m), stored as (m, k) when a is transposed; c^T is (n, m).
    plan.first = key.transpose_b ? make_layout(key.input_dtype, key.k, key.n, key.ldb, key.batch, key.stride_b)
                                 : make_layout(key.input_dtype, key.n, key.k, key.ldb, key.batch, key.stride_b);
    plan.second = key.transpose_a ? make_layout(key.input_dtype, key.m, key.k, key.lda, key.batch, key.stride_a)
                                  : make_layout(key.input_dtype, key.k, key.m, key.lda, key.batch, key.stride_a);
    plan.output = make_layout(key.output_dtype, key.n, key.m, key.ldc, key.batch, key.stride_c);

    cublasLtMatmulPreference_t preference = nullptr;
    STRATA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    uint64_t workspace_bytes = kWorkspaceBytes;
    cublasStatus_t status = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                                 &workspace_bytes, sizeof workspace_bytes);
    // cuBLASLt's first operand is our b, its second our a.
    if (status == CUBLAS_STATUS_SUCCESS)
      status = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                    &key.align_b, sizeof key.align_b);
    if (status == CUBLAS_STATUS_SUCCESS)
      status = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                    &key.align_a, sizeof key.align_a);
    if (status == CUBLAS_STATUS_SUCCESS)
      status = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                    &key.align_c, sizeof key.align_c);
    if (status == CUBLAS_STATUS_SUCCESS)
      status = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                    &key.align_c, sizeof key.align_c);
    cublasLtMatmulHeuristicResult_t result;
    std::memset(&result, 0, sizeof result);
    int found = 0;
    if (status == CUBLAS_STATUS_SUCCESS)
      status = cublasLtMatmulAlgoGetHeuristic(lt, plan.operation, plan.first, plan.second, plan.output, plan.output,
                                              preference, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(preference);
    STRATA_CUBLAS_CHECK(status);
    if (found == 0) {
      char message[512];
      std::snprintf(message, sizeof message,
                    "gemm: cuBLASLt has no algorithm for (%lld x %lld) @ (%lld x %lld), batch %lld, %s inputs, %s "
                    "output, transposes %d/%d, leading dims %lld/%lld/%lld",
                    static_cast<long long>(key.m), static_cast<long long>(key.k), static_cast<long long>(key.k),
                    static_cast<long long>(key.n), static_cast<long long>(key.batch),
                    key.input_dtype == DType::BFloat16 ? "bfloat16" : "float32",
                    key.output_dtype == DType::BFloat16 ? "bfloat16" : "float32", key.transpose_a, key.transpose_b,
                    static_cast<long long>(key.lda), static_cast<long long>(key.ldb), static_cast<long long>(key.ldc));
      detail::throw_message(__FILE__, __LINE__, message);
    }
    plan.algorithm = result.algo;
  } catch (...) {
    destroy(plan);
    throw;
  }
  return plan;
}

// Runs the product with the cached plan for `key` (made on first use). The lock is held
// through the (asynchronous, so brief) launch: another thread could otherwise clear the
// cache and destroy the descriptors in use.
void run_with_plan(const PlanKey& key, const DeviceState& state, float alpha, const void* a, const void* b, float beta,
                   void* c) {
  static auto* plans = new std::unordered_map<PlanKey, Plan, PlanKeyHash>();  // never destroyed, see the top
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = plans->find(key);
  if (found == plans->end()) {
    if (plans->size() >= kMaxCachedPlans) {
      for (auto& [unused, plan] : *plans) destroy(plan);
      plans->clear();
    }
    found = plans->emplace(key, make_plan(key, state.lt)).first;
  }
  const Plan& plan = found->second;
  STRATA_CUBLAS_CHECK(cublasLtMatmul(state.lt, plan.operation, &alpha, b, plan.first, a, plan.second, &beta, c,
                                     plan.output, c, plan.output, &plan.algorithm, state.workspace, kWorkspaceBytes,
                                     cuda::stream()));
}

}  // namespace

bool gemm_cuda(DType input_dtype, DType output_dtype, int64_t m, int64_t n, int64_t k, int64_t batch, float alpha,
               const CudaGemmOperand& a, const CudaGemmOperand& b, float beta, void* c, int64_t ldc,
               int64_t c_batch_stride, bool allow_tf32) {
  if (!supported(input_dtype, output_dtype)) return false;
  int device = current_device();
  DeviceState& state = device_state(device);
  size_t input_size = input_dtype == DType::BFloat16 ? 2 : 4, output_size = output_dtype == DType::BFloat16 ? 2 : 4;
  PlanKey key{device,
              input_dtype,
              output_dtype,
              a.transposed,
              b.transposed,
              allow_tf32,
              m,
              n,
              k,
              batch,
              a.leading_dimension,
              b.leading_dimension,
              ldc,
              batch > 1 ? a.batch_stride : 0,
              batch > 1 ? b.batch_stride : 0,
              batch > 1 ? c_batch_stride : 0,
              alignment_bytes(a.data, a.batch_stride, input_size, batch),
              alignment_bytes(b.data, b.batch_stride, input_size, batch),
              alignment_bytes(c, c_batch_stride, output_size, batch)};
  run_with_plan(key, state, alpha, a.data, b.data, beta, c);
  return true;
}

bool gemm_cublas_reference_cuda(DType input_dtype, DType output_dtype, int64_t m, int64_t n, int64_t k, float alpha,
                                const CudaGemmOperand& a, const CudaGemmOperand& b, float beta, void* c, int64_t ldc,
                                bool allow_tf32) {
  if (!supported(input_dtype, output_dtype)) return false;
  DeviceState& state = device_state(current_device());
  {
    std::lock_guard<std::mutex> lock(state_mutex);
    if (!state.blas) STRATA_CUBLAS_CHECK(cublasCreate(&state.blas));
  }
  STRATA_CUBLAS_CHECK(cublasSetStream(state.blas, cuda::stream()));
  cublasComputeType_t compute =
      input_dtype == DType::Float32 && allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  STRATA_CUBLAS_CHECK(cublasGemmEx(
      state.blas, b.transposed ? CUBLAS_OP_T : CUBLAS_OP_N, a.transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b.data, cuda_type(input_dtype),
      static_cast<int>(b.leading_dimension), a.data, cuda_type(input_dtype), static_cast<int>(a.leading_dimension),
      &beta, c, cuda_type(output_dtype), static_cast<int>(ldc), compute, CUBLAS_GEMM_DEFAULT));
  return true;
}

}  // namespace strata::kernels
