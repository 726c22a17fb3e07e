// Argument checks shared by the attention ops (attention.cpp, dynamic_mask_attention.cpp).
#pragma once

#include <optional>

#include "kernels/attention/attention_args.h"
#include "strata/core/tensor.h"

namespace strata::ops::detail {

// q (batch, heads, Lq, head_dim), k and v (batch, kv_heads, Lk, head_dim), heads a
// multiple of kv_heads, one supported dtype on one device; returns their sizes with
// `causal` and the scale (default 1 / sqrt(head_dim)). Errors name op and tensors.
kernels::AttentionSizes check_attention_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                               bool causal, std::optional<double> scale);

}  // namespace strata::ops::detail
