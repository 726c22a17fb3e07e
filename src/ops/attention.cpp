// attention and block_sparse_attention: argument checks (each message names the
// tensor and the shape it has against the one it needs), the temperatures folded
// into q and k with differentiable ops, bias and sinks converted to the kernels'
// accumulation dtype (float64 for float64 q, else float32), and the tape node.
//
// The node saves q, k, v (contiguous), out and lse; its backward recomputes the
// probabilities from lse (kernels/attention/). The bias gradient is formed at full
// size (batch, heads, Lq, Lk) and summed down to the bias's shape; the sink
// gradient is -sum_i exp(sink_h - lse_i) delta_i over batch and queries, from the
// delta the backward kernel returns.
#include "strata/ops/attention.h"

#include <cmath>

#include "kernels/attention/attention_cpu.h"
#include "ops/attention_checks.h"
#include "ops/op_utils.h"
#include "strata/autograd/autograd.h"
#include "strata/ops/ops.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/attention/attention_cuda.h"
#endif

namespace strata::ops {

namespace detail {

kernels::AttentionSizes check_attention_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                               bool causal, std::optional<double> scale) {
  detail::check_defined(op, q, "q");
  detail::check_defined(op, k, "k");
  detail::check_defined(op, v, "v");
  STRATA_CHECK(q.dim() == 4, "{}: q {} must be (batch, heads, Lq, head_dim)", op, q.str());
  STRATA_CHECK(k.dim() == 4, "{}: k {} must be (batch, kv_heads, Lk, head_dim)", op, k.str());
  kernels::AttentionSizes sizes;
  sizes.batch = q.shape()[0];
  sizes.heads = q.shape()[1];
  sizes.length_q = q.shape()[2];
  sizes.head_dim = q.shape()[3];
  sizes.kv_heads = k.shape()[1];
  sizes.length_k = k.shape()[2];
  STRATA_CHECK(q.numel() > 0 && k.numel() > 0, "{}: q {} and k {} must not be empty", op, q.str(), k.str());
  STRATA_CHECK(k.shape()[0] == sizes.batch && k.shape()[3] == sizes.head_dim,
               "{}: k {} must be (batch, kv_heads, Lk, head_dim) = ({}, kv_heads, Lk, {}) to match q {}", op, k.str(),
               sizes.batch, sizes.head_dim, q.str());
  STRATA_CHECK(v.shape() == k.shape(), "{}: v {} must have the shape of k {}", op, v.str(), k.str());
  STRATA_CHECK(sizes.heads % sizes.kv_heads == 0,
               "{}: the {} heads of q {} are not a multiple of the {} kv heads of k {}", op, sizes.heads, q.str(),
               sizes.kv_heads, k.str());
  const bool supported = q.device().is_cpu()
                             ? (q.dtype() == DType::Float32 || q.dtype() == DType::Float64)
                             : (q.dtype() == DType::Float32 || q.dtype() == DType::BFloat16 ||
                                q.dtype() == DType::Float16);
  STRATA_CHECK(supported, "{}: q {} is not supported (supported: {})", op, q.str(),
               q.device().is_cpu() ? "float32, float64 on cpu" : "float32, bfloat16, float16 on cuda");
  detail::check_same_device(op, q, k);
  detail::check_same_device(op, q, v);
  STRATA_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), "{}: q {}, k {} and v {} must share one dtype", op,
               q.str(), k.str(), v.str());
#ifdef STRATA_WITH_CUDA
  if (q.device().is_cuda())
    STRATA_CHECK(sizes.head_dim <= kernels::kAttentionCudaMaxHeadDim, "{}: head_dim {} of q {} exceeds {} on CUDA", op,
                 sizes.head_dim, q.str(), kernels::kAttentionCudaMaxHeadDim);
#endif

  sizes.causal = causal;
  sizes.scale = scale.value_or(1.0 / std::sqrt(static_cast<double>(sizes.head_dim)));
  STRATA_CHECK(std::isfinite(sizes.scale), "{}: scale must be finite, got {}", op, sizes.scale);
  return sizes;
}

}  // namespace detail

namespace {

using kernels::AttentionBlocks;
using kernels::AttentionSizes;
using kernels::BlockLayout;

// The probabilities of the diagnostic path are stored at full size.
constexpr int64_t kMaxProbabilityElements = int64_t{1} << 28;

DType accumulation_dtype(DType value) { return value == DType::Float64 ? DType::Float64 : DType::Float32; }

// A tensor that must broadcast to `target` (and have no more dims than it).
void check_broadcasts_to(const char* op, const char* name, const Tensor& t, const Shape& target, const char* layout) {
  bool ok = t.dim() <= static_cast<int>(target.size());
  for (int d = 0; ok && d < t.dim(); ++d) {
    int64_t size = t.shape()[d], wanted = target[target.size() - t.dim() + d];
    ok = size == wanted || size == 1;
  }
  STRATA_CHECK(ok, "{}: {} {} does not broadcast to {} {}", op, name, t.str(), shape_str(target), layout);
}

void check_float_on(const char* op, const char* name, const Tensor& t, const Tensor& q) {
  detail::check_same_device(op, q, t);
  STRATA_CHECK(is_floating(t.dtype()), "{}: {} {} must have a floating dtype", op, name, t.str());
}

AttentionSizes check_arguments(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                               const AttentionOptions& options) {
  AttentionSizes sizes = detail::check_attention_inputs(op, q, k, v, options.causal, options.scale);
  const Shape scores{sizes.batch, sizes.heads, sizes.length_q, sizes.length_k};
  if (options.bias.defined()) {
    check_float_on(op, "bias", options.bias, q);
    check_broadcasts_to(op, "bias", options.bias, scores, "(batch, heads, Lq, Lk)");
  }
  if (options.sinks.defined()) {
    check_float_on(op, "sinks", options.sinks, q);
    STRATA_CHECK(options.sinks.shape() == Shape{sizes.heads}, "{}: sinks {} must have shape [{}] (heads)", op,
                 options.sinks.str(), sizes.heads);
  }
  if (options.query_temperature.defined()) {
    check_float_on(op, "query_temperature", options.query_temperature, q);
    check_broadcasts_to(op, "query_temperature", options.query_temperature, {sizes.batch, sizes.heads, sizes.length_q},
                        "(batch, heads, Lq)");
  }
  if (options.key_temperature.defined()) {
    check_float_on(op, "key_temperature", options.key_temperature, q);
    check_broadcasts_to(op, "key_temperature", options.key_temperature, {sizes.batch, sizes.kv_heads, sizes.length_k},
                        "(batch, kv_heads, Lk)");
  }
  if (options.return_probabilities)
    STRATA_CHECK(shape_numel(scores) <= kMaxProbabilityElements,
                 "{}: return_probabilities needs {} elements ({}), more than the {} allowed", op, shape_numel(scores),
                 shape_str(scores), kMaxProbabilityElements);
  return sizes;
}

void check_layout(const char* op, const BlockLayout& layout, const AttentionSizes& sizes, const Tensor& q) {
  STRATA_CHECK(layout.defined(), "{}: the block layout is undefined", op);
  STRATA_CHECK(layout.query_length() == sizes.length_q && layout.key_length() == sizes.length_k,
               "{}: {} was built for Lq = {}, Lk = {}, but q {} has Lq = {} and k has Lk = {}", op, layout.str(),
               layout.query_length(), layout.key_length(), q.str(), sizes.length_q, sizes.length_k);
  STRATA_CHECK(layout.heads() == 1 || layout.heads() == sizes.heads,
               "{}: {} must have 1 head or {} (the heads of q {})", op, layout.str(), sizes.heads, q.str());
  STRATA_CHECK(layout.device() == q.device(), "{}: {} must be on {} like q (move it once with BlockLayout::to)", op,
               layout.str(), q.device().str());
}

AttentionBlocks blocks_of(const BlockLayout& layout) {
  AttentionBlocks blocks;
  if (!layout.defined()) return blocks;
  blocks.block_size = layout.block_size();
  blocks.heads = layout.heads();
  blocks.query_blocks = layout.query_blocks();
  blocks.key_blocks = layout.key_blocks();
  blocks.row_offsets = layout.row_offsets().data<int32_t>();
  blocks.column_indices = layout.present_blocks() > 0 ? layout.column_indices().data<int32_t>() : nullptr;
  blocks.column_offsets = layout.column_offsets().data<int32_t>();
  blocks.row_indices = layout.present_blocks() > 0 ? layout.row_indices().data<int32_t>() : nullptr;
  return blocks;
}

// x * t broadcast over the last dim of x (head_dim), computed in the accumulation dtype.
Tensor scaled_rows(const Tensor& x, const Tensor& temperature) {
  if (!temperature.defined()) return x;
  DType acc = accumulation_dtype(x.dtype());
  return cast(mul(cast(x, acc), unsqueeze(cast(temperature, acc), -1)), x.dtype());
}

// What the kernels read, contiguous, and what the backward pass needs besides.
struct Saved {
  AttentionSizes sizes;
  BlockLayout layout;  // undefined for dense attention
  Tensor q, k, v;
  Tensor bias;         // in the accumulation dtype, any strides
  Shape bias_strides;  // of `bias` broadcast to (batch, heads, Lq, Lk)
  Tensor sinks;        // (heads), accumulation dtype
};

template <class Acc>
kernels::AttentionBias<Acc> bias_of(const Saved& t) {
  kernels::AttentionBias<Acc> bias;
  if (!t.bias.defined()) return bias;
  bias.data = static_cast<const Acc*>(t.bias.data_ptr());
  bias.stride_batch = t.bias_strides[0];
  bias.stride_head = t.bias_strides[1];
  bias.stride_q = t.bias_strides[2];
  bias.stride_k = t.bias_strides[3];
  return bias;
}

template <class T>
kernels::AttentionInputs<T, T> cpu_inputs(const Saved& t) {
  return {t.q.data<T>(), t.k.data<T>(), t.v.data<T>(), bias_of<T>(t), t.sinks.defined() ? t.sinks.data<T>() : nullptr,
          {}};
}

#ifdef STRATA_WITH_CUDA
kernels::AttentionInputs<void, float> cuda_inputs(const Saved& t) {
  return {t.q.data_ptr(), t.k.data_ptr(), t.v.data_ptr(), bias_of<float>(t),
          t.sinks.defined() ? t.sinks.data<float>() : nullptr, {}};
}
#endif

using detail::for_cpu_dtype;

void forward(const char* op, const Saved& t, const Tensor& out, const Tensor& lse) {
  const AttentionBlocks blocks = blocks_of(t.layout);
  if (t.q.device().is_cpu()) {
    for_cpu_dtype(t.q.dtype(), [&]<class T>(T) {
      kernels::attention_forward_cpu(t.sizes, blocks, cpu_inputs<T>(t), out.data<T>(), lse.data<T>());
    });
    return;
  }
#ifdef STRATA_WITH_CUDA
  bool supported =
      kernels::attention_forward_cuda(t.q.dtype(), t.sizes, blocks, cuda_inputs(t), out.data_ptr(), lse.data<float>());
  STRATA_CHECK(supported, "{}: {} is not supported on CUDA", op, t.q.str());
#endif
}

Tensor probabilities(const char* op, const Saved& t, const Tensor& lse) {
  const AttentionSizes& s = t.sizes;
  const AttentionBlocks blocks = blocks_of(t.layout);
  Tensor p = Tensor::empty({s.batch, s.heads, s.length_q, s.length_k}, lse.dtype(), t.q.device());
  if (t.q.device().is_cpu()) {
    for_cpu_dtype(t.q.dtype(), [&]<class T>(T) {
      kernels::attention_probabilities_cpu(s, blocks, cpu_inputs<T>(t), lse.data<T>(), p.data<T>());
    });
    return p;
  }
#ifdef STRATA_WITH_CUDA
  bool supported =
      kernels::attention_probabilities_cuda(t.q.dtype(), s, blocks, cuda_inputs(t), lse.data<float>(), p.data<float>());
  STRATA_CHECK(supported, "{}: {} is not supported on CUDA", op, t.q.str());
#endif
  return p;
}

// Which of bias and sinks need a gradient, and the shape and dtype it takes.
struct ParameterGrads {
  bool bias = false, sinks = false;
  Shape bias_shape;
  DType bias_dtype = DType::Float32, sinks_dtype = DType::Float32;
};

bool needs_gradient(const Tensor& t) { return t.defined() && (t.requires_grad() || t.grad_fn()); }

// Gradients in the order of the node's inputs (q, k, v, bias, sinks); bias and
// sinks come back in the shape and dtype they were given.
std::vector<Tensor> backward(const char* op, const Saved& t, const Tensor& out, const Tensor& lse,
                             const Tensor& grad_out_given, const Tensor& grad_lse_given, const ParameterGrads& wanted) {
  const AttentionSizes& s = t.sizes;
  const AttentionBlocks blocks = blocks_of(t.layout);
  const Device device = t.q.device();
  const DType value_dtype = t.q.dtype(), acc = lse.dtype();
  Tensor grad_out = grad_out_given.to(value_dtype).contiguous();
  Tensor grad_lse = grad_lse_given.defined() ? grad_lse_given.to(acc).contiguous() : Tensor();
  Tensor delta = Tensor::empty(lse.shape(), acc, device);
  Tensor dq = Tensor::empty(t.q.shape(), value_dtype, device);
  Tensor dk = Tensor::empty(t.k.shape(), value_dtype, device);
  Tensor dv = Tensor::empty(t.v.shape(), value_dtype, device);
  const bool bias_grad = wanted.bias;
  Tensor dbias = bias_grad ? Tensor::zeros({s.batch, s.heads, s.length_q, s.length_k}, acc, device) : Tensor();

  if (device.is_cpu()) {
    for_cpu_dtype(value_dtype, [&]<class T>(T) {
      kernels::AttentionGrads<T, T> grads{dq.data<T>(), dk.data<T>(), dv.data<T>(),
                                          bias_grad ? dbias.data<T>() : nullptr, nullptr};
      kernels::attention_backward_cpu(s, blocks, cpu_inputs<T>(t), out.data<T>(), lse.data<T>(), grad_out.data<T>(),
                                      grad_lse.defined() ? grad_lse.data<T>() : nullptr, delta.data<T>(), grads);
    });
  } else {
#ifdef STRATA_WITH_CUDA
    kernels::AttentionGrads<void, float> grads{dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                               bias_grad ? dbias.data<float>() : nullptr, nullptr};
    Tensor dq_accumulator = Tensor::empty(t.q.shape(), DType::Float32, device);
    bool supported =
        kernels::attention_backward_cuda(value_dtype, s, blocks, cuda_inputs(t), out.data_ptr(), lse.data<float>(),
                                         grad_out.data_ptr(), grad_lse.defined() ? grad_lse.data<float>() : nullptr,
                                         delta.data<float>(), dq_accumulator.data<float>(), grads);
    STRATA_CHECK(supported, "{} backward: {} is not supported on CUDA", op, t.q.str());
#endif
  }

  Tensor bias_grad_out, sinks_grad_out;
  if (bias_grad) bias_grad_out = cast(detail::reduce_to_shape(dbias, wanted.bias_shape), wanted.bias_dtype);
  if (wanted.sinks) {
    // dsink_h = -sum over (batch, i) of exp(sink_h - lse_i) delta_i.
    Tensor sink_share = exp(sub(reshape(t.sinks, {1, s.heads, 1}), lse));
    sinks_grad_out = cast(neg(sum(mul(sink_share, delta), {0, 2})), wanted.sinks_dtype);
  }
  return {dq, dk, dv, bias_grad_out, sinks_grad_out};
}

AttentionResult attention_op(const char* op, const Tensor& q_given, const Tensor& k_given, const Tensor& v,
                             const BlockLayout& layout, const AttentionOptions& options) {
  // Autocast (ops::AutocastGuard): float32 CUDA q, k and v run on the bfloat16
  // tensor-core kernels, cast on the tape; out returns in float32, as matmul's does.
  if (std::optional<DType> low = autocast_dtype(); low && q_given.device().is_cuda() &&
                                                  q_given.dtype() == DType::Float32 &&
                                                  k_given.dtype() == DType::Float32 && v.dtype() == DType::Float32) {
    AttentionResult result = attention_op(op, cast(q_given, *low), cast(k_given, *low), cast(v, *low), layout, options);
    result.out = cast(result.out, DType::Float32);
    return result;
  }
  Saved t;
  t.sizes = check_arguments(op, q_given, k_given, v, options);
  if (layout.defined()) check_layout(op, layout, t.sizes, q_given);
  t.layout = layout;
  const AttentionSizes& s = t.sizes;
  const DType acc = accumulation_dtype(q_given.dtype());

  // The temperatures scale q and k before the kernel (on the tape when they need grad).
  const Tensor q = scaled_rows(q_given, options.query_temperature);
  const Tensor k = scaled_rows(k_given, options.key_temperature);
  t.q = q.contiguous();
  t.k = k.contiguous();
  t.v = v.contiguous();
  if (options.bias.defined()) {
    t.bias = options.bias.to(acc);
    t.bias_strides = detail::broadcast_strides(t.bias, {s.batch, s.heads, s.length_q, s.length_k});
  }
  if (options.sinks.defined()) t.sinks = options.sinks.to(acc).contiguous();

  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  Tensor lse = Tensor::empty({s.batch, s.heads, s.length_q}, acc, q.device());
  forward(op, t, out, lse);

  AttentionResult result;
  if (options.return_probabilities) result.probabilities = probabilities(op, t, lse);
  // Handles without autograd history (record gives the results fresh ones), so the
  // closure does not keep its own node alive.
  const Tensor saved_out = out, saved_lse = lse;
  ParameterGrads wanted;
  wanted.bias = needs_gradient(options.bias);
  wanted.sinks = needs_gradient(options.sinks);
  if (options.bias.defined()) {
    wanted.bias_shape = options.bias.shape();
    wanted.bias_dtype = options.bias.dtype();
  }
  if (options.sinks.defined()) wanted.sinks_dtype = options.sinks.dtype();
  std::vector<Tensor> outputs{out};
  if (options.return_lse) outputs.push_back(lse);
  autograd::record(op, {q, k, v, options.bias, options.sinks}, outputs,
                   [op, t, saved_out, saved_lse, wanted](const std::vector<Tensor>& grads) {
                     return backward(op, t, saved_out, saved_lse, grads[0], grads.size() > 1 ? grads[1] : Tensor(),
                                     wanted);
                   });
  result.out = outputs[0];
  if (options.return_lse) result.lse = outputs[1];
  return result;
}

// t broadcast to `full` (its leading dims first), viewed with the first two dims as
// one: (B, H, ...) -> (1, B * H, ...). Differentiable; copies when t broadcasts.
Tensor fold_batch_into_heads(const Tensor& t, const Shape& full) {
  if (!t.defined()) return t;
  STRATA_CHECK(t.dim() <= static_cast<int>(full.size()), "block_sparse_attention: {} does not broadcast to {}", t.str(),
               shape_str(full));
  Shape padded(full.size() - t.dim(), 1);
  padded.insert(padded.end(), t.shape().begin(), t.shape().end());
  Tensor expanded = expand(reshape(t, padded), full);
  Shape folded{1, full[0] * full[1]};
  folded.insert(folded.end(), full.begin() + 2, full.end());
  return reshape(expanded, folded);
}

// A layout with one set of rows per sequence: q (B, H, Lq, d) runs as (1, B * H, Lq,
// d) against k, v (1, B * kv_heads, Lk, d), whose GQA mapping (b H + h) / (H /
// kv_heads) = b kv_heads + h / (H / kv_heads) is the per-sequence one, with the
// layout read as B * H heads; bias, sinks and temperatures are broadcast and folded
// the same way, and the results unfolded.
AttentionResult batched_layout_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                         const BlockLayout& layout, const AttentionOptions& options) {
  detail::check_defined(op, q, "q");
  detail::check_defined(op, k, "k");
  STRATA_CHECK(q.dim() == 4 && k.dim() == 4 && q.size(0) == layout.batches() && q.size(1) == layout.heads() &&
                   k.size(0) == layout.batches(),
               "{}: {} needs q (batch = {}, heads = {}, Lq, d) and k (batch = {}, kv_heads, Lk, d), got q {} and k {}",
               op, layout.str(), layout.batches(), layout.heads(), layout.batches(), q.str(), k.str());
  const int64_t batch = q.size(0), heads = q.size(1), kv_heads = k.size(1);
  const int64_t length_q = q.size(2), length_k = k.size(2);
  AttentionOptions folded = options;
  folded.bias = fold_batch_into_heads(options.bias, {batch, heads, length_q, length_k});
  if (options.sinks.defined()) {
    STRATA_CHECK(options.sinks.shape() == Shape{heads}, "{}: sinks {} must have shape [{}] (heads)", op,
                 options.sinks.str(), heads);
    folded.sinks = reshape(fold_batch_into_heads(options.sinks, {batch, heads}), {batch * heads});
  }
  folded.query_temperature = fold_batch_into_heads(options.query_temperature, {batch, heads, length_q});
  folded.key_temperature = fold_batch_into_heads(options.key_temperature, {batch, kv_heads, length_k});
  AttentionResult result =
      attention_op(op, fold_batch_into_heads(q, q.shape()), fold_batch_into_heads(k, k.shape()),
                   fold_batch_into_heads(v, v.shape()), layout.fold_batches(), folded);
  result.out = reshape(result.out, q.shape());
  if (result.lse.defined()) result.lse = reshape(result.lse, {batch, heads, length_q});
  if (result.probabilities.defined())
    result.probabilities = reshape(result.probabilities, {batch, heads, length_q, length_k});
  return result;
}

}  // namespace

AttentionResult attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options) {
  return attention_op("attention", q, k, v, BlockLayout(), options);
}

AttentionResult block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const kernels::BlockLayout& layout, const AttentionOptions& options) {
  STRATA_CHECK(layout.defined(), "block_sparse_attention: the block layout is undefined");
  if (layout.batches() == 1) return attention_op("block_sparse_attention", q, k, v, layout, options);
  return batched_layout_attention("block_sparse_attention", q, k, v, layout, options);
}

}  // namespace strata::ops
