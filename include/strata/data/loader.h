// Batches from a Dataset: shuffled per epoch, sharded across data-parallel ranks,
// built one batch ahead on a background thread, and resumable at any batch.
//
// Order. Epoch e visits the dataset in the order of a seeded permutation
// (seed, e) of its indices (the identity when shuffle is off). That order is cut
// into global batches of batch_size * world_size examples; rank r takes the r-th
// slice of batch_size of each. So the ranks' shards are disjoint, every rank has
// the same number of batches per epoch (the incomplete tail is dropped), and the
// global batches do not depend on how many ranks share them.
//
// Resume. state() is {epoch, position, seed} of the next batch next() will return;
// restore(state) on any Loader of the same dataset, batch size and topology makes
// next() return exactly the batches the saved loader would have returned.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "strata/core/tensor.h"
#include "strata/data/dataset.h"

namespace strata::data {

struct LoaderState {
  int64_t epoch = 0;
  int64_t position = 0;  // batch index within the epoch
  uint64_t seed = 0;
  bool operator==(const LoaderState&) const = default;
};

struct Batch {
  Tensor inputs;   // CPU: int64 (B, T) token ids, or float32 (B, 1, 28, 28) images
  Tensor targets;  // CPU int64: (B, T) with kIgnoreIndex where not scored, or (B) labels
  int64_t epoch = 0;
  int64_t position = 0;  // this batch's index within its epoch
};

class Loader {
 public:
  Loader(std::shared_ptr<const Dataset> dataset, int64_t batch_size, uint64_t seed, int rank = 0, int world_size = 1,
         bool shuffle = true);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  Batch next();
  LoaderState state() const;
  // Continues from `state` (taking its seed); the batch being prefetched is dropped.
  void restore(const LoaderState& state);

  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  // The dataset indices of this rank's batch at (epoch, position) under the current seed.
  std::vector<int64_t> batch_indices(int64_t epoch, int64_t position) const;
  const Dataset& dataset() const { return *dataset_; }

 private:
  std::vector<int64_t> indices_for(const LoaderState& at) const;
  Batch build_batch(const LoaderState& at) const;
  void prefetch_loop();

  std::shared_ptr<const Dataset> dataset_;
  int64_t batch_size_;
  int rank_, world_size_;
  bool shuffle_;
  int64_t batches_per_epoch_;
  ExampleShape shape_;

  // Guarded by mutex_: the next batch to hand out, the background thread's job
  // and its result.
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  LoaderState cursor_;
  std::optional<LoaderState> requested_;  // waiting for the thread to pick it up
  bool building_ = false;                 // the thread is building a batch
  struct Prefetched {
    LoaderState at;
    Batch batch;
    std::exception_ptr error;
  };
  std::optional<Prefetched> ready_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace strata::data
