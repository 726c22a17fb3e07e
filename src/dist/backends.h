// Internal: the two communicator back ends and the argument checks they share.
#pragma once

#include <gloo/rendezvous/store.h>

#include <memory>

#include "strata/dist/communicator.h"

namespace strata::dist {

// Throws unless `tensor` is contiguous and on `device`; `what` names the call.
void check_tensor(const char* what, const Tensor& tensor, Device device);
// Throws unless `dtype` can be reduced with `op` (float32, float64, bfloat16,
// int32, int64; Avg for floating types only).
void check_reducible(const char* what, DType dtype, ReduceOp op);
// all_gather / reduce_scatter sizes: output has world_size times input's elements
// (all-gather) or input has world_size times output's (reduce-scatter).
void check_scatter_sizes(const char* what, const Tensor& whole, const Tensor& part, int world_size);

std::shared_ptr<Communicator> make_gloo_communicator(const ConnectOptions& options, gloo::rendezvous::Store& store);
// Throws when Strata was built without CUDA.
std::shared_ptr<Communicator> make_nccl_communicator(const ConnectOptions& options, gloo::rendezvous::Store& store);

// For `strata bench-comm`: one ncclAllReduce (sum) of `tensor` straight on the
// compute stream through the NCCL communicator `communicator`, with none of the
// communicator's own ordering or bookkeeping: the baseline it is measured against.
void plain_nccl_all_reduce(Communicator& communicator, Tensor& tensor);

}  // namespace strata::dist
