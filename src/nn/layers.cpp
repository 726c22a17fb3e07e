#include "strata/nn/layers.h"

#include <cmath>

#include "strata/nn/init.h"
#include "strata/ops/ops.h"

namespace strata::nn {

namespace {
void check_last_dim(const char* layer, const Tensor& x, int64_t dim) {
  STRATA_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == dim, "{}: expected input (..., {}), got {}", layer, dim,
               x.str());
}
}  // namespace

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, Generator& generator)
    : in_features_(in_features), out_features_(out_features), has_bias_(bias) {
  STRATA_CHECK(in_features > 0 && out_features > 0, "Linear: sizes must be positive, got in {} and out {}",
               in_features, out_features);
  double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  Tensor weight = Tensor::empty({out_features, in_features});
  init::uniform_(weight, -bound, bound, generator);
  register_parameter("weight", weight, true);
  if (bias) {
    Tensor b = Tensor::empty({out_features});
    init::uniform_(b, -bound, bound, generator);
    register_parameter("bias", b, false);
  }
}

Tensor Linear::bias() const { return has_bias_ ? parameter("bias") : Tensor(); }

Tensor Linear::forward(const Tensor& x) const {
  check_last_dim("Linear", x, in_features_);
  return ops::linear(x, weight(), bias());
}

Embedding::Embedding(int64_t vocab_size, int64_t dim, Generator& generator, double stddev)
    : vocab_size_(vocab_size), dim_(dim) {
  STRATA_CHECK(vocab_size > 0 && dim > 0, "Embedding: sizes must be positive, got vocab {} and dim {}", vocab_size,
               dim);
  Tensor weight = Tensor::empty({vocab_size, dim});
  init::normal_(weight, 0.0, stddev, generator);
  register_parameter("weight", weight, true);
}

Tensor Embedding::forward(const Tensor& indices) const { return ops::embedding(weight(), indices); }

LayerNorm::LayerNorm(int64_t dim, double eps, bool affine) : dim_(dim), eps_(eps), affine_(affine) {
  STRATA_CHECK(dim > 0 && eps > 0.0, "LayerNorm: dim must be positive and eps positive, got dim {} and eps {}", dim,
               eps);
  if (affine) {
    register_parameter("weight", Tensor::ones({dim}), false);
    register_parameter("bias", Tensor::zeros({dim}), false);
  }
}

Tensor LayerNorm::forward(const Tensor& x) const {
  check_last_dim("LayerNorm", x, dim_);
  if (affine_) return ops::layer_norm(x, parameter("weight"), parameter("bias"), eps_);
  return ops::layer_norm(x, Tensor(), Tensor(), eps_);  // undefined: no scale, no shift
}

RMSNorm::RMSNorm(int64_t dim, double eps) : dim_(dim), eps_(eps) {
  STRATA_CHECK(dim > 0 && eps > 0.0, "RMSNorm: dim must be positive and eps positive, got dim {} and eps {}", dim, eps);
  register_parameter("weight", Tensor::ones({dim}), false);
}

Tensor RMSNorm::forward(const Tensor& x) const {
  check_last_dim("RMSNorm", x, dim_);
  return ops::rms_norm(x, weight(), eps_);
}

Dropout::Dropout(double p) : p_(p) {
  STRATA_CHECK(p >= 0.0 && p < 1.0, "Dropout: probability {} is outside [0, 1)", p);
}

Tensor Dropout::forward(const Tensor& x) const {
  if (!is_training() || p_ == 0.0) return x;
  return ops::dropout(x, p_, true);
}

Activation parse_activation(const std::string& name) {
  if (name == "gelu") return Activation::GELU;
  if (name == "relu") return Activation::ReLU;
  if (name == "silu") return Activation::SiLU;
  STRATA_FAIL("unknown activation '{}' (expected gelu, relu or silu)", name);
}

const char* activation_name(Activation activation) {
  switch (activation) {
    case Activation::GELU: return "gelu";
    case Activation::ReLU: return "relu";
    case Activation::SiLU: return "silu";
  }
  return "?";
}

Tensor activate(const Tensor& x, Activation activation) {
  switch (activation) {
    case Activation::GELU: return ops::gelu(x);
    case Activation::ReLU: return ops::relu(x);
    case Activation::SiLU: return ops::silu(x);
  }
  STRATA_FAIL("activate: unknown activation {}", static_cast<int>(activation));
}

MLP::MLP(int64_t dim, int64_t hidden, Activation activation, bool bias, Generator& generator)
    : activation_(activation) {
  up = register_module("up", std::make_shared<Linear>(dim, hidden, bias, generator));
  down = register_module("down", std::make_shared<Linear>(hidden, dim, bias, generator));
}

Tensor MLP::forward(const Tensor& x) const { return down->forward(activate(up->forward(x), activation_)); }

GatedMLP::GatedMLP(int64_t dim, int64_t hidden, bool bias, Generator& generator, Activation activation)
    : activation_(activation) {
  gate = register_module("gate", std::make_shared<Linear>(dim, hidden, bias, generator));
  up = register_module("up", std::make_shared<Linear>(dim, hidden, bias, generator));
  down = register_module("down", std::make_shared<Linear>(hidden, dim, bias, generator));
}

Tensor GatedMLP::forward(const Tensor& x) const {
  return down->forward(ops::mul(activate(gate->forward(x), activation_), up->forward(x)));
}

}  // namespace strata::nn
