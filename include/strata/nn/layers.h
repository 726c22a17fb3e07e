// The basic layers. Each is a Module whose parameters are created on the CPU in
// float32 from the Generator given to its constructor (the same seed gives the same
// weights, wherever Module::to then moves them), and whose forward() is built from
// strata::ops, so autograd and the CUDA kernels come with it.
//
// Weight decay: matrices (Linear and Embedding weights) decay; biases and norm
// weights do not (registered with weight_decay = false).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "strata/core/rng.h"
#include "strata/nn/module.h"

namespace strata::nn {

// y = x W^T + b. W (out, in) and b (out) are drawn from U(-1/sqrt(in), 1/sqrt(in)),
// as PyTorch's nn.Linear does.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& generator);
  // (..., in) -> (..., out)
  Tensor forward(const Tensor& x) const;
  const Tensor& weight() const { return parameter("weight"); }  // (out, in)
  Tensor bias() const;                                          // (out); undefined without bias
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

 private:
  int64_t in_features_, out_features_;
  bool has_bias_;
};

// A lookup table (vocab, dim) drawn from N(0, stddev^2) (GPT-2's 0.02 by default).
class Embedding : public Module {
 public:
  Embedding(int64_t vocab_size, int64_t dim, Generator& generator, double stddev = 0.02);
  // indices (int32/int64, any shape) -> (*indices.shape, dim)
  Tensor forward(const Tensor& indices) const;
  const Tensor& weight() const { return parameter("weight"); }  // (vocab, dim)
  int64_t vocab_size() const { return vocab_size_; }
  int64_t dim() const { return dim_; }

 private:
  int64_t vocab_size_, dim_;
};

// Normalises the last dim to zero mean and unit variance; with `affine`, then
// scales by a weight (ones) and shifts by a bias (zeros).
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5, bool affine = true);
  // (..., dim) -> (..., dim)
  Tensor forward(const Tensor& x) const;
  double eps() const { return eps_; }

 private:
  int64_t dim_;
  double eps_;
  bool affine_;
};

// x / sqrt(mean(x^2) + eps) * weight over the last dim (Zhang & Sennrich, 2019).
class RMSNorm : public Module {
 public:
  explicit RMSNorm(int64_t dim, double eps = 1e-6);
  // (..., dim) -> (..., dim)
  Tensor forward(const Tensor& x) const;
  const Tensor& weight() const { return parameter("weight"); }  // (dim)
  double eps() const { return eps_; }

 private:
  int64_t dim_;
  double eps_;
};

// Zeroes each element with probability p while training and scales the rest by
// 1 / (1 - p); the identity in eval mode. Draws from the default generator, which
// activation checkpointing rewinds, so a recomputed block drops the same elements.
class Dropout : public Module {
 public:
  explicit Dropout(double p);
  Tensor forward(const Tensor& x) const;
  double p() const { return p_; }

 private:
  double p_;
};

enum class Activation { GELU, ReLU, SiLU };
Activation parse_activation(const std::string& name);  // "gelu", "relu", "silu"
const char* activation_name(Activation activation);
Tensor activate(const Tensor& x, Activation activation);

// down(act(up(x))): dim -> hidden -> dim (the transformer feed-forward block).
class MLP : public Module {
 public:
  MLP(int64_t dim, int64_t hidden, Activation activation, bool bias, Generator& generator);
  // (..., dim) -> (..., dim)
  Tensor forward(const Tensor& x) const;

  std::shared_ptr<Linear> up, down;

 private:
  Activation activation_;
};

// down(act(gate(x)) * up(x)) (Shazeer, "GLU Variants Improve Transformer", 2020);
// with SiLU this is SwiGLU, the LLaMA feed-forward block.
class GatedMLP : public Module {
 public:
  GatedMLP(int64_t dim, int64_t hidden, bool bias, Generator& generator, Activation activation = Activation::SiLU);
  // (..., dim) -> (..., dim)
  Tensor forward(const Tensor& x) const;

  std::shared_ptr<Linear> gate, up, down;

 private:
  Activation activation_;
};

}  // namespace strata::nn
