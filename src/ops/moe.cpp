// The mixture-of-experts ops of strata/ops/moe.h. The router is composed of
// differentiable ops (softmax or sigmoid, gather, the auxiliary losses) around two
// raw kernels that produce integers: top-k and the permutation (kernels/moe/). The
// row moves of dispatch and combine, the grouped GEMM (kernels/grouped_gemm/) and the
// product-key value bag (kernels/product_key/) are single nodes whose backward calls
// the paired kernels directly:
//   dispatch:       forward gathers rows; backward is a combine with unit weights
//   combine:        forward sums weighted rows; backward gathers scaled rows (for
//                   expert_out) and takes one dot product per choice (for weights)
//   grouped_linear: backward is the same grouped product against W (for x) and a
//                   per-expert product over the group's rows (for W)
// Saved for backward: the contiguous operands (detached) and the index tensors; no
// activation is recomputed.
#include "strata/ops/moe.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <optional>

#include "kernels/grouped_gemm/grouped_gemm_cpu.h"
#include "kernels/moe/moe_cpu.h"
#include "kernels/product_key/product_key_cpu.h"
#include "ops/op_utils.h"
#include "strata/autograd/autograd.h"
#include "strata/ops/ops.h"

#ifdef STRATA_WITH_CUDA
#include "kernels/grouped_gemm/grouped_gemm_cuda.h"
#include "kernels/moe/moe_cuda.h"
#include "kernels/product_key/product_key_cuda.h"
#endif

namespace strata::ops {

namespace {

using detail::for_cpu_dtype;

template <class T>
const T* optional_pointer(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

void check_matrix(const char* op, const char* name, const Tensor& t, const char* layout) {
  detail::check_defined(op, t, name);
  STRATA_CHECK(t.dim() == 2, "{}: {} {} must be {}", op, name, t.str(), layout);
}

#ifdef STRATA_WITH_CUDA
// Reports an unsupported dtype from a CUDA launcher.
void check_supported(bool supported, const char* op, const Tensor& t) {
  STRATA_CHECK(supported, "{}: {} is not supported on CUDA", op, t.str());
}
#endif

// ---- raw row moves (no autograd) ---------------------------------------------------

// Routing weights as the row kernels take them: the activations' dtype on the CPU,
// float32 on CUDA; contiguous.
Tensor kernel_weights(const Tensor& weights, const Tensor& activations) {
  return weights.to(activations.device().is_cpu() ? activations.dtype() : DType::Float32).contiguous();
}

// (rows, dim): out[r] = scale[a] * source[a / top_k] for a = sorted_assignment[r].
Tensor gather_rows(const Tensor& source, const Tensor& sorted_assignment, const Tensor& scale, int64_t rows,
                   int64_t top_k) {
  const int64_t dim = source.size(1);
  Tensor out = Tensor::empty({rows, dim}, source.dtype(), source.device());
  if (source.device().is_cpu()) {
    for_cpu_dtype(source.dtype(), [&]<class T>(T) {
      kernels::moe_gather_rows_cpu<T>(source.data<T>(), sorted_assignment.data<int32_t>(), optional_pointer<T>(scale),
                                      rows, top_k, dim, out.data<T>());
    });
  } else {
#ifdef STRATA_WITH_CUDA
    check_supported(kernels::moe_gather_rows_cuda(source.dtype(), source.data_ptr(), sorted_assignment.data<int32_t>(),
                                                  optional_pointer<float>(scale), rows, top_k, dim, out.data_ptr()),
                    "moe gather rows", source);
#endif
  }
  return out;
}

// (tokens, dim): out[t] = sum_j weights[t, j] * source[row_of[t, j]] over row_of >= 0.
Tensor combine_rows(const Tensor& source, const Tensor& row_of, const Tensor& weights, int64_t tokens, int64_t top_k) {
  const int64_t dim = source.size(1);
  Tensor out = Tensor::empty({tokens, dim}, source.dtype(), source.device());
  if (source.device().is_cpu()) {
    for_cpu_dtype(source.dtype(), [&]<class T>(T) {
      kernels::moe_combine_rows_cpu<T>(source.data<T>(), row_of.data<int32_t>(), optional_pointer<T>(weights), tokens,
                                       top_k, dim, out.data<T>());
    });
  } else {
#ifdef STRATA_WITH_CUDA
    check_supported(kernels::moe_combine_rows_cuda(source.dtype(), source.data_ptr(), row_of.data<int32_t>(),
                                                   optional_pointer<float>(weights), tokens, top_k, dim,
                                                   out.data_ptr()),
                    "moe combine rows", source);
#endif
  }
  return out;
}

// (tokens, top_k) in the kernel weight dtype: <grad_out[t], source[row_of[t, j]]>, 0 where row_of < 0.
Tensor combine_weight_grad(const Tensor& grad_out, const Tensor& source, const Tensor& row_of, int64_t tokens,
                           int64_t top_k) {
  const int64_t dim = source.size(1);
  const bool cpu = source.device().is_cpu();
  Tensor grad_weights = Tensor::empty({tokens, top_k}, cpu ? source.dtype() : DType::Float32, source.device());
  if (cpu) {
    for_cpu_dtype(source.dtype(), [&]<class T>(T) {
      kernels::moe_combine_weight_grad_cpu<T>(grad_out.data<T>(), source.data<T>(), row_of.data<int32_t>(), tokens,
                                              top_k, dim, grad_weights.data<T>());
    });
  } else {
#ifdef STRATA_WITH_CUDA
    check_supported(kernels::moe_combine_weight_grad_cuda(source.dtype(), grad_out.data_ptr(), source.data_ptr(),
                                                          row_of.data<int32_t>(), tokens, top_k, dim,
                                                          grad_weights.data<float>()),
                    "moe combine weight gradient", source);
#endif
  }
  return grad_weights;
}

// ---- top-k and the permutation -------------------------------------------------------

// values (rows, n) contiguous-or-not, checked by the caller -> (rows, k) int32.
Tensor topk_raw(const Tensor& values, int64_t k) {
  Tensor v = values.contiguous();
  const int64_t rows = v.size(0), n = v.size(1);
  Tensor indices = Tensor::empty({rows, k}, DType::Int32, v.device());
  if (v.device().is_cpu()) {
    for_cpu_dtype(v.dtype(),
                  [&]<class T>(T) { kernels::topk_cpu<T>(v.data<T>(), rows, n, k, indices.data<int32_t>()); });
  } else {
#ifdef STRATA_WITH_CUDA
    check_supported(kernels::topk_cuda(v.dtype(), v.data_ptr(), rows, n, k, indices.data<int32_t>()), "topk_indices",
                    v);
#endif
  }
  return indices;
}

// Fills the permutation fields of `routing` from routing.expert_indices.
void build_permutation(MoERouting& routing, int64_t tokens, Device device) {
  const int64_t assignments = tokens * routing.top_k, experts = routing.experts;
  routing.expert_offsets = Tensor::empty({experts + 1}, DType::Int64, device);
  routing.expert_counts = Tensor::empty({experts}, DType::Int64, device);
  routing.assignment_row = Tensor::empty({tokens, routing.top_k}, DType::Int32, device);
  routing.dropped = Tensor::empty({tokens, routing.top_k}, DType::Bool, device);
  Tensor sorted = Tensor::empty({assignments}, DType::Int32, device);
  if (device.is_cpu()) {
    kernels::moe_permutation_cpu(routing.expert_indices.data<int32_t>(), assignments, experts, routing.capacity,
                                 routing.expert_offsets.data<int64_t>(), routing.expert_counts.data<int64_t>(),
                                 sorted.data<int32_t>(), routing.assignment_row.data<int32_t>(),
                                 routing.dropped.data<bool>());
  } else {
#ifdef STRATA_WITH_CUDA
    Tensor workspace =
        Tensor::empty({kernels::moe_permutation_cuda_workspace(assignments, experts)}, DType::Int32, device);
    kernels::moe_permutation_cuda(routing.expert_indices.data<int32_t>(), assignments, experts, routing.capacity,
                                  routing.expert_offsets.data<int64_t>(), routing.expert_counts.data<int64_t>(),
                                  sorted.data<int32_t>(), routing.assignment_row.data<int32_t>(),
                                  routing.dropped.data<bool>(), workspace.data<int32_t>());
#endif
  }
  routing.rows = routing.expert_offsets.as_strided({1}, {1}, experts).to_vector<int64_t>()[0];
  routing.sorted_assignment = sorted.as_strided({routing.rows}, {1}, 0);
}

// logits (tokens, E) -> (tokens, E) where each token holds the mean logits of its
// chunk (see MoERouteOptions::chunk_size), built from differentiable ops.
Tensor chunk_mean_logits(const Tensor& logits, int64_t chunk_size, int64_t sequence_length) {
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  const int64_t length = sequence_length > 0 ? sequence_length : tokens, sequences = tokens / length;
  const int64_t chunks = (length + chunk_size - 1) / chunk_size, padded = chunks * chunk_size;
  Tensor x = reshape(logits, {sequences, length, experts});
  if (padded > length)
    x = concat({x, Tensor::zeros({sequences, padded - length, experts}, logits.dtype(), logits.device())}, 1);
  Tensor sums = sum(reshape(x, {sequences, chunks, chunk_size, experts}), {2});  // (sequences, chunks, E)
  std::vector<double> inverse_sizes(static_cast<size_t>(chunks));
  for (int64_t c = 0; c < chunks; ++c)
    inverse_sizes[c] = 1.0 / static_cast<double>(std::min(chunk_size, length - c * chunk_size));
  Tensor inverse = Tensor::from_vector<double>(inverse_sizes, {1, chunks, 1}).to(logits.dtype()).to(logits.device());
  Tensor means = mul(sums, inverse);
  Tensor per_token = reshape(expand(unsqueeze(means, 2), {sequences, chunks, chunk_size, experts}),
                             {sequences, padded, experts});
  if (padded > length) per_token = slice(per_token, 1, 0, length);
  return reshape(per_token, {tokens, experts});
}

// (E): the fraction of the tokens * k choices that picked each expert.
Tensor choice_fraction(const Tensor& expert_indices, int64_t experts, DType dtype) {
  autograd::NoGradGuard no_grad;
  const int64_t tokens = expert_indices.size(0), top_k = expert_indices.size(1);
  Device device = expert_indices.device();
  Tensor one_hot = scatter_add(Tensor::zeros({tokens, experts}, dtype, device), 1, expert_indices,
                               Tensor::ones({tokens, top_k}, dtype, device));
  return mul(sum(one_hot, {0}), 1.0 / static_cast<double>(tokens * top_k));
}

// Checks that `routing` came from moe_route and fits `tokens` on `device`.
void check_routing(const char* op, const MoERouting& routing, const Tensor& reference) {
  STRATA_CHECK(routing.assignment_row.defined() && routing.sorted_assignment.defined(),
               "{}: the routing is empty (make it with moe_route)", op);
  STRATA_CHECK(routing.assignment_row.device() == reference.device(), "{}: the routing is on {} but {} is not", op,
               routing.assignment_row.device().str(), reference.str());
}

// ---- product-key memory ------------------------------------------------------------

Tensor product_key_value_indices(const Tensor& first, const Tensor& second, const Tensor& best, int64_t n_keys) {
  const int64_t tokens = first.size(0), k = first.size(1);
  Tensor value_index = Tensor::empty({tokens, k}, DType::Int32, first.device());
  if (first.device().is_cpu()) {
    kernels::product_key_value_indices_cpu(first.data<int32_t>(), second.data<int32_t>(), best.data<int32_t>(), tokens,
                                           k, n_keys, value_index.data<int32_t>());
  } else {
#ifdef STRATA_WITH_CUDA
    kernels::product_key_value_indices_cuda(first.data<int32_t>(), second.data<int32_t>(), best.data<int32_t>(),
                                            tokens, k, n_keys, value_index.data<int32_t>());
#endif
  }
  return value_index;
}

// values (n_values, d_value), value_index (tokens, k) int32, weights (tokens, k) ->
// (tokens, d_value): the weighted bag of value rows, with the sparse value gradient.
Tensor value_bag(const Tensor& values, const Tensor& value_index, const Tensor& weights) {
  const char* op = "product_key_memory";
  const int64_t tokens = value_index.size(0), k = value_index.size(1);
  Tensor table = values.contiguous();
  Tensor w = kernel_weights(weights, table);
  Tensor out = combine_rows(table, value_index, w, tokens, k);
  autograd::record(
      op, {values, weights}, out,
      [table = table.detach(), w = w.detach(), value_index, tokens, k, weights_dtype = weights.dtype()](
          const Tensor& grad) {
        Tensor g = grad.contiguous();
        const int64_t dim = table.size(1);
        Tensor grad_values;
        if (table.device().is_cpu()) {
          grad_values = Tensor::zeros(table.shape(), table.dtype(), table.device());
          for_cpu_dtype(table.dtype(), [&]<class T>(T) {
            kernels::product_key_value_grad_cpu<T>(g.data<T>(), value_index.data<int32_t>(), w.data<T>(), tokens, k,
                                                   dim, grad_values.data<T>());
          });
        } else {
#ifdef STRATA_WITH_CUDA
          Tensor accumulator = Tensor::zeros(table.shape(), DType::Float32, table.device());
          check_supported(kernels::product_key_value_grad_cuda(g.dtype(), g.data_ptr(), value_index.data<int32_t>(),
                                                               w.data<float>(), tokens, k, dim,
                                                               accumulator.data<float>()),
                          "product_key_memory backward", g);
          grad_values = accumulator.to(table.dtype());
#endif
        }
        Tensor grad_weights = combine_weight_grad(g, table, value_index, tokens, k).to(weights_dtype);
        return std::vector<Tensor>{grad_values, grad_weights};
      });
  return out;
}

}  // namespace

// ---- public ops ----------------------------------------------------------------------

Tensor topk_indices(const Tensor& values, int64_t k) {
  check_matrix("topk_indices", "values", values, "(rows, n)");
  detail::check_compute_dtype("topk_indices", values);
  const int64_t n = values.size(1);
  STRATA_CHECK(k >= 1 && k <= n, "topk_indices: k = {} must be in 1..{} (the columns of values {})", k, n,
               values.str());
  STRATA_CHECK(n <= INT32_MAX, "topk_indices: values {} has more columns than int32 indices address", values.str());
  return topk_raw(values, k);
}

RouterScoring parse_router_scoring(const std::string& name) {
  if (name == "softmax") return RouterScoring::Softmax;
  if (name == "sigmoid") return RouterScoring::Sigmoid;
  STRATA_FAIL("router scoring '{}' is not one of softmax, sigmoid", name);
}

const char* router_scoring_name(RouterScoring scoring) {
  return scoring == RouterScoring::Softmax ? "softmax" : "sigmoid";
}

MoERouting moe_route(const Tensor& logits, const MoERouteOptions& options) {
  const char* op = "moe_route";
  check_matrix(op, "logits", logits, "(tokens, experts)");
  detail::check_compute_dtype(op, logits);
  const int64_t tokens = logits.size(0), experts = logits.size(1), top_k = options.top_k;
  STRATA_CHECK(tokens >= 1 && experts >= 1, "{}: logits {} must have at least one token and one expert", op,
               logits.str());
  STRATA_CHECK(top_k >= 1 && top_k <= experts, "{}: top_k = {} must be in 1..{} (the experts of logits {})", op, top_k,
               experts, logits.str());
  STRATA_CHECK(std::isfinite(options.capacity_factor) && options.capacity_factor >= 0.0,
               "{}: capacity_factor {} must be 0 (dropless) or positive", op, options.capacity_factor);
  STRATA_CHECK(options.chunk_size >= 1, "{}: chunk_size {} must be positive", op, options.chunk_size);
  STRATA_CHECK(options.sequence_length >= 0 && (options.sequence_length == 0 || tokens % options.sequence_length == 0),
               "{}: sequence_length {} must be 0 or divide the {} tokens of logits {}", op, options.sequence_length,
               tokens, logits.str());
  STRATA_CHECK(tokens * top_k <= INT32_MAX, "{}: {} tokens x top_k {} exceed the int32 assignment indices", op, tokens,
               top_k);
#ifdef STRATA_WITH_CUDA
  if (logits.device().is_cuda())
    STRATA_CHECK(experts <= kernels::kMoeCudaMaxExperts, "{}: {} experts (logits {}) exceed {} on CUDA", op, experts,
                 logits.str(), kernels::kMoeCudaMaxExperts);
#endif

  MoERouting routing;
  routing.experts = experts;
  routing.top_k = top_k;
  const bool softmax_scoring = options.scoring == RouterScoring::Softmax;
  Tensor routed = options.chunk_size > 1 ? chunk_mean_logits(logits, options.chunk_size, options.sequence_length)
                                         : logits;
  routing.expert_indices = topk_raw(routed, top_k);

  Tensor weights;
  if (softmax_scoring && options.renormalize) {
    weights = softmax(gather(routed, 1, routing.expert_indices), -1);  // = the renormalised top-k probabilities
  } else {
    weights = gather(softmax_scoring ? softmax(routed, -1) : sigmoid(routed), 1, routing.expert_indices);
    if (options.renormalize) weights = div(weights, sum(weights, {1}, true));
  }

  if (options.capacity_factor > 0.0)
    routing.capacity = static_cast<int64_t>(
        std::ceil(options.capacity_factor * static_cast<double>(tokens * top_k) / static_cast<double>(experts)));
  build_permutation(routing, tokens, logits.device());
  routing.weights = routing.capacity > 0 ? masked_fill(weights, routing.dropped, 0.0) : weights;

  // The auxiliary losses, in float32 (float64 for float64 logits).
  const DType loss_dtype = logits.dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
  Tensor loss_logits = cast(routed, loss_dtype);
  Tensor probabilities = softmax_scoring ? softmax(loss_logits, -1) : sigmoid(loss_logits);
  if (!softmax_scoring) probabilities = div(probabilities, sum(probabilities, {1}, true));
  routing.router_fraction = choice_fraction(routing.expert_indices, experts, loss_dtype);
  routing.load_balancing_loss =
      mul(sum(mul(mean(probabilities, {0}), routing.router_fraction)), static_cast<double>(experts));
  Tensor log_partition = logsumexp(loss_logits, 1);
  routing.z_loss = mean(mul(log_partition, log_partition));
  return routing;
}

Tensor moe_dispatch(const Tensor& x, const MoERouting& routing) {
  const char* op = "moe_dispatch";
  check_matrix(op, "x", x, "(tokens, d)");
  detail::check_compute_dtype(op, x);
  check_routing(op, routing, x);
  const int64_t tokens = routing.assignment_row.size(0), top_k = routing.top_k;
  STRATA_CHECK(x.size(0) == tokens, "{}: x {} must have one row per routed token ({})", op, x.str(), tokens);
  Tensor out = gather_rows(x.contiguous(), routing.sorted_assignment, Tensor(), routing.rows, top_k);
  autograd::record(op, {x}, out, [assignment_row = routing.assignment_row, tokens, top_k](const Tensor& grad) {
    return std::vector<Tensor>{combine_rows(grad.contiguous(), assignment_row, Tensor(), tokens, top_k)};
  });
  return out;
}

Tensor moe_combine(const Tensor& expert_out, const MoERouting& routing) {
  const char* op = "moe_combine";
  check_matrix(op, "expert_out", expert_out, "(rows, d)");
  detail::check_compute_dtype(op, expert_out);
  check_routing(op, routing, expert_out);
  const int64_t tokens = routing.assignment_row.size(0), top_k = routing.top_k, rows = routing.rows;
  STRATA_CHECK(expert_out.size(0) == rows, "{}: expert_out {} must have one row per kept assignment ({})", op,
               expert_out.str(), rows);
  const Tensor& weights = routing.weights;
  detail::check_defined(op, weights, "routing.weights");
  STRATA_CHECK(weights.shape() == routing.assignment_row.shape(), "{}: routing.weights {} must be (tokens, top_k) = {}",
               op, weights.str(), shape_str(routing.assignment_row.shape()));
  detail::check_same_device(op, expert_out, weights);
  STRATA_CHECK(weights.dtype() == expert_out.dtype() || weights.dtype() == DType::Float32,
               "{}: routing.weights {} must have the dtype of expert_out {} or be float32", op, weights.str(),
               expert_out.str());

  Tensor source = expert_out.contiguous();
  Tensor w = kernel_weights(weights, source);
  Tensor out = combine_rows(source, routing.assignment_row, w, tokens, top_k);
  autograd::record(op, {expert_out, weights}, out,
                   [source = source.detach(), w = w.detach(), sorted = routing.sorted_assignment,
                    assignment_row = routing.assignment_row, rows, tokens, top_k,
                    weights_dtype = weights.dtype()](const Tensor& grad) {
                     Tensor g = grad.contiguous();
                     Tensor grad_expert_out = gather_rows(g, sorted, w, rows, top_k);
                     Tensor grad_weights = combine_weight_grad(g, source, assignment_row, tokens, top_k);
                     return std::vector<Tensor>{grad_expert_out, grad_weights.to(weights_dtype)};
                   });
  return out;
}

namespace {

// out (rows, n) = x (rows, k) times each group's expert matrix (see grouped_gemm_cpu.h).
Tensor grouped_rows_product(const Tensor& x, const Tensor& weight, const Tensor& offsets, int64_t k, int64_t n,
                            bool transpose_weight) {
  const int64_t rows = x.size(0), experts = weight.size(0);
  if (x.device().is_cpu()) {
    Tensor out = Tensor::empty({rows, n}, x.dtype(), x.device());
    for_cpu_dtype(x.dtype(), [&]<class T>(T) {
      kernels::grouped_gemm_rows_cpu<T>(x.data<T>(), weight.data<T>(), offsets.data<int64_t>(), experts, k, n,
                                        transpose_weight, out.data<T>());
    });
    return out;
  }
  Tensor out = Tensor::zeros({rows, n}, x.dtype(), x.device());  // rows outside every group stay zero
#ifdef STRATA_WITH_CUDA
  check_supported(kernels::grouped_gemm_rows_cuda(x.dtype(), x.data_ptr(), weight.data_ptr(), offsets.data<int64_t>(),
                                                  rows, experts, k, n, transpose_weight, out.data_ptr()),
                  "grouped_linear", x);
#endif
  return out;
}

// (experts, n_out, n_in): per expert, grad_out's group^T times x's group.
Tensor grouped_weight_grad(const Tensor& grad_out, const Tensor& x, const Tensor& offsets, int64_t experts) {
  const int64_t n_out = grad_out.size(1), n_in = x.size(1);
  Tensor grad_weight = Tensor::empty({experts, n_out, n_in}, x.dtype(), x.device());
  if (x.device().is_cpu()) {
    for_cpu_dtype(x.dtype(), [&]<class T>(T) {
      kernels::grouped_gemm_weight_grad_cpu<T>(grad_out.data<T>(), x.data<T>(), offsets.data<int64_t>(), experts,
                                               n_out, n_in, grad_weight.data<T>());
    });
  } else {
#ifdef STRATA_WITH_CUDA
    check_supported(kernels::grouped_gemm_weight_grad_cuda(x.dtype(), grad_out.data_ptr(), x.data_ptr(),
                                                           offsets.data<int64_t>(), x.size(0), experts, n_out, n_in,
                                                           grad_weight.data_ptr()),
                    "grouped_linear backward", x);
#endif
  }
  return grad_weight;
}

}  // namespace

Tensor grouped_linear(const Tensor& x_sorted, const Tensor& weight, const Tensor& offsets) {
  const char* op = "grouped_linear";
  check_matrix(op, "x_sorted", x_sorted, "(rows, d_in)");
  detail::check_defined(op, weight, "weight");
  detail::check_defined(op, offsets, "offsets");
  STRATA_CHECK(weight.dim() == 3, "{}: weight {} must be (experts, d_out, d_in)", op, weight.str());
  STRATA_CHECK(offsets.dim() == 1, "{}: offsets {} must be (experts + 1)", op, offsets.str());
  detail::check_compute_dtype(op, x_sorted);
  detail::check_same_dtype(op, x_sorted, weight);
  detail::check_same_device(op, x_sorted, weight);
  detail::check_same_device(op, x_sorted, offsets);
  detail::check_index_dtype(op, offsets);
  const int64_t rows = x_sorted.size(0), experts = weight.size(0), d_out = weight.size(1), d_in = weight.size(2);
  STRATA_CHECK(experts >= 1 && d_out >= 1 && d_in >= 1, "{}: weight {} must not be empty", op, weight.str());
  STRATA_CHECK(x_sorted.size(1) == d_in, "{}: x_sorted {} and weight {} differ in d_in", op, x_sorted.str(),
               weight.str());
  STRATA_CHECK(offsets.size(0) == experts + 1, "{}: offsets {} must have experts + 1 = {} entries for weight {}", op,
               offsets.str(), experts + 1, weight.str());
  if (std::optional<DType> low = autocast_dtype();
      low && x_sorted.device().is_cuda() && x_sorted.dtype() == DType::Float32) {
    // Autocast: the product runs in bfloat16 on the tensor cores and comes back as
    // float32; the casts carry the gradients back to the float32 operands.
    return cast(grouped_linear(cast(x_sorted, *low), cast(weight, *low), offsets), DType::Float32);
  }
  Tensor group_offsets = offsets.to(DType::Int64).contiguous();
  if (group_offsets.device().is_cpu()) {
    const int64_t* o = group_offsets.data<int64_t>();
    STRATA_CHECK(o[0] == 0 && o[experts] == rows, "{}: offsets must run from 0 to the {} rows of x_sorted {}, got {}..{}",
                 op, rows, x_sorted.str(), o[0], o[experts]);
    for (int64_t e = 0; e < experts; ++e)
      STRATA_CHECK(o[e] <= o[e + 1], "{}: offsets decrease at expert {} ({} then {})", op, e, o[e], o[e + 1]);
  }

  Tensor x = x_sorted.contiguous(), w = weight.contiguous();
  Tensor out = grouped_rows_product(x, w, group_offsets, d_in, d_out, true);
  const bool x_needs_grad = x_sorted.requires_grad() || x_sorted.grad_fn() != nullptr;
  const bool weight_needs_grad = weight.requires_grad() || weight.grad_fn() != nullptr;
  autograd::record(op, {x_sorted, weight}, out,
                   [x = x.detach(), w = w.detach(), group_offsets, experts, d_in, d_out, x_needs_grad,
                    weight_needs_grad](const Tensor& grad) {
                     Tensor g = grad.contiguous();
                     Tensor grad_x = x_needs_grad ? grouped_rows_product(g, w, group_offsets, d_out, d_in, false)
                                                  : Tensor();
                     Tensor grad_w = weight_needs_grad ? grouped_weight_grad(g, x, group_offsets, experts) : Tensor();
                     return std::vector<Tensor>{grad_x, grad_w};
                   });
  return out;
}

ProductKeyResult product_key_memory(const Tensor& query, const Tensor& sub_keys_1, const Tensor& sub_keys_2,
                                    const Tensor& values, int64_t top_k) {
  const char* op = "product_key_memory";
  check_matrix(op, "query", query, "(tokens, d_key)");
  check_matrix(op, "sub_keys_1", sub_keys_1, "(n_keys, d_key / 2)");
  check_matrix(op, "sub_keys_2", sub_keys_2, "(n_keys, d_key / 2)");
  check_matrix(op, "values", values, "(n_keys^2, d_value)");
  detail::check_compute_dtype(op, query);
  for (const Tensor* t : {&sub_keys_1, &sub_keys_2, &values}) {
    detail::check_same_dtype(op, query, *t);
    detail::check_same_device(op, query, *t);
  }
  const int64_t tokens = query.size(0), d_key = query.size(1), n_keys = sub_keys_1.size(0), half = d_key / 2;
  STRATA_CHECK(tokens >= 1, "{}: query {} has no tokens", op, query.str());
  STRATA_CHECK(d_key >= 2 && d_key % 2 == 0, "{}: d_key {} of query {} must be even", op, d_key, query.str());
  STRATA_CHECK(sub_keys_1.shape() == Shape({n_keys, half}) && sub_keys_2.shape() == Shape({n_keys, half}),
               "{}: sub_keys_1 {} and sub_keys_2 {} must both be (n_keys, d_key / 2) with d_key {} of query {}", op,
               sub_keys_1.str(), sub_keys_2.str(), d_key, query.str());
  STRATA_CHECK(n_keys >= 1 && n_keys <= 46340, "{}: n_keys {} must be in 1..46340 (n_keys^2 int32 rows)", op, n_keys);
  STRATA_CHECK(values.size(0) == n_keys * n_keys && values.size(1) >= 1,
               "{}: values {} must have n_keys^2 = {} rows (n_keys {} of sub_keys_1 {})", op, values.str(),
               n_keys * n_keys, n_keys, sub_keys_1.str());
  STRATA_CHECK(top_k >= 1 && top_k <= n_keys, "{}: top_k = {} must be in 1..{} (n_keys)", op, top_k, n_keys);

  std::vector<Tensor> halves = split(query, {half, half}, 1);
  Tensor scores_1 = matmul(halves[0], transpose(sub_keys_1, 0, 1));  // (tokens, n_keys)
  Tensor scores_2 = matmul(halves[1], transpose(sub_keys_2, 0, 1));
  Tensor first = topk_raw(scores_1, top_k), second = topk_raw(scores_2, top_k);  // (tokens, k) int32
  // (tokens, k, k): candidate (i, j) scores first[i] + second[j].
  Tensor sums = add(unsqueeze(gather(scores_1, 1, first), 2), unsqueeze(gather(scores_2, 1, second), 1));
  sums = reshape(sums, {tokens, top_k * top_k});
  Tensor best = topk_raw(sums, top_k);

  ProductKeyResult result;
  result.weights = softmax(gather(sums, 1, best), -1);
  result.value_indices = product_key_value_indices(first, second, best, n_keys);
  result.output = value_bag(values, result.value_indices, result.weights);
  return result;
}

}  // namespace strata::ops
