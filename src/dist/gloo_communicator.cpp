// The CPU back end, on Gloo over TCP.
//
// Gloo's collectives block the calling thread, so every operation runs on one
// worker thread, in the order it was issued (which keeps all ranks' operations in
// the same order, and lets an asynchronous all-reduce overlap the caller's work).
// A synchronous call is an asynchronous one that is waited for. Each operation has
// its own tag, and Gloo's timeout bounds how long it waits for a peer; the first
// failure is kept, and every later operation fails with it.
#include <arpa/inet.h>
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/reduce_scatter.h>
#include <gloo/rendezvous/context.h>
#include <gloo/transport/tcp/device.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "dist/backends.h"

namespace strata::dist {

namespace {

using Clock = std::chrono::steady_clock;

double milliseconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

class GlooMark : public Mark {
 public:
  Clock::time_point at = Clock::now();
};

class GlooWork : public Work {
 public:
  explicit GlooWork(std::string what) : what_(std::move(what)) {}

  void wait() override {
    std::unique_lock<std::mutex> lock(mutex_);
    done_changed_.wait(lock, [&] { return done_; });
    if (!error_.empty()) throw Error(error_);
  }
  double duration_ms() override {
    wait();
    return milliseconds_between(started_, ended_);
  }
  double ended_after_ms(const Mark& since) override {
    wait();
    return milliseconds_between(dynamic_cast<const GlooMark&>(since).at, ended_);
  }

  const std::string& what() const { return what_; }
  void start() { started_ = Clock::now(); }
  void complete(std::string error) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ended_ = Clock::now();
      error_ = std::move(error);
      done_ = true;
    }
    done_changed_.notify_all();
  }

 private:
  std::string what_;
  std::mutex mutex_;
  std::condition_variable done_changed_;
  bool done_ = false;
  std::string error_;
  Clock::time_point started_, ended_;
};

// The address this host uses to reach `host` (the master): Gloo binds to it, so
// the other ranks can reach this one the same way. Loopback masters stay on
// loopback.
std::string local_address_towards(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  int status = ::getaddrinfo(host.c_str(), "9", &hints, &found);
  STRATA_CHECK(status == 0, "gloo: cannot resolve the master address '{}': {}", host, ::gai_strerror(status));
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  // connect() on a datagram socket sends nothing: it only picks the route and source address.
  bool routed = fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) == 0;
  ::freeaddrinfo(found);
  sockaddr_in local{};
  socklen_t length = sizeof local;
  routed = routed && ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) == 0;
  if (fd >= 0) ::close(fd);
  STRATA_CHECK(routed, "gloo: no route to the master address '{}': {} (set GLOO_SOCKET_IFNAME to the interface to use)",
               host, std::strerror(errno));
  char text[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &local.sin_addr, text, sizeof text);
  return text;
}

template <class T>
gloo::AllreduceOptions::Func reduction(ReduceOp op) {
  using Raw = void (*)(void*, const void*, const void*, size_t);
  return op == ReduceOp::Max ? static_cast<Raw>(&gloo::max<T>) : static_cast<Raw>(&gloo::sum<T>);
}

template <class T>
const gloo::ReductionFunction<T>* reduction_function(ReduceOp op) {
  return op == ReduceOp::Max ? gloo::ReductionFunction<T>::max : gloo::ReductionFunction<T>::sum;
}

template <class T>
void divide(T* values, size_t count, int world_size) {
  for (size_t i = 0; i < count; ++i) values[i] /= static_cast<T>(world_size);
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(const ConnectOptions& options, gloo::rendezvous::Store& store)
      : rank_(options.rank), world_size_(options.world_size), timeout_(options.timeout) {
    gloo::transport::tcp::attr attr;
    if (!options.interface.empty()) {
      attr.iface = options.interface;
    } else {
      attr.hostname = local_address_towards(options.master_addr);
    }
    try {
      auto device = gloo::transport::tcp::CreateDevice(attr);
      auto context = std::make_shared<gloo::rendezvous::Context>(rank_, world_size_);
      context->setTimeout(timeout_);
      context->connectFullMesh(store, device);
      context_ = context;
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      STRATA_FAIL("gloo: connecting rank {} of {} (bound to {}) failed: {}", rank_, world_size_,
                  attr.iface.empty() ? attr.hostname : attr.iface, e.what());
    }
    worker_ = std::thread([this] { run_worker(); });
  }

  ~GlooCommunicator() override {
    // Leaving because of an error: what is queued would only wait for peers.
    if (std::uncaught_exceptions() > 0) abort("rank " + std::to_string(rank_) + " is leaving after an error");
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    queue_changed_.notify_all();
    worker_.join();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  Device device() const override { return Device::cpu(); }
  std::string backend() const override { return "gloo"; }

  std::shared_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op, bool timed) override {
    check_tensor("all_reduce", tensor, device());
    check_reducible("all_reduce", tensor.dtype(), op);
    std::string what = fmt::format("all_reduce({}, {})", tensor.str(), reduce_op_name(op));
    return submit(std::move(what), [this, tensor, op](uint32_t tag) mutable {
      switch (tensor.dtype()) {
        case DType::Float32:
          all_reduce(tensor.data<float>(), tensor.numel(), op, tag);
          break;
        case DType::Float64:
          all_reduce(tensor.data<double>(), tensor.numel(), op, tag);
          break;
        case DType::Int32:
          all_reduce(tensor.data<int32_t>(), tensor.numel(), op, tag);
          break;
        case DType::Int64:
          all_reduce(tensor.data<int64_t>(), tensor.numel(), op, tag);
          break;
        default: {  // bfloat16, through float32
          std::vector<float> values = tensor.to_vector<float>();
          all_reduce(values.data(), static_cast<int64_t>(values.size()), op, tag);
          bfloat16* out = tensor.data<bfloat16>();
          for (size_t i = 0; i < values.size(); ++i) out[i] = float_to_bf16(values[i]);
        }
      }
    });
  }

  void broadcast(Tensor& tensor, int root) override {
    check_tensor("broadcast", tensor, device());
    STRATA_CHECK(root >= 0 && root < world_size_, "broadcast: root {} is not a rank of {}", root, world_size_);
    submit(fmt::format("broadcast({}, root {})", tensor.str(), root), [this, tensor, root](uint32_t tag) {
      if (tensor.numel() == 0) return;
      gloo::BroadcastOptions options(context_);
      options.setOutput(static_cast<uint8_t*>(tensor.data_ptr()), tensor.numel() * tensor.element_size());
      options.setRoot(root);
      options.setTag(tag);
      options.setTimeout(timeout_);
      gloo::broadcast(options);
    })->wait();
  }

  void all_gather(const Tensor& input, Tensor& output) override {
    check_tensor("all_gather", input, device());
    check_tensor("all_gather", output, device());
    check_scatter_sizes("all_gather", output, input, world_size_);
    submit(fmt::format("all_gather({})", input.str()), [this, input, output](uint32_t tag) {
      if (input.numel() == 0) return;
      size_t bytes = static_cast<size_t>(input.numel()) * input.element_size();
      gloo::AllgatherOptions options(context_);
      // Gloo only reads its input, but takes it as writable memory.
      options.setInput(static_cast<uint8_t*>(input.data_ptr()), bytes);
      options.setOutput(static_cast<uint8_t*>(output.data_ptr()), bytes * world_size_);
      options.setTag(tag);
      options.setTimeout(timeout_);
      gloo::allgather(options);
    })->wait();
  }

  void reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) override {
    check_tensor("reduce_scatter", input, device());
    check_tensor("reduce_scatter", output, device());
    check_reducible("reduce_scatter", input.dtype(), op);
    check_scatter_sizes("reduce_scatter", input, output, world_size_);
    submit(fmt::format("reduce_scatter({}, {})", input.str(), reduce_op_name(op)), [this, input, output, op](uint32_t tag) {
      switch (input.dtype()) {
        case DType::Float32:
          reduce_scatter(input.data<float>(), output.data<float>(), output.numel(), op);
          break;
        case DType::Float64:
          reduce_scatter(input.data<double>(), output.data<double>(), output.numel(), op);
          break;
        case DType::Int32:
          reduce_scatter(input.data<int32_t>(), output.data<int32_t>(), output.numel(), op);
          break;
        case DType::Int64:
          reduce_scatter(input.data<int64_t>(), output.data<int64_t>(), output.numel(), op);
          break;
        default: {  // bfloat16, through float32
          std::vector<float> values = input.to_vector<float>();
          std::vector<float> part(static_cast<size_t>(output.numel()));
          reduce_scatter(values.data(), part.data(), output.numel(), op);
          bfloat16* out = output.data<bfloat16>();
          for (size_t i = 0; i < part.size(); ++i) out[i] = float_to_bf16(part[i]);
        }
      }
      // Gloo's halving-doubling sends its last notifications without waiting for
      // them to leave: a rank that went on to close its connections could lose them
      // for a peer still waiting. A barrier keeps every rank until all are done.
      gloo::BarrierOptions options(context_);
      options.setTag(tag);
      options.setTimeout(timeout_);
      gloo::barrier(options);
    })->wait();
  }

  void barrier() override {
    submit("barrier", [this](uint32_t tag) {
      gloo::BarrierOptions options(context_);
      options.setTag(tag);
      options.setTimeout(timeout_);
      gloo::barrier(options);
    })->wait();
  }

  void abort(const std::string& reason) override {
    std::deque<Task> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (failure_.empty()) failure_ = "the communicator was aborted: " + reason;
      dropped.swap(queue_);
    }
    for (Task& task : dropped) task.work->complete(not_run_message(task.work->what()));
  }

  std::shared_ptr<Mark> mark() override { return std::make_shared<GlooMark>(); }

 private:
  using Body = std::function<void(uint32_t tag)>;

  template <class T>
  void all_reduce(T* data, int64_t count, ReduceOp op, uint32_t tag) {
    if (count == 0) return;
    gloo::AllreduceOptions options(context_);
    options.setOutput(data, static_cast<size_t>(count));
    options.setReduceFunction(reduction<T>(op));
    options.setTag(tag);
    options.setTimeout(timeout_);
    gloo::allreduce(options);
    if (op == ReduceOp::Avg) divide(data, static_cast<size_t>(count), world_size_);
  }

  // Recursive halving and doubling: each rank ends with its reduced slice first in
  // the working copy.
  template <class T>
  void reduce_scatter(const T* input, T* output, int64_t part, ReduceOp op) {
    if (part == 0) return;
    std::vector<T> work(input, input + part * world_size_);
    gloo::ReduceScatterHalvingDoubling<T> algorithm(context_, {work.data()}, static_cast<int>(work.size()),
                                                    std::vector<int>(world_size_, static_cast<int>(part)),
                                                    reduction_function<T>(op));
    algorithm.run();
    std::copy(work.begin(), work.begin() + part, output);
    if (op == ReduceOp::Avg) divide(output, static_cast<size_t>(part), world_size_);
  }

  // Called with mutex_ held.
  std::string not_run_message(const std::string& what) const {
    return fmt::format("gloo {} on rank {} of {} was not run: {}", what, rank_, world_size_, failure_);
  }

  std::shared_ptr<GlooWork> submit(std::string what, Body body) {
    auto work = std::make_shared<GlooWork>(std::move(what));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!failure_.empty()) {
        work->complete(not_run_message(work->what()));
        return work;
      }
      queue_.push_back(Task{work, std::move(body)});
    }
    queue_changed_.notify_one();
    return work;
  }

  void run_worker() {
    uint32_t tag = 0;
    while (true) {
      Task task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        queue_changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
        if (!failure_.empty()) {
          task.work->complete(not_run_message(task.work->what()));
          continue;
        }
      }
      task.work->start();
      std::string error;
      try {
        task.body(tag++);
      } catch (const std::exception& e) {
        error = fmt::format("gloo {} failed on rank {} of {}: {} (another rank has probably failed or stopped)",
                            task.work->what(), rank_, world_size_, e.what());
        std::lock_guard<std::mutex> lock(mutex_);
        if (failure_.empty()) failure_ = "an earlier operation failed: " + error;
      }
      task.work->complete(std::move(error));
    }
  }

  const int rank_, world_size_;
  const std::chrono::milliseconds timeout_;
  std::shared_ptr<gloo::Context> context_;

  std::mutex mutex_;
  std::condition_variable queue_changed_;
  struct Task {
    std::shared_ptr<GlooWork> work;
    Body body;
  };
  std::deque<Task> queue_;
  std::string failure_;  // why operations no longer run: the first failure, or abort()
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace

std::shared_ptr<Communicator> make_gloo_communicator(const ConnectOptions& options, gloo::rendezvous::Store& store) {
  return std::make_shared<GlooCommunicator>(options, store);
}

}  // namespace strata::dist
