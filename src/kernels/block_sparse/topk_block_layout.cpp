// topk_block_layout (strata/kernels/block_layout.h): argument checks and the selection
// on q's device (topk_blocks_cpu.cpp,
// topk_blocks_cuda.cu).
#include <vector>

#include "kernels/block_sparse/topk_blocks.h"
#include "strata/autograd/autograd.h"
#include "strata/kernels/block_layout.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/block_sparse/topk_blocks_cuda.h"
#endif

namespace strata::kernels {

namespace {

TopKBlockSizes check_arguments(const char* op, const Tensor& q, const Tensor& k, const TopKBlockOptions& o) {
  STRATA_CHECK(q.defined() && k.defined() && q.dim() == 4 && k.dim() == 4,
               "{}: q must be (batch, heads, Lq, d) and k (batch, kv_heads, Lk, d), got q {} and k {}", op,
               q.defined() ? q.str() : "undefined", k.defined() ? k.str() : "undefined");
  TopKBlockSizes s;
  s.batch = q.size(0);
  s.heads = q.size(1);
  s.length_q = q.size(2);
  s.head_dim = q.size(3);
  s.kv_heads = k.size(1);
  s.length_k = k.size(2);
  STRATA_CHECK(q.numel() > 0 && k.numel() > 0, "{}: q {} and k {} must not be empty", op, q.str(), k.str());
  STRATA_CHECK(k.size(0) == s.batch && k.size(3) == s.head_dim && s.heads % s.kv_heads == 0,
               "{}: k {} must be (batch, kv_heads, Lk, d) with kv_heads dividing the heads of q {}", op, k.str(),
               q.str());
  STRATA_CHECK(q.device() == k.device() && q.dtype() == k.dtype(), "{}: q {} and k {} must share device and dtype", op,
               q.str(), k.str());
  const bool supported = q.device().is_cpu()
                             ? (q.dtype() == DType::Float32 || q.dtype() == DType::Float64)
                             : (q.dtype() == DType::Float32 || q.dtype() == DType::BFloat16 ||
                                q.dtype() == DType::Float16);
  STRATA_CHECK(supported, "{}: q {} is not supported (float32, float64 on cpu; float32, bfloat16, float16 on cuda)", op,
               q.str());
  STRATA_CHECK(o.block_size == 64 || o.block_size == 128, "{}: block_size must be 64 or 128, got {}", op,
               o.block_size);
  STRATA_CHECK(o.top_k >= 1 + (o.keep_first ? 1 : 0), "{}: top_k must be at least {} (the forced blocks), got {}", op,
               1 + (o.keep_first ? 1 : 0), o.top_k);
  s.block_size = o.block_size;
  s.top_k = o.top_k;
  s.causal = o.causal;
  s.keep_first = o.keep_first;
  s.share_by_group = o.share_by_group;
  return s;
}

}  // namespace

BlockLayout topk_block_layout(const Tensor& q_given, const Tensor& k_given, const TopKBlockOptions& options) {
  const char* op = "topk_block_layout";
  const TopKBlockSizes s = check_arguments(op, q_given, k_given, options);
  autograd::NoGradGuard no_grad;
  const Tensor q = q_given.detach().contiguous(), k = k_given.detach().contiguous();
  const LayoutGeometry geometry{s.length_q, s.length_k, s.block_size};

  const int64_t query_blocks = s.query_blocks(), key_blocks = s.key_blocks();
  int64_t per_head = 0;  // blocks kept by the rows of one (batch, head)
  for (int64_t i = 0; i < query_blocks; ++i) per_head += s.row_length(i);
  const int64_t present = s.batch * s.heads * per_head;

  if (q.device().is_cpu()) {
    std::vector<int32_t> row_offsets{0};
    for (int64_t bh = 0; bh < s.batch * s.heads; ++bh)
      for (int64_t i = 0; i < query_blocks; ++i)
        row_offsets.push_back(row_offsets.back() + static_cast<int32_t>(s.row_length(i)));
    std::vector<int32_t> column_indices(static_cast<size_t>(present));
    if (q.dtype() == DType::Float32)
      topk_blocks_cpu(s, q.data<float>(), k.data<float>(), row_offsets.data(), column_indices.data());
    else
      topk_blocks_cpu(s, q.data<double>(), k.data<double>(), row_offsets.data(), column_indices.data());
    std::vector<std::vector<std::vector<int32_t>>> lists(s.batch * s.heads,
                                                         std::vector<std::vector<int32_t>>(query_blocks));
    for (int64_t bh = 0; bh < s.batch * s.heads; ++bh)
      for (int64_t i = 0; i < query_blocks; ++i) {
        const int64_t row = bh * query_blocks + i;
        lists[bh][i].assign(column_indices.begin() + row_offsets[row], column_indices.begin() + row_offsets[row + 1]);
      }
    return BlockLayout::from_lists(geometry, lists).with_batches(s.batch);
  }
#ifdef STRATA_WITH_CUDA
  const Device device = q.device();
  const int64_t columns = s.batch * s.heads * key_blocks;
  Tensor offsets = Tensor::empty({s.batch * s.heads * query_blocks + 1}, DType::Int32, device);
  Tensor column_indices = Tensor::empty({present}, DType::Int32, device);
  Tensor column_offsets = Tensor::empty({columns + 1}, DType::Int32, device);
  Tensor row_indices = Tensor::empty({present}, DType::Int32, device);
  Tensor workspace = Tensor::empty({topk_blocks_cuda_workspace(s)}, DType::Float32, device);
  Tensor column_counts = Tensor::empty({columns}, DType::Int32, device);
  const bool launched = topk_blocks_cuda(q.dtype(), s, q.data_ptr(), k.data_ptr(), offsets.data<int32_t>(),
                                         column_indices.data<int32_t>(), column_offsets.data<int32_t>(),
                                         row_indices.data<int32_t>(), workspace.data<float>(),
                                         column_counts.data<int32_t>());
  STRATA_CHECK(launched, "{}: q {} is not supported on CUDA", op, q.str());
  return BlockLayout::from_arrays(geometry, s.batch, s.heads, offsets, column_indices, column_offsets, row_indices);
#else
  STRATA_FAIL("{}: q {} is on a device this build does not support", op, q.str());
#endif
}

}  // namespace strata::kernels
