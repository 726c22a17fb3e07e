// The CUDA back end, on NCCL.
//
// Streams. Collectives run on a stream of their own. Each one first makes that
// stream wait for an event recorded on the compute stream (so it sees the data the
// computation produced), and its Work::wait() makes the compute stream wait for
// the event recorded after it (so later kernels see the result). The host never
// blocks, except in barrier().
//
// Failures. The communicator is non-blocking (ncclConfig_t::blocking = 0): calls
// may return ncclInProgress and are then polled to completion. A watchdog thread
// polls ncclCommGetAsyncError and the completion events of the collectives in
// flight; on an asynchronous error, or when the oldest collective has been in
// flight longer than the timeout (a peer died or hangs), it calls ncclCommAbort,
// which ends the kernels waiting for that peer, so the compute stream drains and
// the next call on this rank throws with the reason. Should the process still be
// alive a timeout after the abort (stuck outside Strata's calls), the watchdog
// ends it with that reason: a dead peer never leaves a rank hanging.
#include "dist/backends.h"

#ifdef STRATA_WITH_CUDA

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "strata/core/cuda_stream.h"
#include "strata/core/memory.h"

namespace strata::dist {

namespace {

using Clock = std::chrono::steady_clock;

void check_cuda(cudaError_t status, const char* what) {
  STRATA_CHECK(status == cudaSuccess, "nccl communicator: {} failed: {} ({})", what, cudaGetErrorString(status),
               cudaGetErrorName(status));
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::Float32:
      return ncclFloat32;
    case DType::Float64:
      return ncclFloat64;
    case DType::BFloat16:
      return ncclBfloat16;
    case DType::Float16:
      return ncclFloat16;
    case DType::Int32:
      return ncclInt32;
    case DType::Int64:
      return ncclInt64;
    case DType::UInt8:
    case DType::Bool:
      return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Avg:
      return ncclAvg;
    case ReduceOp::Max:
      return ncclMax;
  }
  return ncclSum;
}

// An owned CUDA event.
using Event = std::shared_ptr<CUevent_st>;
Event make_event(bool timed) {
  cudaEvent_t event = nullptr;
  check_cuda(cudaEventCreateWithFlags(&event, timed ? cudaEventDefault : cudaEventDisableTiming), "cudaEventCreate");
  return Event(event, [](cudaEvent_t e) { cudaEventDestroy(e); });
}

double elapsed_ms(cudaEvent_t from, cudaEvent_t to) {
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, from, to), "cudaEventElapsedTime");
  return ms;
}

class NcclMark : public Mark {
 public:
  NcclMark() : event(make_event(true)) { check_cuda(cudaEventRecord(event.get(), cuda::stream()), "cudaEventRecord"); }
  Event event;
};

class NcclCommunicator;

class NcclWork : public Work {
 public:
  NcclWork(NcclCommunicator* owner, Tensor keep_alive, Event started, Event ended)
      : owner_(owner), keep_alive_(std::move(keep_alive)), started_(std::move(started)), ended_(std::move(ended)) {}
  // Waited for or not, the compute stream may not reuse the tensor's memory before
  // the collective is done with it.
  ~NcclWork() override {
    if (!waited_) cudaStreamWaitEvent(cuda::stream(), ended_.get(), 0);
  }

  void wait() override;
  cudaEvent_t ended() const { return ended_.get(); }
  double duration_ms() override {
    STRATA_CHECK(started_ != nullptr, "nccl: duration_ms of an operation that was not started with timed = true");
    return elapsed_ms(started_.get(), ended_.get());
  }
  double ended_after_ms(const Mark& since) override {
    STRATA_CHECK(started_ != nullptr, "nccl: ended_after_ms of an operation that was not started with timed = true");
    return elapsed_ms(dynamic_cast<const NcclMark&>(since).event.get(), ended_.get());
  }

 private:
  NcclCommunicator* owner_;
  Tensor keep_alive_;
  Event started_, ended_;
  bool waited_ = false;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const ConnectOptions& options, gloo::rendezvous::Store& store)
      : rank_(options.rank), world_size_(options.world_size), device_(options.device), timeout_(options.timeout) {
    cuda::set_device(device_.index);
    ncclUniqueId id;
    const std::string key = "nccl_unique_id";
    if (rank_ == 0) {
      check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
      store.set(key, std::vector<char>(id.internal, id.internal + sizeof id.internal));
    } else {
      store.wait({key}, timeout_);
      std::vector<char> bytes = store.get(key);
      STRATA_CHECK(bytes.size() == sizeof id.internal, "nccl: the unique id from the rendezvous has {} bytes, not {}",
                   bytes.size(), sizeof id.internal);
      std::copy(bytes.begin(), bytes.end(), id.internal);
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t status = ncclCommInitRankConfig(&comm_, world_size_, id, rank_, &config);
    STRATA_CHECK(status == ncclSuccess || status == ncclInProgress, "nccl: ncclCommInitRankConfig failed: {}",
                 ncclGetErrorString(status));
    status = settle(status, Clock::now() + timeout_);
    if (status != ncclSuccess) {
      std::string detail = status == ncclInProgress ? fmt::format("not done within {} s (did every rank start?)",
                                                                  timeout_.count() / 1000.0)
                                                    : describe(status);
      ncclCommAbort(comm_);
      STRATA_FAIL("nccl: initialising rank {} of {} on {}: {}", rank_, world_size_, device_.str(), detail);
    }
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    inputs_ready_ = make_event(false);
    barrier_value_ = Tensor::zeros({1}, DType::Int32, device_);
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(watch_mutex_);
      stopping_ = true;
    }
    watch_changed_.notify_all();
    watchdog_.join();
    // Let this rank's collectives finish (unless it is leaving because of an error:
    // then peers may never finish them), then free the communicator with
    // ncclCommAbort, which unlike ncclCommFinalize waits for no other rank, so a
    // rank that is done never waits for one that is still busy (or dead).
    if (!aborted_.load()) {
      cudaEvent_t drained = nullptr;  // unchecked calls: a destructor must not throw
      if (std::uncaught_exceptions() == 0 && cudaEventCreateWithFlags(&drained, cudaEventDisableTiming) == cudaSuccess) {
        // Blocking collectives run on the compute stream: drain it behind the communicator's own.
        cudaEventRecord(drained, cuda::stream());
        cudaStreamWaitEvent(stream_, drained, 0);
        cudaEventRecord(drained, stream_);
        auto deadline = Clock::now() + timeout_;
        while (cudaEventQuery(drained) == cudaErrorNotReady && Clock::now() < deadline)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        cudaEventDestroy(drained);
      }
      ncclCommAbort(comm_);
    }
    // Returns at once; the stream's resources go when its work is done (or aborted).
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  Device device() const override { return device_; }
  std::string backend() const override { return "nccl"; }

  std::shared_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op, bool timed) override {
    check_tensor("all_reduce", tensor, device_);
    check_reducible("all_reduce", tensor.dtype(), op);
    void* data = tensor.data_ptr();
    return enqueue("all_reduce", tensor, timed, stream_, [&](cudaStream_t stream) {
      return ncclAllReduce(data, data, static_cast<size_t>(tensor.numel()), nccl_type(tensor.dtype()), nccl_op(op),
                           comm_, stream);
    });
  }

  void all_reduce(Tensor& tensor, ReduceOp op) override {
    check_tensor("all_reduce", tensor, device_);
    check_reducible("all_reduce", tensor.dtype(), op);
    void* data = tensor.data_ptr();
    enqueue("all_reduce", tensor, false, cuda::stream(), [&](cudaStream_t stream) {
      return ncclAllReduce(data, data, static_cast<size_t>(tensor.numel()), nccl_type(tensor.dtype()), nccl_op(op),
                           comm_, stream);
    })->wait();
  }

  void broadcast(Tensor& tensor, int root) override {
    check_tensor("broadcast", tensor, device_);
    STRATA_CHECK(root >= 0 && root < world_size_, "broadcast: root {} is not a rank of {}", root, world_size_);
    void* data = tensor.data_ptr();
    enqueue("broadcast", tensor, false, cuda::stream(), [&](cudaStream_t stream) {
      return ncclBroadcast(data, data, static_cast<size_t>(tensor.numel()), nccl_type(tensor.dtype()), root, comm_,
                           stream);
    })->wait();
  }

  void all_gather(const Tensor& input, Tensor& output) override {
    check_tensor("all_gather", input, device_);
    check_tensor("all_gather", output, device_);
    check_scatter_sizes("all_gather", output, input, world_size_);
    enqueue("all_gather", output, false, cuda::stream(), [&](cudaStream_t stream) {
      return ncclAllGather(input.data_ptr(), output.data_ptr(), static_cast<size_t>(input.numel()),
                           nccl_type(input.dtype()), comm_, stream);
    })->wait();
  }

  void reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) override {
    check_tensor("reduce_scatter", input, device_);
    check_tensor("reduce_scatter", output, device_);
    check_reducible("reduce_scatter", input.dtype(), op);
    check_scatter_sizes("reduce_scatter", input, output, world_size_);
    enqueue("reduce_scatter", output, false, cuda::stream(), [&](cudaStream_t stream) {
      return ncclReduceScatter(input.data_ptr(), output.data_ptr(), static_cast<size_t>(output.numel()),
                               nccl_type(input.dtype()), nccl_op(op), comm_, stream);
    })->wait();
  }

  // NCCL has no barrier: a one-element all-reduce the host waits for.
  void barrier() override {
    void* data = barrier_value_.data_ptr();
    auto work = enqueue("barrier", barrier_value_, false, stream_, [&](cudaStream_t stream) {
      return ncclAllReduce(data, data, 1, ncclInt32, ncclSum, comm_, stream);
    });
    while (true) {
      throw_if_failed("barrier");
      cudaError_t status = cudaEventQuery(work->ended());
      if (status == cudaSuccess) break;
      STRATA_CHECK(status == cudaErrorNotReady, "nccl barrier on rank {}: {}", rank_, cudaGetErrorString(status));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  void abort(const std::string& reason) override { abort_with("the communicator was aborted: " + reason); }

  std::shared_ptr<Mark> mark() override { return std::make_shared<NcclMark>(); }

  void throw_if_failed(const char* what) {
    if (!aborted_.load()) return;
    std::lock_guard<std::mutex> lock(watch_mutex_);
    STRATA_FAIL("nccl {} on rank {} of {}: {}", what, rank_, world_size_, failure_);
  }

  // The baseline of `strata bench-comm`.
  void plain_all_reduce(Tensor& tensor) {
    check_tensor("all_reduce", tensor, device_);
    throw_if_failed("all_reduce");
    std::lock_guard<std::mutex> lock(nccl_mutex_);
    ncclResult_t status = ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                                        nccl_type(tensor.dtype()), ncclSum, comm_, cuda::stream());
    status = settle(status, Clock::now() + timeout_);
    STRATA_CHECK(status == ncclSuccess, "nccl plain all_reduce: {}", describe(status));
  }

 private:
  struct InFlight {
    Event done;
    Clock::time_point issued;
    std::string what;
  };

  void check_nccl(ncclResult_t status, const char* what) {
    STRATA_CHECK(status == ncclSuccess, "nccl: {} failed: {}", what, ncclGetErrorString(status));
  }

  std::string describe(ncclResult_t status) {
    const char* last = comm_ ? ncclGetLastError(comm_) : nullptr;
    return fmt::format("{}{}{}", ncclGetErrorString(status), last && *last ? ": " : "", last ? last : "");
  }

  // A non-blocking call that answered ncclInProgress is done when the
  // communicator's asynchronous state leaves ncclInProgress.
  // Spins for the first millisecond (calls usually settle within microseconds),
  // then polls every millisecond (initialisation can take seconds).
  ncclResult_t settle(ncclResult_t status, Clock::time_point deadline) {
    auto spin_until = Clock::now() + std::chrono::milliseconds(1);
    while (status == ncclInProgress && Clock::now() < deadline) {
      if (Clock::now() < spin_until) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      ncclResult_t query = ncclCommGetAsyncError(comm_, &status);
      if (query != ncclSuccess) return query;
    }
    return status;
  }

  // Issues call(stream) on `stream`: the communicator's own stream (after the
  // compute stream's work so far) or the compute stream itself.
  template <class Call>
  std::shared_ptr<NcclWork> enqueue(const char* what, const Tensor& keep_alive, bool timed, cudaStream_t stream,
                                    Call&& call) {
    throw_if_failed(what);
    std::lock_guard<std::mutex> lock(nccl_mutex_);
    if (stream != cuda::stream()) {
      check_cuda(cudaEventRecord(inputs_ready_.get(), cuda::stream()), "cudaEventRecord");
      check_cuda(cudaStreamWaitEvent(stream, inputs_ready_.get(), 0), "cudaStreamWaitEvent");
    }
    Event started;
    if (timed) {
      started = make_event(true);
      check_cuda(cudaEventRecord(started.get(), stream), "cudaEventRecord");
    }
    ncclResult_t status = settle(call(stream), Clock::now() + timeout_);
    if (status != ncclSuccess) {
      std::string reason = status == ncclInProgress ? "still in progress after the timeout" : describe(status);
      abort_locked(fmt::format("{} failed: {}", what, reason));
      throw_if_failed(what);
    }
    Event ended = make_event(timed);
    check_cuda(cudaEventRecord(ended.get(), stream), "cudaEventRecord");
    {
      std::lock_guard<std::mutex> watch_lock(watch_mutex_);
      in_flight_.push_back(InFlight{ended, Clock::now(), what});
    }
    return std::make_shared<NcclWork>(this, keep_alive, std::move(started), std::move(ended));
  }

  void abort_with(const std::string& reason) {
    std::lock_guard<std::mutex> lock(nccl_mutex_);
    abort_locked(reason);
  }

  // With nccl_mutex_ held, so no other NCCL call is under way.
  void abort_locked(const std::string& reason) {
    if (aborted_.load()) return;
    {
      std::lock_guard<std::mutex> lock(watch_mutex_);
      failure_ = reason;
      aborted_at_ = Clock::now();
    }
    aborted_.store(true);
    ncclCommAbort(comm_);
  }

  void watch() {
    cudaSetDevice(device_.index);
    std::unique_lock<std::mutex> lock(watch_mutex_);
    while (!stopping_) {
      watch_changed_.wait_for(lock, std::chrono::milliseconds(50));
      if (stopping_) return;
      if (aborted_.load()) {
        if (Clock::now() - aborted_at_ > timeout_) {
          std::fprintf(stderr, "strata: rank %d: %s; still running %.0f s after aborting NCCL, exiting\n", rank_,
                       failure_.c_str(), timeout_.count() / 1000.0);
          std::fflush(stderr);
          std::_Exit(1);
        }
        continue;
      }
      std::string reason;
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress)
        reason = fmt::format("NCCL reported an asynchronous error: {} (a peer rank has probably died)",
                             describe(async));
      while (reason.empty() && !in_flight_.empty()) {
        const InFlight& oldest = in_flight_.front();
        cudaError_t status = cudaEventQuery(oldest.done.get());
        if (status == cudaSuccess) {
          in_flight_.pop_front();
        } else if (status != cudaErrorNotReady) {
          reason = fmt::format("CUDA error while {} was in flight: {}", oldest.what, cudaGetErrorString(status));
        } else {
          if (Clock::now() - oldest.issued > timeout_)
            reason = fmt::format("{} did not complete within {} s (dist.timeout_s): a peer rank has died or hangs",
                                 oldest.what, timeout_.count() / 1000.0);
          break;
        }
      }
      if (reason.empty()) continue;
      in_flight_.clear();
      lock.unlock();
      abort_with(reason);
      std::fprintf(stderr, "strata: rank %d: %s; NCCL communicator aborted\n", rank_, reason.c_str());
      std::fflush(stderr);
      lock.lock();
    }
  }

  const int rank_, world_size_;
  const Device device_;
  const std::chrono::milliseconds timeout_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  Event inputs_ready_;  // re-recorded by every call: the stream wait takes its state at the time
  Tensor barrier_value_;

  std::mutex nccl_mutex_;  // one NCCL call at a time (the watchdog's abort included)
  std::atomic<bool> aborted_{false};

  std::mutex watch_mutex_;  // guards what follows
  std::condition_variable watch_changed_;
  std::deque<InFlight> in_flight_;
  std::string failure_;
  Clock::time_point aborted_at_;
  bool stopping_ = false;
  std::thread watchdog_;
};

void NcclWork::wait() {
  owner_->throw_if_failed("wait");
  check_cuda(cudaStreamWaitEvent(cuda::stream(), ended_.get(), 0), "cudaStreamWaitEvent");
  waited_ = true;
}

}  // namespace

std::shared_ptr<Communicator> make_nccl_communicator(const ConnectOptions& options, gloo::rendezvous::Store& store) {
  return std::make_shared<NcclCommunicator>(options, store);
}

void plain_nccl_all_reduce(Communicator& communicator, Tensor& tensor) {
  auto* nccl = dynamic_cast<NcclCommunicator*>(&communicator);
  STRATA_CHECK(nccl != nullptr, "plain_nccl_all_reduce: the communicator is {}, not nccl", communicator.backend());
  nccl->plain_all_reduce(tensor);
}

}  // namespace strata::dist

#else

namespace strata::dist {

std::shared_ptr<Communicator> make_nccl_communicator(const ConnectOptions& options, gloo::rendezvous::Store&) {
  STRATA_FAIL("dist.backend nccl: this Strata was built without CUDA");
}

void plain_nccl_all_reduce(Communicator&, Tensor&) { STRATA_FAIL("plain_nccl_all_reduce: built without CUDA"); }

}  // namespace strata::dist

#endif
