// Communicators: the collectives data parallelism needs (all-reduce, broadcast,
// all-gather, reduce-scatter, barrier) among a fixed group of processes, one per
// rank, behind one interface with two back ends:
//   - Gloo (CPU tensors), over TCP, on the library PyTorch's CPU back end uses;
//   - NCCL (CUDA tensors), on a dedicated stream that is ordered against Strata's
//     compute stream (strata::cuda::stream()) by events, so communication can run
//     while the compute stream goes on with the backward pass.
// connect() makes one: the ranks meet through a small key-value store, served over
// TCP by rank 0 (at master_addr:store_port) or kept in a directory on a shared
// filesystem; Gloo publishes its addresses there, NCCL its unique id.
//
// Every call is collective: all ranks make the same calls in the same order, with
// tensors of the same shape and dtype on the communicator's device(). Tensors must
// be contiguous. Element types: float32, float64, int32 and int64 everywhere;
// bfloat16 too (NCCL reduces it natively, Gloo through float32). Average is for
// floating types only. Broadcast and all-gather move any dtype.
//
// Failures: a rank that dies or stops answering makes the other ranks' calls throw
// strata::Error within the timeout (Gloo: its own per-operation timeout; NCCL: a
// non-blocking communicator and a watchdog thread that polls for asynchronous
// errors and calls ncclCommAbort when an operation outlives the timeout). After a
// failure or abort() every call throws, naming the first failure.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "strata/core/tensor.h"

namespace strata::dist {

enum class ReduceOp { Sum, Avg, Max };
const char* reduce_op_name(ReduceOp op);

// A moment in the order of the caller's work: an event recorded on the compute
// stream (NCCL) or a steady-clock time (Gloo). Used to measure how long
// communication went on after the computation that could hide it had finished.
class Mark {
 public:
  virtual ~Mark() = default;
};

// An operation started by an *_async call.
class Work {
 public:
  virtual ~Work() = default;
  // Orders the caller's next work after the operation: Gloo blocks until it is
  // complete; NCCL makes the compute stream wait for it (the host goes on). Throws
  // strata::Error if the operation failed. The tensor must stay alive until then.
  virtual void wait() = 0;
  // For operations started with timed = true, once they are complete (after wait()
  // and, on CUDA, a synchronisation of the compute stream): how long the operation
  // ran, and how long after `since` it ended (negative when it ended before).
  virtual double duration_ms() = 0;
  virtual double ended_after_ms(const Mark& since) = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual Device device() const = 0;          // where the tensors of its calls live
  virtual std::string backend() const = 0;    // "gloo" or "nccl"

  // tensor = op over all ranks of tensor, in place on every rank.
  // The asynchronous form runs beside the compute stream (the gradient reducer
  // overlaps it with the backward pass); the blocking form may run on the compute
  // stream itself, which saves the cross-stream synchronisation for small tensors.
  virtual std::shared_ptr<Work> all_reduce_async(Tensor& tensor, ReduceOp op, bool timed = false) = 0;
  virtual void all_reduce(Tensor& tensor, ReduceOp op = ReduceOp::Sum) { all_reduce_async(tensor, op)->wait(); }
  // tensor = rank root's tensor, on every rank.
  virtual void broadcast(Tensor& tensor, int root) = 0;
  // output (world_size * n elements) = every rank's input (n elements) in rank order.
  virtual void all_gather(const Tensor& input, Tensor& output) = 0;
  // input has world_size * n elements; output (n) = op over ranks of this rank's
  // slice input[rank * n, (rank + 1) * n).
  virtual void reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) = 0;
  // Returns once every rank has called it.
  virtual void barrier() = 0;
  // Stops communicating at once: operations in flight fail (NCCL: ncclCommAbort;
  // Gloo: its pending operation ends by error or timeout) and every later call
  // throws an Error that gives `reason`. Safe from any thread; idempotent.
  virtual void abort(const std::string& reason) = 0;

  virtual std::shared_ptr<Mark> mark() = 0;  // see Mark
};

struct ConnectOptions {
  std::string backend = "auto";  // auto (nccl for a CUDA device, gloo for the CPU), nccl or gloo
  int rank = 0;
  int world_size = 1;
  Device device = Device::cpu();  // cpu for Gloo; cuda:k for NCCL
  // Rendezvous: a TCP key-value store served by rank 0 at master_addr:store_port,
  // or, when rendezvous_dir is set, files in that directory (on a filesystem every
  // rank sees; it must be fresh for each job).
  std::string master_addr = "127.0.0.1";
  int store_port = 29501;
  std::string rendezvous_dir;
  // TCP store: ranks whose run_id differs from rank 0's are refused (LaunchInfo::run_id).
  std::string run_id;
  // Gloo: the network interface to bind (e.g. "eth0"); empty: the address this
  // host uses to reach master_addr.
  std::string interface;
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

// Joins the other ranks. Blocks until all world_size ranks have called it (or the
// timeout passes, which throws).
std::shared_ptr<Communicator> connect(const ConnectOptions& options);

// The element-wise sum over ranks of a few host values (metrics, flags), through
// a tensor on the communicator's device.
std::vector<double> sum_over_ranks(Communicator& communicator, const std::vector<double>& values);

}  // namespace strata::dist
