// The loader: which examples make batch (epoch, position) of a rank, and one
// background thread that builds the next batch while the caller trains on this one.
#include "strata/data/loader.h"

#include <cstring>

#include "data/random.h"
#include "strata/core/error.h"

namespace strata::data {

namespace {

// One permutation per (seed, epoch): a new shuffle every epoch, the same on every rank.
uint64_t epoch_key(uint64_t seed, int64_t epoch) { return mix64(seed ^ mix64(static_cast<uint64_t>(epoch))); }

}  // namespace

Loader::Loader(std::shared_ptr<const Dataset> dataset, int64_t batch_size, uint64_t seed, int rank, int world_size,
               bool shuffle)
    : dataset_(std::move(dataset)), batch_size_(batch_size), rank_(rank), world_size_(world_size), shuffle_(shuffle) {
  STRATA_CHECK(dataset_ != nullptr, "Loader: no dataset given");
  STRATA_CHECK(batch_size_ > 0, "Loader: batch_size must be positive, got {}", batch_size_);
  STRATA_CHECK(world_size_ >= 1 && rank_ >= 0 && rank_ < world_size_, "Loader: rank {} is not in [0, world size {})",
               rank_, world_size_);
  const int64_t global_batch = batch_size_ * world_size_;
  batches_per_epoch_ = dataset_->size() / global_batch;
  STRATA_CHECK(batches_per_epoch_ > 0,
               "Loader: the dataset ({}) has fewer examples than one global batch of {} ({} per rank x {} ranks)",
               dataset_->description(), global_batch, batch_size_, world_size_);
  shape_ = dataset_->example_shape();
  cursor_ = LoaderState{0, 0, seed};
  thread_ = std::thread([this] { prefetch_loop(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

std::vector<int64_t> Loader::batch_indices(int64_t epoch, int64_t position) const {
  uint64_t seed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    seed = cursor_.seed;
  }
  return indices_for(LoaderState{epoch, position, seed});
}

std::vector<int64_t> Loader::indices_for(const LoaderState& at) const {
  IndexPermutation permutation(static_cast<uint64_t>(dataset_->size()), epoch_key(at.seed, at.epoch));
  const int64_t first = (at.position * world_size_ + rank_) * batch_size_;  // this rank's slice of the global batch
  std::vector<int64_t> indices(batch_size_);
  for (int64_t k = 0; k < batch_size_; ++k) {
    const uint64_t slot = static_cast<uint64_t>(first + k);
    indices[k] = static_cast<int64_t>(shuffle_ ? permutation(slot) : slot);
  }
  return indices;
}

Batch Loader::build_batch(const LoaderState& at) const {
  const std::vector<int64_t> indices = indices_for(at);
  Shape input_shape{batch_size_}, target_shape{batch_size_};
  input_shape.insert(input_shape.end(), shape_.inputs.begin(), shape_.inputs.end());
  target_shape.insert(target_shape.end(), shape_.targets.begin(), shape_.targets.end());
  const int64_t input_size = shape_numel(shape_.inputs), target_size = shape_numel(shape_.targets);
  Batch batch{Tensor::empty(input_shape, shape_.input_dtype), Tensor::empty(target_shape, DType::Int64), at.epoch,
              at.position};
  auto* targets = batch.targets.data<int64_t>();
  for (int64_t k = 0; k < batch_size_; ++k) {
    const int64_t index = indices[k];
    Example example = dataset_->example(index);
    const bool pixels = shape_.input_dtype == DType::Float32;
    const size_t given = pixels ? example.pixels.size() : example.inputs.size();
    STRATA_CHECK(given == static_cast<size_t>(input_size) && example.targets.size() == static_cast<size_t>(target_size),
                 "{}: example {} has {} inputs and {} targets, expected {} and {}", dataset_->description(), index,
                 given, example.targets.size(), input_size, target_size);
    if (pixels) {
      std::memcpy(batch.inputs.data<float>() + k * input_size, example.pixels.data(), input_size * sizeof(float));
    } else {
      std::memcpy(batch.inputs.data<int64_t>() + k * input_size, example.inputs.data(), input_size * sizeof(int64_t));
    }
    std::memcpy(targets + k * target_size, example.targets.data(), target_size * sizeof(int64_t));
  }
  return batch;
}

void Loader::prefetch_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    changed_.wait(lock, [&] { return stopping_ || requested_.has_value(); });
    if (stopping_) return;
    const LoaderState at = *requested_;
    requested_.reset();
    building_ = true;
    lock.unlock();
    Prefetched result{at, {}, nullptr};
    try {
      result.batch = build_batch(at);
    } catch (...) {
      result.error = std::current_exception();
    }
    lock.lock();
    building_ = false;
    ready_ = std::move(result);
    changed_.notify_all();
  }
}

// Invariant: a request or a ready batch is always for cursor_ (restore() drains
// both before moving the cursor).
Batch Loader::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!ready_ && !requested_ && !building_) {
    requested_ = cursor_;
    changed_.notify_all();
  }
  changed_.wait(lock, [&] { return ready_.has_value(); });
  Prefetched result = std::move(*ready_);
  ready_.reset();
  if (result.error) std::rethrow_exception(result.error);  // the cursor stays: the next call tries again
  if (++cursor_.position == batches_per_epoch_) {
    cursor_.position = 0;
    ++cursor_.epoch;
  }
  requested_ = cursor_;
  changed_.notify_all();
  return std::move(result.batch);
}

LoaderState Loader::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cursor_;
}

void Loader::restore(const LoaderState& state) {
  STRATA_CHECK(state.epoch >= 0 && state.position >= 0 && state.position < batches_per_epoch_,
               "Loader: cannot resume at epoch {} batch {}: an epoch has {} batches here (did the dataset, batch "
               "size or number of ranks change?)",
               state.epoch, state.position, batches_per_epoch_);
  std::unique_lock<std::mutex> lock(mutex_);
  requested_.reset();
  changed_.wait(lock, [&] { return !building_; });
  ready_.reset();
  cursor_ = state;
  requested_ = cursor_;
  changed_.notify_all();
}

}  // namespace strata::data
