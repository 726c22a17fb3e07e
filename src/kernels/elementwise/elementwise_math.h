// The element-wise operations of Strata, written once for the CPU reference (float
// and double) and the CUDA kernels (float math for float32 and bfloat16 storage).
// nvcc-safe: no Tensor, no fmt.
//
// Forward ops map one value (and a scalar parameter) to one value. The backward ops
// are binary: (grad_output, saved) -> grad_input, where `saved` is the forward
// input x or the forward output y, whichever the derivative needs with the least
// recomputation (exp, tanh, sigmoid, sqrt and rsqrt keep y; the others keep x).
#pragma once

#include <cstdint>
#include <math.h>

#include "core/strided.h"
#include "strata/core/host_device.h"

namespace strata::kernels {

enum class UnaryOp : uint8_t {
  Neg,
  Exp,
  Log,
  Tanh,
  Sigmoid,
  Silu,
  Gelu,      // exact: x * Phi(x)
  Softplus,  // log(1 + exp(x)); x itself above 20, where the difference is below exp(-20)
  Relu,
  Sqrt,
  Rsqrt,
  Pow,        // x ^ scalar
  AddScalar,  // x + scalar
  MulScalar,  // x * scalar (the last: kUnaryOpCount)
};
constexpr int kUnaryOpCount = static_cast<int>(UnaryOp::MulScalar) + 1;

enum class BinaryOp : uint8_t {
  Add,
  Sub,
  Mul,
  Div,
  // (grad_output, saved) -> grad_input; the saved operand is named after the colon.
  TanhBackward,      // : y
  SigmoidBackward,   // : y
  SiluBackward,      // : x
  GeluBackward,      // : x
  SoftplusBackward,  // : x
  ReluBackward,      // : x
  SqrtBackward,      // : y
  RsqrtBackward,     // : y
  PowBackward,       // : x, with the exponent as scalar (the last: kBinaryOpCount)
};
constexpr int kBinaryOpCount = static_cast<int>(BinaryOp::PowBackward) + 1;

constexpr double kSoftplusThreshold = 20.0;

// Float overloads that stay in float on the device (the double versions are slow there).
namespace math {
STRATA_HOST_DEVICE inline float exp(float x) { return expf(x); }
STRATA_HOST_DEVICE inline double exp(double x) { return ::exp(x); }
STRATA_HOST_DEVICE inline float log(float x) { return logf(x); }
STRATA_HOST_DEVICE inline double log(double x) { return ::log(x); }
STRATA_HOST_DEVICE inline float log1p(float x) { return log1pf(x); }
STRATA_HOST_DEVICE inline double log1p(double x) { return ::log1p(x); }
STRATA_HOST_DEVICE inline float tanh(float x) { return tanhf(x); }
STRATA_HOST_DEVICE inline double tanh(double x) { return ::tanh(x); }
STRATA_HOST_DEVICE inline float erf(float x) { return erff(x); }
STRATA_HOST_DEVICE inline double erf(double x) { return ::erf(x); }
STRATA_HOST_DEVICE inline float sqrt(float x) { return sqrtf(x); }
STRATA_HOST_DEVICE inline double sqrt(double x) { return ::sqrt(x); }
STRATA_HOST_DEVICE inline float pow(float x, float p) { return powf(x, p); }
STRATA_HOST_DEVICE inline double pow(double x, double p) { return ::pow(x, p); }
STRATA_HOST_DEVICE inline float rsqrt(float x) {
#ifdef __CUDA_ARCH__
  return rsqrtf(x);
#else
  return 1.0f / sqrtf(x);
#endif
}
STRATA_HOST_DEVICE inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }

// On the device the float version takes the hardware exp2 and reciprocal
// instead of the correctly rounded expf and division, whose instruction count
// made silu, sigmoid and their gradients compute-bound on bfloat16 data.
// Relative error below 2e-6 for |x| <= 30 (the rounding of x * log2(e) fed to
// exp2 grows with |x|); exactly 0 at -inf and 1 at +inf.
STRATA_HOST_DEVICE inline float sigmoid(float x) {
#ifdef __CUDA_ARCH__
  return __fdividef(1.0f, 1.0f + __expf(-x));
#else
  return 1.0f / (1.0f + expf(-x));
#endif
}
STRATA_HOST_DEVICE inline double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }
// Phi(x), the standard normal CDF, and phi(x), its density.
template <class T>
STRATA_HOST_DEVICE inline T normal_cdf(T x) {
  return T(0.5) * (T(1) + erf(x * T(0.70710678118654752440)));
}
template <class T>
STRATA_HOST_DEVICE inline T normal_pdf(T x) {
  return T(0.39894228040143267794) * exp(T(-0.5) * x * x);
}
}  // namespace math

template <class T>
STRATA_HOST_DEVICE inline T unary_apply(UnaryOp op, T x, T scalar) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return math::exp(x);
    case UnaryOp::Log: return math::log(x);
    case UnaryOp::Tanh: return math::tanh(x);
    case UnaryOp::Sigmoid: return math::sigmoid(x);
    case UnaryOp::Silu: return x * math::sigmoid(x);
    case UnaryOp::Gelu: return x * math::normal_cdf(x);
    case UnaryOp::Softplus: return x > T(kSoftplusThreshold) ? x : math::log1p(math::exp(x));
    case UnaryOp::Relu: return x > T(0) ? x : T(0);
    case UnaryOp::Sqrt: return math::sqrt(x);
    case UnaryOp::Rsqrt: return math::rsqrt(x);
    case UnaryOp::Pow: return math::pow(x, scalar);
    case UnaryOp::AddScalar: return x + scalar;
    case UnaryOp::MulScalar: return x * scalar;
  }
  return x;
}

template <class T>
STRATA_HOST_DEVICE inline T binary_apply(BinaryOp op, T a, T b, T scalar) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::TanhBackward: return a * (T(1) - b * b);
    case BinaryOp::SigmoidBackward: return a * b * (T(1) - b);
    case BinaryOp::SiluBackward: {
      T s = math::sigmoid(b);
      return a * s * (T(1) + b * (T(1) - s));
    }
    case BinaryOp::GeluBackward: return a * (math::normal_cdf(b) + b * math::normal_pdf(b));
    case BinaryOp::SoftplusBackward: return b > T(kSoftplusThreshold) ? a : a * math::sigmoid(b);
    case BinaryOp::ReluBackward: return b > T(0) ? a : T(0);
    case BinaryOp::SqrtBackward: return T(0.5) * a / b;
    case BinaryOp::RsqrtBackward: return T(-0.5) * a * b * b * b;
    // d/dx x^p = p x^(p-1); a zero exponent gives zero even where x^(p-1) is infinite.
    case BinaryOp::PowBackward: return scalar == T(0) ? T(0) : a * scalar * math::pow(b, scalar - T(1));
  }
  return a;
}

// How the operands of one element-wise launch are laid out. The output is dense
// (row-major over `shape`); the inputs are read through their own strides, 0 on
// broadcast dims. Dims are coalesced by the caller, so a dense input of the output's
// shape arrives as ndim 1 with stride 1.
struct ElementwiseLayout {
  int ndim = 0;
  int64_t numel = 0;
  int64_t shape[core_kernels::kMaxDims] = {};
  int64_t strides[2][core_kernels::kMaxDims] = {};  // [input][dim], in elements
  bool input_dense(int input) const { return ndim == 1 && strides[input][0] == 1; }
};

}  // namespace strata::kernels
