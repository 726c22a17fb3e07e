// embedding: a row lookup into weight (vocab, dim). The backward builds the dense
// weight gradient (vocab, dim) by adding each token's gradient row into the row of
// its id (kernels/embedding/): in a fixed order on the CPU, with float32 atomics on
// CUDA (bfloat16 weights get a float32 buffer rounded once), where the order in
// which repeated ids are summed, and so the last bit, depends on scheduling.
#include "kernels/embedding/embedding_cpu.h"
#include "kernels/indexing/index_check.h"
#include "ops/op_utils.h"
#include "strata/ops/ops.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/embedding/embedding_cuda.h"
#endif

namespace strata::ops {

namespace {

// grad_out (tokens, dim) -> grad_weight (vocab, dim) in grad_out's dtype.
Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t vocab) {
  int64_t tokens = ids.numel(), dim = grad_out.shape()[1];
  Tensor grad = grad_out.contiguous();
  if (grad.device().is_cpu()) {
    Tensor grad_weight = Tensor::zeros({vocab, dim}, grad.dtype(), grad.device());
    if (grad.dtype() == DType::Float32)
      kernels::embedding_backward_cpu(grad.data<float>(), ids.data<int64_t>(), grad_weight.data<float>(), tokens, dim);
    else
      kernels::embedding_backward_cpu(grad.data<double>(), ids.data<int64_t>(), grad_weight.data<double>(), tokens,
                                      dim);
    return grad_weight;
  }
  Tensor grad_weight = Tensor::zeros({vocab, dim}, DType::Float32, grad.device());
#ifdef STRATA_WITH_CUDA
  bool supported = kernels::embedding_backward_cuda(grad.dtype(), grad.data_ptr(), ids.data<int64_t>(),
                                                    grad_weight.data<float>(), tokens, dim);
  STRATA_CHECK(supported, "embedding backward: {} is not supported", grad.str());
#endif
  return grad_weight.to(grad.dtype());
}

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  detail::check_defined("embedding", weight, "weight");
  detail::check_defined("embedding", indices, "indices");
  STRATA_CHECK(weight.dim() == 2, "embedding: weight {} must be (vocab, dim)", weight.str());
  detail::check_compute_dtype("embedding", weight);
  detail::check_index_dtype("embedding", indices);
  detail::check_same_device("embedding", weight, indices);
  int64_t vocab = weight.shape()[0], dim = weight.shape()[1];
  Tensor ids = kernels::index_as_int64(indices);
  Tensor table = weight.contiguous();
  Shape out_shape = indices.shape();
  out_shape.push_back(dim);
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  if (weight.device().is_cpu()) {
    kernels::check_index_range_cpu("embedding", ids, vocab, 0, weight);
    if (weight.dtype() == DType::Float32)
      kernels::embedding_forward_cpu(table.data<float>(), ids.data<int64_t>(), out.data<float>(), ids.numel(), dim);
    else
      kernels::embedding_forward_cpu(table.data<double>(), ids.data<int64_t>(), out.data<double>(), ids.numel(), dim);
  } else {
#ifdef STRATA_WITH_CUDA
    Tensor error = kernels::cuda_index_error_buffer(weight.device());
    kernels::embedding_forward_cuda(table.data_ptr(), ids.data<int64_t>(), out.data_ptr(), ids.numel(), vocab,
                                    dim * static_cast<int64_t>(weight.element_size()), error.data<int64_t>());
    kernels::raise_reported_index_error("embedding", error, vocab, 0, weight);
#endif
  }
  autograd::record("embedding", {weight}, out, [ids, vocab, dim](const Tensor& grad) {
    return std::vector<Tensor>{embedding_backward(reshape(grad, {-1, dim}), ids, vocab)};
  });
  return out;
}

}  // namespace strata::ops
