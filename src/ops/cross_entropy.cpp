// cross_entropy: the fused kernels of kernels/cross_entropy. The forward computes
// each row's logsumexp and target logit in one read of the logits and saves only
// the per-row logsumexp and the number of counted rows; the backward rebuilds
// softmax(logits) - onehot from them. An out-of-range target is an error on both
// devices (on CUDA the forward reads one flag back from the device, which waits
// for the kernels).
#include "kernels/cross_entropy/cross_entropy_cpu.h"
#include "kernels/cross_entropy/cross_entropy_cuda.h"
#include "ops/op_utils.h"
#include "strata/ops/ops.h"

namespace strata::ops {

namespace {

constexpr const char* kOp = "cross_entropy";
// CUDA kernels index within a row with 32-bit integers (with room for a stride).
constexpr int64_t kMaxCudaClasses = int64_t{1} << 30;

// The loss, the per-row logsumexp and the count are float64 for float64 logits, else float32.
DType loss_dtype(DType logits) { return logits == DType::Float64 ? DType::Float64 : DType::Float32; }

[[noreturn]] void fail_invalid_target(int64_t row, int64_t target, int64_t classes, int64_t ignore_index) {
  STRATA_FAIL("{}: target {} at row {} is outside [0, {}) and is not ignore_index ({})", kOp, target, row, classes,
              ignore_index);
}

// What the backward needs from the forward.
struct SavedForward {
  Tensor logits;         // (N, C), contiguous
  Tensor targets;        // (N), contiguous
  Tensor row_logsumexp;  // (N), loss dtype
  Tensor count;          // scalar, loss dtype
  int64_t ignore_index = -100;
};

template <class T, class Index>
void forward_cpu(const SavedForward& s, const Tensor& loss) {
  const int64_t rows = s.logits.size(0), classes = s.logits.size(1);
  const Index* targets = s.targets.data<Index>();
  const int64_t invalid = kernels::first_invalid_target_cpu(targets, rows, classes, s.ignore_index);
  if (invalid >= 0) fail_invalid_target(invalid, targets[invalid], classes, s.ignore_index);
  kernels::cross_entropy_forward_cpu(s.logits.data<T>(), targets, rows, classes, s.ignore_index,
                                     s.row_logsumexp.data<T>(), loss.data<T>(), s.count.data<T>());
}

template <class T, class Index>
void backward_cpu(const SavedForward& s, double grad_loss, const Tensor& dlogits) {
  const double count = s.count.item();
  kernels::cross_entropy_backward_cpu(s.logits.data<T>(), s.targets.data<Index>(), s.row_logsumexp.data<T>(),
                                      s.logits.size(0), s.logits.size(1), s.ignore_index,
                                      count > 0 ? grad_loss / count : 0.0, dlogits.data<T>());
}

template <class T>
void dispatch_forward_cpu(const SavedForward& s, const Tensor& loss) {
  if (s.targets.dtype() == DType::Int32) {
    forward_cpu<T, int32_t>(s, loss);
  } else {
    forward_cpu<T, int64_t>(s, loss);
  }
}

template <class T>
void dispatch_backward_cpu(const SavedForward& s, double grad_loss, const Tensor& dlogits) {
  if (s.targets.dtype() == DType::Int32) {
    backward_cpu<T, int32_t>(s, grad_loss, dlogits);
  } else {
    backward_cpu<T, int64_t>(s, grad_loss, dlogits);
  }
}

Tensor cross_entropy_backward(const SavedForward& s, const Tensor& grad) {
  Tensor dlogits = Tensor::empty(s.logits.shape(), s.logits.dtype(), s.logits.device());
  if (s.logits.device().is_cpu()) {
    if (s.logits.dtype() == DType::Float32) {
      dispatch_backward_cpu<float>(s, grad.item(), dlogits);
    } else {
      dispatch_backward_cpu<double>(s, grad.item(), dlogits);
    }
    return dlogits;
  }
#ifdef STRATA_WITH_CUDA
  // The scale grad / count is formed on the device: no host round trip.
  const Tensor grad_loss = grad.to(DType::Float32).contiguous();
  kernels::CrossEntropyBackwardCudaArguments args;
  args.dtype = s.logits.dtype();
  args.rows = s.logits.size(0);
  args.classes = s.logits.size(1);
  args.logits = s.logits.data_ptr();
  args.targets = s.targets.data_ptr();
  args.targets_int64 = s.targets.dtype() == DType::Int64;
  args.ignore_index = s.ignore_index;
  args.row_logsumexp = s.row_logsumexp.data<float>();
  args.count = s.count.data<float>();
  args.grad_loss = grad_loss.data<float>();
  args.dlogits = dlogits.data_ptr();
  STRATA_CHECK(kernels::cross_entropy_backward_cuda(args), "{}: {} is not supported on cuda", kOp, s.logits.str());
#endif
  return dlogits;
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  detail::check_defined(kOp, logits, "logits");
  detail::check_defined(kOp, targets, "targets");
  detail::check_compute_dtype(kOp, logits);
  STRATA_CHECK(targets.dtype() == DType::Int32 || targets.dtype() == DType::Int64,
               "{}: targets {} must be int32 or int64", kOp, targets.str());
  detail::check_same_device(kOp, logits, targets);
  STRATA_CHECK(logits.dim() == 2 && logits.size(1) > 0, "{}: logits {} must be (N, C) with C >= 1", kOp,
               logits.str());
  STRATA_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0),
               "{}: targets {} must be (N) for logits {} of shape (N, C)", kOp, targets.str(), logits.str());
  STRATA_CHECK(logits.device().is_cpu() || logits.size(1) <= kMaxCudaClasses, "{}: logits {} have more than {} classes",
               kOp, logits.str(), kMaxCudaClasses);

  SavedForward s;
  s.logits = logits.contiguous().detach();
  s.targets = targets.contiguous().detach();
  s.ignore_index = ignore_index;
  const int64_t rows = logits.size(0);
  const DType dtype = loss_dtype(logits.dtype());
  const Device device = logits.device();
  s.row_logsumexp = Tensor::empty({rows}, dtype, device);
  s.count = Tensor::empty({}, dtype, device);
  Tensor loss = Tensor::empty({}, dtype, device);

  if (device.is_cpu()) {
    if (logits.dtype() == DType::Float32) {
      dispatch_forward_cpu<float>(s, loss);
    } else {
      dispatch_forward_cpu<double>(s, loss);
    }
  } else {
#ifdef STRATA_WITH_CUDA
    Tensor row_loss = Tensor::empty({rows}, DType::Float32, device);
    Tensor invalid_target = Tensor::empty({2}, DType::Int64, device);
    kernels::CrossEntropyForwardCudaArguments args;
    args.dtype = logits.dtype();
    args.rows = rows;
    args.classes = logits.size(1);
    args.logits = s.logits.data_ptr();
    args.targets = s.targets.data_ptr();
    args.targets_int64 = s.targets.dtype() == DType::Int64;
    args.ignore_index = ignore_index;
    args.row_loss = row_loss.data<float>();
    args.row_logsumexp = s.row_logsumexp.data<float>();
    args.loss = loss.data<float>();
    args.count = s.count.data<float>();
    args.invalid_target = invalid_target.data<int64_t>();
    STRATA_CHECK(kernels::cross_entropy_forward_cuda(args), "{}: {} is not supported on cuda", kOp, logits.str());
    const std::vector<int64_t> invalid = invalid_target.to_vector<int64_t>();
    if (invalid[0] >= 0) fail_invalid_target(invalid[0], invalid[1], args.classes, ignore_index);
#endif
  }

  autograd::record(kOp, {logits}, loss,
                   [s](const Tensor& grad) { return std::vector<Tensor>{cross_entropy_backward(s, grad)}; });
  return loss;
}

}  // namespace strata::ops
