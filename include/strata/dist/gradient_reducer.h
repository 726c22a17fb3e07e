// GradientReducer: averages parameter gradients over the ranks of a data-parallel
// run while the backward pass is still running.
//
// Buckets. The parameters are cut, in reverse registration order (roughly the
// order the backward pass completes their gradients), into buckets of at most
// bucket_bytes, each of one dtype. A bucket is a flat buffer of its parameters'
// gradients followed by one presence flag per parameter (1 when this rank has a
// gradient for it), so a parameter that no rank touched keeps no gradient, as it
// would in a single process.
//
// Overlap. Each parameter gets a grad hook (Tensor::register_grad_hook), which
// autograd runs once that parameter's gradient of the current backward pass is
// complete. When every parameter of a bucket is ready, the bucket's gradients are
// copied into its buffer and its all-reduce (average) starts asynchronously (on
// Gloo's worker thread, or NCCL's stream) while the backward pass goes on. Buckets
// start strictly in order, so every rank issues the same collectives in the same
// order even when gradients become ready in a different order.
//
// Gradient accumulation: only the backward pass of the last micro-batch reduces
// (prepare_backward(true)); earlier ones accumulate locally (prepare_backward(false)),
// and the hooks of the last pass see the accumulated gradients.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "strata/core/tensor.h"
#include "strata/dist/communicator.h"

namespace strata::dist {

class GradientReducer {
 public:
  // Registers a grad hook on every parameter: build it after the model has been
  // moved to its device (Module::to replaces parameters and refuses hooked ones).
  GradientReducer(const std::vector<Tensor>& parameters, std::shared_ptr<Communicator> communicator,
                  int64_t bucket_bytes = 25 << 20);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Before each backward pass: true when this pass ends the step (its gradients are
  // all-reduced as they become ready), false to accumulate locally.
  void prepare_backward(bool reduce);
  // After the backward pass that reduces: starts the buckets still waiting (with
  // the gradients accumulated so far, zeros where none), waits for all of them,
  // and leaves every parameter's grad the average over ranks. On CUDA the host does
  // not wait: the compute stream does.
  void finish();

  // Communication since the last call: passes reduced, bytes all-reduced, total
  // time of the all-reduces and the part of it not hidden behind the backward pass
  // (from the end of the backward pass to the end of the last bucket). On CUDA this
  // synchronises the compute stream.
  struct Stats {
    int64_t passes = 0;
    int64_t bytes = 0;
    double communication_ms = 0;
    double exposed_ms = 0;
  };
  Stats take_stats();

  int bucket_count() const;
  // The parameter indices of each bucket, in launch order.
  std::vector<std::vector<size_t>> bucket_layout() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace strata::dist
