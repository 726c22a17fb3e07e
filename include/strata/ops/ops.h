// The differentiable public API. Each op checks its arguments (a wrong shape, dtype
// or device raises strata::Error naming the op and the shapes), picks the kernel
// for the device and dtype, and records a tape node when grad is needed.
//
// Dtypes: float32 and float64 on the CPU; float32 and bfloat16 (float32
// accumulation) on CUDA. Dims may be negative (counted from the end).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "strata/core/rng.h"
#include "strata/core/tensor.h"

namespace strata::ops {

// ---- element-wise, with NumPy broadcasting ---------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor tanh(const Tensor& a);
Tensor sigmoid(const Tensor& a);
Tensor silu(const Tensor& a);
Tensor gelu(const Tensor& a);  // exact: x * Phi(x)
Tensor softplus(const Tensor& a);  // log(1 + exp(x)), linear above 20
Tensor relu(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor rsqrt(const Tensor& a);
Tensor pow(const Tensor& a, double exponent);
// Where mask (bool or uint8, broadcast to a) is true, value; elsewhere a.
Tensor masked_fill(const Tensor& a, const Tensor& mask, double value);

// ---- reductions -----------------------------------------------------------------
Tensor sum(const Tensor& a);  // all elements, a scalar
Tensor sum(const Tensor& a, const std::vector<int>& dims, bool keepdim = false);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, const std::vector<int>& dims, bool keepdim = false);
Tensor max(const Tensor& a, int dim, bool keepdim = false);  // gradient to the first maximum
// Over several dims: the gradient goes to the first maximum in row-major order of
// the reduced dims.
Tensor max(const Tensor& a, const std::vector<int>& dims, bool keepdim = false);
Tensor logsumexp(const Tensor& a, int dim, bool keepdim = false);
Tensor logsumexp(const Tensor& a, const std::vector<int>& dims, bool keepdim = false);

// ---- matrix products ------------------------------------------------------------
// (..., n, k) x (..., k, m) -> (..., n, m); leading dims broadcast; 1-D operands
// are not promoted. Under AutocastGuard on CUDA, float32 operands are multiplied in
// bfloat16 with float32 accumulation and a float32 result.
Tensor matmul(const Tensor& a, const Tensor& b);
// x (..., in) with weight (out, in) and optional bias (out) -> (..., out).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---- normalisation and softmax (over the last dim unless a dim is given) --------
Tensor softmax(const Tensor& x, int dim = -1);
Tensor log_softmax(const Tensor& x, int dim = -1);
// Statistics in float32 (float64 for float64 inputs) whatever the input dtype.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps = 1e-6);

// ---- embeddings and losses ------------------------------------------------------
// weight (vocab, dim), indices int32/int64 of any shape -> (*indices.shape, dim).
Tensor embedding(const Tensor& weight, const Tensor& indices);
// logits (N, C), targets (N) int32/int64; mean over targets != ignore_index, in
// float32 (float64 for float64 logits). Fused: log-softmax is never materialised.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// Zeroes each element with probability p and scales the rest by 1 / (1 - p).
Tensor dropout(const Tensor& x, double p, bool training, Generator& generator = default_generator());

// ---- shape and indexing (views where possible) ----------------------------------
Tensor reshape(const Tensor& a, const Shape& shape);  // one -1 is inferred; copies if not viewable
Tensor permute(const Tensor& a, const std::vector<int>& dims);
Tensor transpose(const Tensor& a, int dim0, int dim1);
Tensor slice(const Tensor& a, int dim, int64_t start, int64_t end, int64_t step = 1);
Tensor expand(const Tensor& a, const Shape& shape);  // -1 keeps a dim; size-1 dims broadcast
Tensor unsqueeze(const Tensor& a, int dim);
Tensor squeeze(const Tensor& a, int dim);
Tensor contiguous(const Tensor& a);
Tensor cast(const Tensor& a, DType dtype);
Tensor to_device(const Tensor& a, Device device);
Tensor concat(const std::vector<Tensor>& tensors, int dim);
std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int dim);
Tensor index_select(const Tensor& a, int dim, const Tensor& index);  // index: 1-D int32/int64
Tensor gather(const Tensor& a, int dim, const Tensor& index);        // out[i][j] = a[i][index[i][j]] (dim 1)
// a with src added at index along dim: out[index[i][j]][j] += src[i][j] (dim 0).
Tensor scatter_add(const Tensor& a, int dim, const Tensor& index, const Tensor& src);

// ---- masks (not differentiable) -------------------------------------------------
// Bool (length, length), true above the diagonal: the positions a causal query must not see.
Tensor causal_mask(int64_t length, Device device = Device::cpu());

// ---- mixed precision ------------------------------------------------------------
// While alive (thread-local), matmul and linear on CUDA compute in `dtype` (bfloat16)
// with float32 accumulation; norms, softmax and losses stay float32.
class AutocastGuard {
 public:
  explicit AutocastGuard(DType dtype = DType::BFloat16);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  std::optional<DType> previous_;
};
std::optional<DType> autocast_dtype();

}  // namespace strata::ops
