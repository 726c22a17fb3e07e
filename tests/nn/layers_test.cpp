// Each layer's forward against the formula written with ops, and finite-difference
// gradient checks in double for the input and every parameter (small sizes).
#include <cmath>

#include "support/check.h"
#include "strata/nn/layers.h"
#include "strata/ops/ops.h"

using namespace strata;

namespace {

// Overwrites every parameter of `module` with U(-1, 1) values, so norms and biases
// are not at their trivial ones/zeros when their gradients are checked.
void randomise(nn::Module& module, uint64_t seed) {
  for (const nn::NamedParameter& p : module.named_parameters()) {
    Tensor values = testing::random(p.tensor.shape(), seed++, p.tensor.dtype());
    Tensor target = p.tensor;
    target.copy_(values);
  }
}

std::vector<Tensor> with_parameters(const Tensor& x, const nn::Module& module) {
  std::vector<Tensor> inputs{x};
  for (Tensor& p : module.parameters()) inputs.push_back(p);
  return inputs;
}

using testing::leaf;

void check_equal(const Tensor& actual, const Tensor& expected, double tolerance = 1e-12) {
  double error = testing::max_abs_difference(actual, expected);
  CHECK_MESSAGE(error <= tolerance, "max |layer - formula| = " << error);
}

}  // namespace

TEST_CASE("Linear computes x W^T + b, with and without bias") {
  for (bool bias : {true, false}) {
    CAPTURE(bias);
    Generator generator{11, 0};
    nn::Linear linear(4, 3, bias, generator);
    linear.to(DType::Float64);
    Tensor x = leaf({2, 5, 4}, 1);
    Tensor expected = ops::matmul(x, ops::transpose(linear.weight(), 0, 1));
    if (bias) expected = ops::add(expected, linear.bias());
    check_equal(linear.forward(x), expected);
    testing::check_gradients([&](const std::vector<Tensor>& xs) { return linear.forward(xs[0]); },
                             with_parameters(x, linear));
  }
  Generator generator{0, 0};
  nn::Linear linear(4, 3, true, generator);
  CHECK_THROWS_WITH_AS(linear.forward(Tensor::zeros({2, 5})),
                       doctest::Contains("Linear: expected input (..., 4), got float32[2, 5] on cpu"), Error);
}

TEST_CASE("Embedding returns the rows its indices name") {
  Generator generator{2, 0};
  nn::Embedding embedding(7, 3, generator);
  embedding.to(DType::Float64);
  Tensor indices = Tensor::from_vector<int64_t>({6, 0, 6, 2}, {2, 2});
  Tensor out = embedding.forward(indices);
  REQUIRE(out.shape() == Shape{2, 2, 3});
  std::vector<double> table = embedding.weight().to_vector<double>(), rows = out.to_vector<double>();
  std::vector<int64_t> ids{6, 0, 6, 2};
  for (int i = 0; i < 4; ++i)
    for (int d = 0; d < 3; ++d) CHECK(rows[i * 3 + d] == table[ids[i] * 3 + d]);
  testing::check_gradients([&](const std::vector<Tensor>&) { return embedding.forward(indices); },
                           {embedding.weight()});
}

TEST_CASE("LayerNorm normalises the last dim, then scales and shifts") {
  for (bool affine : {true, false}) {
    CAPTURE(affine);
    nn::LayerNorm norm(5, 1e-5, affine);
    norm.to(DType::Float64);
    randomise(norm, 30);
    Tensor x = leaf({3, 5}, 3);
    Tensor mean = ops::mean(x, {-1}, true);
    Tensor centered = ops::sub(x, mean);
    Tensor variance = ops::mean(ops::mul(centered, centered), {-1}, true);  // biased, as the papers use
    Tensor expected = ops::mul(centered, ops::rsqrt(ops::add(variance, 1e-5)));
    if (affine) expected = ops::add(ops::mul(expected, norm.parameter("weight")), norm.parameter("bias"));
    check_equal(norm.forward(x), expected);
    testing::check_gradients([&](const std::vector<Tensor>& xs) { return norm.forward(xs[0]); },
                             with_parameters(x, norm));
  }
}

TEST_CASE("RMSNorm divides by the root mean square and scales") {
  nn::RMSNorm norm(6, 1e-6);
  norm.to(DType::Float64);
  randomise(norm, 40);
  Tensor x = leaf({2, 2, 6}, 4);
  Tensor mean_square = ops::mean(ops::mul(x, x), {-1}, true);
  Tensor expected = ops::mul(ops::mul(x, ops::rsqrt(ops::add(mean_square, 1e-6))), norm.weight());
  check_equal(norm.forward(x), expected);
  testing::check_gradients([&](const std::vector<Tensor>& xs) { return norm.forward(xs[0]); },
                           with_parameters(x, norm));
}

TEST_CASE("Dropout drops and rescales while training and is the identity in eval mode") {
  nn::Dropout dropout(0.25);
  Tensor x = testing::random({4000}, 5, DType::Float64, 1.0, 2.0);
  std::vector<double> in = x.to_vector<double>();
  manual_seed(8);
  std::vector<double> out = dropout.forward(x).to_vector<double>();
  int dropped = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    if (out[i] == 0.0)
      ++dropped;
    else
      CHECK(out[i] == doctest::Approx(in[i] / 0.75));
  }
  CHECK(dropped / 4000.0 == doctest::Approx(0.25).epsilon(0.1));
  // The same default-generator state drops the same elements (checkpointing relies on it).
  manual_seed(8);
  CHECK(dropout.forward(x).to_vector<double>() == out);
  dropout.eval();
  CHECK(dropout.forward(x).to_vector<double>() == in);

  dropout.train();
  Tensor small = leaf({3, 4}, 6);
  testing::check_gradients(
      [&](const std::vector<Tensor>& xs) {
        manual_seed(9);  // one mask for every evaluation of the finite differences
        return dropout.forward(xs[0]);
      },
      {small});
}

TEST_CASE("MLP is down(act(up(x))) for each activation") {
  for (nn::Activation activation : {nn::Activation::GELU, nn::Activation::ReLU, nn::Activation::SiLU}) {
    CAPTURE(nn::activation_name(activation));
    Generator generator{12, 0};
    nn::MLP mlp(3, 5, activation, true, generator);
    mlp.to(DType::Float64);
    Tensor x = leaf({2, 3}, 7);
    Tensor hidden = ops::add(ops::matmul(x, ops::transpose(mlp.up->weight(), 0, 1)), mlp.up->bias());
    hidden = activation == nn::Activation::GELU ? ops::gelu(hidden)
             : activation == nn::Activation::ReLU ? ops::relu(hidden)
                                                  : ops::silu(hidden);
    Tensor expected = ops::add(ops::matmul(hidden, ops::transpose(mlp.down->weight(), 0, 1)), mlp.down->bias());
    check_equal(mlp.forward(x), expected);
    testing::check_gradients([&](const std::vector<Tensor>& xs) { return mlp.forward(xs[0]); },
                             with_parameters(x, mlp));
  }
  CHECK(nn::parse_activation("silu") == nn::Activation::SiLU);
}

TEST_CASE("GatedMLP is down(silu(gate(x)) * up(x)) (SwiGLU)") {
  Generator generator{13, 0};
  nn::GatedMLP mlp(4, 6, false, generator);
  mlp.to(DType::Float64);
  CHECK(mlp.named_parameters().size() == 3);
  Tensor x = leaf({3, 4}, 8);
  auto project = [](const Tensor& input, const std::shared_ptr<nn::Linear>& layer) {
    return ops::matmul(input, ops::transpose(layer->weight(), 0, 1));
  };
  Tensor expected = project(ops::mul(ops::silu(project(x, mlp.gate)), project(x, mlp.up)), mlp.down);
  check_equal(mlp.forward(x), expected);
  testing::check_gradients([&](const std::vector<Tensor>& xs) { return mlp.forward(xs[0]); },
                           with_parameters(x, mlp));
}
