// connect() and what both back ends share.
#include "strata/dist/communicator.h"

#include "dist/backends.h"
#include "dist/store.h"

namespace strata::dist {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Avg:
      return "avg";
    case ReduceOp::Max:
      return "max";
  }
  return "?";
}

void check_tensor(const char* what, const Tensor& tensor, Device device) {
  STRATA_CHECK(tensor.defined(), "{}: the tensor is undefined", what);
  STRATA_CHECK(tensor.device() == device, "{}: tensor {} is not on the communicator's device {}", what, tensor.str(),
               device.str());
  STRATA_CHECK(tensor.is_contiguous(), "{}: tensor {} is not contiguous (call contiguous() first)", what, tensor.str());
}

void check_reducible(const char* what, DType dtype, ReduceOp op) {
  bool supported = dtype == DType::Float32 || dtype == DType::Float64 || dtype == DType::BFloat16 ||
                   dtype == DType::Int32 || dtype == DType::Int64;
  STRATA_CHECK(supported, "{}: cannot reduce {} tensors (float32, float64, bfloat16, int32 and int64 can be)", what,
               dtype_name(dtype));
  STRATA_CHECK(op != ReduceOp::Avg || is_floating(dtype),
               "{}: avg of {} tensors is not supported (sum them and divide where the rounding is yours to choose)",
               what, dtype_name(dtype));
}

void check_scatter_sizes(const char* what, const Tensor& whole, const Tensor& part, int world_size) {
  STRATA_CHECK(whole.dtype() == part.dtype(), "{}: dtypes differ: {} and {}", what, whole.str(), part.str());
  STRATA_CHECK(whole.numel() == part.numel() * world_size,
               "{}: {} must have world size ({}) times the elements of {}", what, whole.str(), world_size, part.str());
}

std::shared_ptr<Communicator> connect(const ConnectOptions& options) {
  STRATA_CHECK(options.world_size >= 1 && options.rank >= 0 && options.rank < options.world_size,
               "dist: rank {} is not in [0, world size {})", options.rank, options.world_size);
  std::string backend = options.backend;
  if (backend == "auto") backend = options.device.is_cuda() ? "nccl" : "gloo";
  STRATA_CHECK(backend == "nccl" || backend == "gloo", "dist.backend: expected auto, nccl or gloo, got '{}'", backend);
  STRATA_CHECK(backend != "nccl" || options.device.is_cuda(),
               "dist.backend nccl needs a CUDA device, but this rank runs on {}", options.device.str());
  STRATA_CHECK(backend != "gloo" || options.device.is_cpu(),
               "dist.backend gloo communicates CPU tensors, but this rank runs on {} (use nccl, or device: cpu)",
               options.device.str());
  std::string where = options.rendezvous_dir.empty()
                          ? fmt::format("tcp://{}:{}", options.master_addr, options.store_port)
                          : "file://" + options.rendezvous_dir;
  return with_context(fmt::format("joining {} ranks as rank {} ({}, rendezvous {})", options.world_size,
                                  options.rank, backend, where),
                      [&] {
                        Rendezvous rendezvous = open_rendezvous(options);
                        std::shared_ptr<Communicator> communicator =
                            backend == "nccl" ? make_nccl_communicator(options, *rendezvous.store)
                                              : make_gloo_communicator(options, *rendezvous.store);
                        // Rank 0's store must outlive every rank's last read of it.
                        communicator->barrier();
                        return communicator;
                      });
}

std::vector<double> sum_over_ranks(Communicator& communicator, const std::vector<double>& values) {
  if (values.empty()) return {};
  Tensor sums = Tensor::from_vector<double>(values, {static_cast<int64_t>(values.size())}, communicator.device());
  communicator.all_reduce(sums, ReduceOp::Sum);
  return sums.to_vector<double>();
}

}  // namespace strata::dist
