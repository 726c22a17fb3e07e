// dynamic_mask_attention (DMA): argument checks, the keep mask from the key bias
// (kernels/dynamic_mask/: keep_end per key, its maximum per block of keys), then the
// fused attention kernels with that key mask (kernels/attention/, AttentionKeyMask),
// which add the bias, drop the keys a query does not keep and skip the key tiles no
// query of a tile keeps.
//
// The node saves q, k, v (contiguous), the bias in the accumulation dtype, keep_end
// and its block maxima (the selection is not differentiated, so the backward pass
// reuses them), out and lse. The bias gradient comes out of the backward kernel
// already summed over queries and heads, (batch, kv_heads, Lk): no (Lq x Lk) buffer.
#include <limits>

#include "kernels/attention/attention_cpu.h"
#include "kernels/dynamic_mask/dynamic_mask_cpu.h"
#include "ops/attention_checks.h"
#include "ops/op_utils.h"
#include "strata/autograd/autograd.h"
#include "strata/ops/attention.h"
#include "strata/ops/ops.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/attention/attention_cuda.h"
#include "kernels/dynamic_mask/dynamic_mask_cuda.h"
#endif

namespace strata::ops {

namespace {

constexpr const char* kOp = "dynamic_mask_attention";

using kernels::AttentionSizes;

struct Saved {
  AttentionSizes sizes;
  Tensor q, k, v;
  Tensor key_bias;        // (batch, kv_heads, Lk), accumulation dtype, contiguous
  Tensor keep_end;        // (batch, kv_heads, Lk) int32
  Tensor block_keep_end;  // (batch, kv_heads, ceil(Lk / kKeepEndBlock)) int32
};

AttentionSizes check_arguments(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_bias,
                               int64_t keep_window, std::optional<double> scale) {
  detail::check_defined(kOp, key_bias, "key_bias");
  AttentionSizes s = detail::check_attention_inputs(kOp, q, k, v, /*causal=*/true, scale);
  STRATA_CHECK(key_bias.shape() == Shape({s.batch, s.kv_heads, s.length_k}),
               "{}: key_bias {} must be (batch, kv_heads, Lk) = [{}, {}, {}]", kOp, key_bias.str(), s.batch,
               s.kv_heads, s.length_k);
  STRATA_CHECK(is_floating(key_bias.dtype()), "{}: key_bias {} must have a floating dtype", kOp, key_bias.str());
  STRATA_CHECK(keep_window > 0, "{}: keep_window must be positive, got {}", kOp, keep_window);
  STRATA_CHECK(s.length_k < std::numeric_limits<int32_t>::max(), "{}: Lk of k {} does not fit the int32 keep mask",
               kOp, k.str());
  detail::check_same_device(kOp, q, key_bias);
#ifdef STRATA_WITH_CUDA
  if (q.device().is_cuda())
    STRATA_CHECK(s.batch * s.kv_heads <= 65535, "{}: batch * kv_heads = {} exceeds 65535 on CUDA", kOp,
                 s.batch * s.kv_heads);
#endif
  return s;
}

template <class Acc>
kernels::AttentionKeyMask<Acc> key_mask_of(const Saved& t) {
  return {static_cast<const Acc*>(t.key_bias.data_ptr()), t.keep_end.data<int32_t>(),
          t.block_keep_end.data<int32_t>()};
}

using detail::for_cpu_dtype;

void compute_keep_mask(Saved& t, int64_t keep_window) {
  const AttentionSizes& s = t.sizes;
  const int64_t rows = s.batch * s.kv_heads;
  const int64_t blocks = (s.length_k + kernels::kKeepEndBlock - 1) / kernels::kKeepEndBlock;
  const Device device = t.q.device();
  t.keep_end = Tensor::empty({s.batch, s.kv_heads, s.length_k}, DType::Int32, device);
  t.block_keep_end = Tensor::empty({s.batch, s.kv_heads, blocks}, DType::Int32, device);
  if (device.is_cpu()) {
    for_cpu_dtype(t.q.dtype(), [&]<class T>(T) {
      kernels::keep_window_ends_cpu(t.key_bias.data<T>(), rows, s.length_k, keep_window, t.keep_end.data<int32_t>(),
                                    t.block_keep_end.data<int32_t>());
    });
    return;
  }
#ifdef STRATA_WITH_CUDA
  kernels::keep_window_ends_cuda(t.key_bias.data<float>(), rows, s.length_k, keep_window, t.keep_end.data<int32_t>(),
                                 t.block_keep_end.data<int32_t>());
#endif
}

void forward(const Saved& t, const Tensor& out, const Tensor& lse) {
  const kernels::AttentionBlocks dense;
  if (t.q.device().is_cpu()) {
    for_cpu_dtype(t.q.dtype(), [&]<class T>(T) {
      kernels::AttentionInputs<T, T> in{t.q.data<T>(), t.k.data<T>(), t.v.data<T>(), {}, nullptr, key_mask_of<T>(t)};
      kernels::attention_forward_cpu(t.sizes, dense, in, out.data<T>(), lse.data<T>());
    });
    return;
  }
#ifdef STRATA_WITH_CUDA
  kernels::AttentionInputs<void, float> in{t.q.data_ptr(), t.k.data_ptr(), t.v.data_ptr(), {}, nullptr,
                                           key_mask_of<float>(t)};
  bool supported = kernels::attention_forward_cuda(t.q.dtype(), t.sizes, dense, in, out.data_ptr(), lse.data<float>());
  STRATA_CHECK(supported, "{}: {} is not supported on CUDA", kOp, t.q.str());
#endif
}

// Gradients of (q, k, v, key_bias); key_bias's in its own dtype, when wanted.
std::vector<Tensor> backward(const Saved& t, const Tensor& out, const Tensor& lse, const Tensor& grad_out_given,
                             bool bias_wanted, DType bias_dtype) {
  const AttentionSizes& s = t.sizes;
  const kernels::AttentionBlocks dense;
  const Device device = t.q.device();
  const DType value_dtype = t.q.dtype(), acc = lse.dtype();
  Tensor grad_out = grad_out_given.to(value_dtype).contiguous();
  Tensor delta = Tensor::empty(lse.shape(), acc, device);
  Tensor dq = Tensor::empty(t.q.shape(), value_dtype, device);
  Tensor dk = Tensor::empty(t.k.shape(), value_dtype, device);
  Tensor dv = Tensor::empty(t.v.shape(), value_dtype, device);
  Tensor dbias = bias_wanted ? Tensor::empty(t.key_bias.shape(), acc, device) : Tensor();
  if (device.is_cpu()) {
    for_cpu_dtype(value_dtype, [&]<class T>(T) {
      kernels::AttentionInputs<T, T> in{t.q.data<T>(), t.k.data<T>(), t.v.data<T>(), {}, nullptr, key_mask_of<T>(t)};
      kernels::AttentionGrads<T, T> grads{dq.data<T>(), dk.data<T>(), dv.data<T>(), nullptr,
                                          bias_wanted ? dbias.data<T>() : nullptr};
      kernels::attention_backward_cpu(s, dense, in, out.data<T>(), lse.data<T>(), grad_out.data<T>(),
                                      static_cast<const T*>(nullptr), delta.data<T>(), grads);
    });
  } else {
#ifdef STRATA_WITH_CUDA
    kernels::AttentionInputs<void, float> in{t.q.data_ptr(), t.k.data_ptr(), t.v.data_ptr(), {}, nullptr,
                                             key_mask_of<float>(t)};
    kernels::AttentionGrads<void, float> grads{dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), nullptr,
                                               bias_wanted ? dbias.data<float>() : nullptr};
    Tensor dq_accumulator = Tensor::empty(t.q.shape(), DType::Float32, device);
    bool supported = kernels::attention_backward_cuda(value_dtype, s, dense, in, out.data_ptr(), lse.data<float>(),
                                                      grad_out.data_ptr(), nullptr, delta.data<float>(),
                                                      dq_accumulator.data<float>(), grads);
    STRATA_CHECK(supported, "{} backward: {} is not supported on CUDA", kOp, t.q.str());
#endif
  }
  return {dq, dk, dv, bias_wanted ? cast(dbias, bias_dtype) : Tensor()};
}

}  // namespace

Tensor dynamic_mask_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_bias,
                              int64_t keep_window, std::optional<double> scale) {
  // Autocast (ops::AutocastGuard), as ops::attention: float32 CUDA q, k and v run on
  // the 16-bit tensor-core kernels, cast on the tape; the key bias (and so the
  // selection) stays float32, and out returns in float32.
  if (std::optional<DType> low = autocast_dtype(); low && q.device().is_cuda() && q.dtype() == DType::Float32 &&
                                                  k.dtype() == DType::Float32 && v.dtype() == DType::Float32)
    return cast(dynamic_mask_attention(cast(q, *low), cast(k, *low), cast(v, *low), key_bias, keep_window, scale),
                DType::Float32);
  Saved t;
  t.sizes = check_arguments(q, k, v, key_bias, keep_window, scale);
  const DType acc = q.dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
  t.q = q.contiguous();
  t.k = k.contiguous();
  t.v = v.contiguous();
  t.key_bias = key_bias.to(acc).contiguous();
  compute_keep_mask(t, keep_window);

  const AttentionSizes& s = t.sizes;
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  Tensor lse = Tensor::empty({s.batch, s.heads, s.length_q}, acc, q.device());
  forward(t, out, lse);

  const bool bias_wanted = key_bias.requires_grad() || key_bias.grad_fn();
  const DType bias_dtype = key_bias.dtype();
  // Handles without autograd history, so the closure does not keep its own node alive.
  const Tensor saved_out = out, saved_lse = lse;
  autograd::record(kOp, {q, k, v, key_bias}, out, [t, saved_out, saved_lse, bias_wanted, bias_dtype](const Tensor& g) {
    return backward(t, saved_out, saved_lse, g, bias_wanted, bias_dtype);
  });
  return out;
}

}  // namespace strata::ops
