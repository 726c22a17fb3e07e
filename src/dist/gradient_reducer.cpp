#include "strata/dist/gradient_reducer.h"

#include <algorithm>
#include <deque>

#include "strata/core/memory.h"

namespace strata::dist {

struct GradientReducer::State {
  struct Bucket {
    std::vector<size_t> members;   // parameter indices
    std::vector<int64_t> offsets;  // where each member's gradient starts in the buffer
    DType dtype = DType::Float32;  // the members'
    int64_t values = 0;            // gradient elements; one presence flag per member follows
    Tensor buffer;                 // (values + members) elements
    size_t ready = 0;              // members whose gradient of this pass is complete
    bool launched = false;
    bool missing_here = false;     // some member had no gradient on this rank
    std::shared_ptr<Work> work;

    Tensor slot(const Tensor& parameter, size_t k) const {
      return buffer.as_strided(parameter.shape(), contiguous_strides(parameter.shape()), buffer.offset() + offsets[k]);
    }
    Tensor flag(size_t k) const {
      return buffer.as_strided({1}, {1}, buffer.offset() + values + static_cast<int64_t>(k));
    }
  };

  // A reduced pass whose timings are read in take_stats.
  struct TimedPass {
    std::vector<std::shared_ptr<Work>> works;
    std::shared_ptr<Mark> backward_end;
    int64_t bytes = 0;
  };

  std::vector<Tensor> parameters;
  std::shared_ptr<Communicator> communicator;
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of;  // per parameter
  std::vector<char> ready;        // per parameter, in the current pass
  bool reducing = false;
  size_t next_bucket = 0;         // buckets start strictly in this order
  std::deque<TimedPass> timed;

  void on_ready(size_t index) {
    if (!reducing) return;
    Bucket& bucket = buckets[bucket_of[index]];
    if (ready[index]) {
      // Autograd completed this gradient once already in this pass: it is still the
      // same accumulated tensor, unless its bucket has left.
      STRATA_CHECK(!bucket.launched,
                   "GradientReducer: parameter {} received more gradient after its bucket was all-reduced (is it "
                   "used both inside and outside an activation-checkpointed block?)",
                   parameters[index].name());
      return;
    }
    ready[index] = 1;
    ++bucket.ready;
    launch_ready_buckets();
  }

  void launch_ready_buckets() {
    while (next_bucket < buckets.size() && buckets[next_bucket].ready == buckets[next_bucket].members.size())
      launch(buckets[next_bucket++]);
  }

  void launch(Bucket& bucket) {
    bucket.buffer.as_strided({static_cast<int64_t>(bucket.members.size())}, {1}, bucket.buffer.offset() + bucket.values)
        .fill_(1.0);
    bucket.missing_here = false;
    for (size_t k = 0; k < bucket.members.size(); ++k) {
      const Tensor& parameter = parameters[bucket.members[k]];
      Tensor grad = parameter.grad();
      Tensor slot = bucket.slot(parameter, k);
      if (grad.defined()) {
        slot.copy_(grad);
      } else {
        slot.zero_();
        bucket.flag(k).zero_();
        bucket.missing_here = true;
      }
    }
    bucket.work = communicator->all_reduce_async(bucket.buffer, ReduceOp::Avg, /*timed=*/true);
    bucket.launched = true;
  }
};

GradientReducer::GradientReducer(const std::vector<Tensor>& parameters, std::shared_ptr<Communicator> communicator,
                                 int64_t bucket_bytes)
    : state_(std::make_shared<State>()) {
  STRATA_CHECK(communicator != nullptr, "GradientReducer: no communicator");
  STRATA_CHECK(bucket_bytes > 0, "GradientReducer: bucket size must be positive, got {} bytes", bucket_bytes);
  State& s = *state_;
  s.parameters = parameters;
  s.communicator = std::move(communicator);
  s.bucket_of.resize(parameters.size());
  s.ready.assign(parameters.size(), 0);
  int64_t bucket_size = 0;
  for (size_t i = parameters.size(); i-- > 0;) {
    const Tensor& p = parameters[i];
    STRATA_CHECK(p.requires_grad() && p.is_leaf(), "GradientReducer: parameter {} ({}) is not a leaf that requires grad",
                 p.name(), p.str());
    STRATA_CHECK(p.device() == s.communicator->device(), "GradientReducer: parameter {} is {}, but the communicator "
                 "works on {}", p.name(), p.str(), s.communicator->device().str());
    int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    bool fits = !s.buckets.empty() && s.buckets.back().dtype == p.dtype() && bucket_size + bytes <= bucket_bytes;
    if (!fits) {
      s.buckets.emplace_back();
      s.buckets.back().dtype = p.dtype();
      bucket_size = 0;
    }
    State::Bucket& bucket = s.buckets.back();
    bucket.members.push_back(i);
    bucket.offsets.push_back(bucket.values);
    bucket.values += p.numel();
    bucket_size += bytes;
    s.bucket_of[i] = s.buckets.size() - 1;
  }
  for (State::Bucket& bucket : s.buckets)
    bucket.buffer = Tensor::zeros({bucket.values + static_cast<int64_t>(bucket.members.size())}, bucket.dtype,
                                  s.communicator->device());
  std::weak_ptr<State> weak = state_;
  for (size_t i = 0; i < parameters.size(); ++i) {
    Tensor p = parameters[i];
    p.register_grad_hook([weak, i](const Tensor&) {
      if (auto state = weak.lock()) state->on_ready(i);
    });
  }
}

// Nothing to wait for: an operation in flight keeps its bucket's storage alive
// (Gloo's task holds the tensor; NCCL's Work orders the compute stream after it).
GradientReducer::~GradientReducer() = default;

void GradientReducer::prepare_backward(bool reduce) {
  State& s = *state_;
  STRATA_CHECK(!s.reducing, "GradientReducer: the previous reducing backward pass was never finish()ed");
  s.reducing = reduce;
  if (!reduce) return;
  std::fill(s.ready.begin(), s.ready.end(), 0);
  for (State::Bucket& bucket : s.buckets) {
    bucket.ready = 0;
    bucket.launched = false;
    bucket.work.reset();
  }
  s.next_bucket = 0;
}

void GradientReducer::finish() {
  State& s = *state_;
  STRATA_CHECK(s.reducing, "GradientReducer::finish: no reducing backward pass was prepared (prepare_backward(true))");
  State::TimedPass pass;
  pass.backward_end = s.communicator->mark();
  // Parameters this pass gave no gradient still take part, with what they have.
  for (size_t i = 0; i < s.parameters.size(); ++i)
    if (!s.ready[i]) {
      s.ready[i] = 1;
      ++s.buckets[s.bucket_of[i]].ready;
    }
  s.launch_ready_buckets();
  s.reducing = false;
  for (State::Bucket& bucket : s.buckets) {
    bucket.work->wait();
    pass.works.push_back(bucket.work);
    pass.bytes += bucket.buffer.numel() * static_cast<int64_t>(bucket.buffer.element_size());
    // Presence flags, read only where this rank lacked a gradient: otherwise every
    // member has one here, hence somewhere.
    std::vector<float> present;
    if (bucket.missing_here)
      present = bucket.buffer.as_strided({static_cast<int64_t>(bucket.members.size())}, {1},
                                         bucket.buffer.offset() + bucket.values)
                    .to_vector<float>();
    for (size_t k = 0; k < bucket.members.size(); ++k) {
      Tensor parameter = s.parameters[bucket.members[k]];
      Tensor grad = parameter.grad();
      Tensor slot = bucket.slot(parameter, k);
      if (grad.defined()) {
        grad.copy_(slot);
      } else if (present[k] > 0) {
        parameter.set_grad(slot.clone());
      }
    }
  }
  s.timed.push_back(std::move(pass));
  // Bounded, should nobody read the timings.
  if (s.timed.size() > 1000) s.timed.pop_front();
}

GradientReducer::Stats GradientReducer::take_stats() {
  State& s = *state_;
  if (s.communicator->device().is_cuda()) cuda::synchronize();
  Stats stats;
  for (State::TimedPass& pass : s.timed) {
    double last_end = 0;
    for (const auto& work : pass.works) {
      stats.communication_ms += work->duration_ms();
      last_end = std::max(last_end, work->ended_after_ms(*pass.backward_end));
    }
    stats.exposed_ms += last_end;
    stats.bytes += pass.bytes;
    ++stats.passes;
  }
  s.timed.clear();
  return stats;
}

int GradientReducer::bucket_count() const { return static_cast<int>(state_->buckets.size()); }

std::vector<std::vector<size_t>> GradientReducer::bucket_layout() const {
  std::vector<std::vector<size_t>> layout;
  for (const State::Bucket& bucket : state_->buckets) layout.push_back(bucket.members);
  return layout;
}

}  // namespace strata::dist
