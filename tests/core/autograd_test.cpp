#include "support/check.h"

using namespace strata;

TEST_CASE("gradients accumulate across uses and across backward passes") {
  Tensor x = Tensor::from_vector<double>({1, 2, 3}, {3}).set_requires_grad(true);
  // y = sum(x * x + x): dy/dx = 2x + 1
  autograd::backward(ops::sum(ops::add(ops::mul(x, x), x)));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{3, 5, 7});
  autograd::backward(ops::sum(ops::mul(x, 2.0)));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{5, 7, 9});
}

TEST_CASE("a grad hook runs once, after every use of the leaf has delivered") {
  Tensor w = Tensor::from_vector<double>({2}, {1}).set_requires_grad(true);
  Tensor x = Tensor::from_vector<double>({3}, {1});
  int calls = 0;
  double seen = 0;
  w.register_grad_hook([&](const Tensor& grad) {
    ++calls;
    seen = grad.item();
  });
  // loss = w*x + w*w*x: d/dw = x + 2wx = 3 + 12 = 15; w is used by three nodes.
  Tensor loss = ops::sum(ops::add(ops::mul(w, x), ops::mul(ops::mul(w, w), x)));
  autograd::backward(loss);
  CHECK(calls == 1);
  CHECK(seen == 15.0);
}

TEST_CASE("nothing is recorded under NoGradGuard") {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  autograd::NoGradGuard guard;
  Tensor y = ops::mul(x, x);
  CHECK_FALSE(y.grad_fn());
  CHECK_FALSE(y.requires_grad());
  CHECK_THROWS_WITH_AS(autograd::backward(ops::sum(y)), doctest::Contains("does not require grad"), Error);
}

TEST_CASE("saved tensors are released once their node ran") {
  Tensor x = testing::random({256, 256}, 1).set_requires_grad(true);
  Tensor loss = ops::sum(ops::exp(ops::mul(x, 3.0)));  // exp saves its 512 KiB output
  std::shared_ptr<autograd::Node> exp_node = loss.grad_fn()->inputs()[0].node;
  REQUIRE(exp_node);
  CHECK_FALSE(exp_node->released());
  int64_t before = memory_stats(Device::cpu()).current_bytes;
  autograd::backward(loss);
  CHECK(exp_node->released());
  // x.grad (512 KiB) was allocated and the saved exp output (512 KiB) freed; had the
  // node kept it, usage would have grown by 512 KiB.
  CHECK(memory_stats(Device::cpu()).current_bytes <= before);
  CHECK_THROWS_WITH_AS(autograd::backward(loss), doctest::Contains("a second time"), Error);
}

TEST_CASE("retain_graph allows a second pass") {
  Tensor x = Tensor::from_vector<double>({2}, {1}).set_requires_grad(true);
  Tensor loss = ops::sum(ops::mul(x, x));
  autograd::backward(loss, Tensor(), true);
  autograd::backward(loss);
  CHECK(x.grad().item() == 8.0);
}

TEST_CASE("activation checkpointing gives the same gradients, dropout included") {
  auto block = [](const std::vector<Tensor>& in) {
    Tensor h = ops::tanh(ops::mul(in[0], in[1]));
    return std::vector<Tensor>{ops::dropout(ops::exp(h), 0.5, true)};
  };
  Tensor w_plain = testing::random({4, 5}, 7).set_requires_grad(true);
  Tensor w_ckpt = w_plain.clone().set_requires_grad(true);
  Tensor x_plain = testing::random({4, 5}, 8).set_requires_grad(true);
  Tensor x_ckpt = x_plain.clone().set_requires_grad(true);

  manual_seed(99);
  Tensor plain = block({x_plain, w_plain})[0];
  autograd::backward(ops::sum(ops::mul(plain, plain)));

  manual_seed(99);
  Tensor checkpointed = autograd::checkpoint(block, {x_ckpt, w_ckpt})[0];
  // The checkpointed forward keeps no saved tensors inside the block: one node only.
  CHECK(checkpointed.grad_fn()->name() == "checkpoint");
  autograd::backward(ops::sum(ops::mul(checkpointed, checkpointed)));

  CHECK(testing::max_abs_difference(plain, checkpointed) == 0.0);
  CHECK(testing::max_abs_difference(x_plain.grad(), x_ckpt.grad()) < 1e-12);
  CHECK(testing::max_abs_difference(w_plain.grad(), w_ckpt.grad()) < 1e-12);
}

TEST_CASE("a backward function returning a wrong shape is reported with the op's name") {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad(true);
  Tensor y = ops::mul(x, 1.0);
  autograd::record("broken_op", {x}, y, [](const Tensor& g) { return std::vector<Tensor>{Tensor::zeros({3}, DType::Float64)}; });
  CHECK_THROWS_WITH_AS(autograd::backward(ops::sum(y)), doctest::Contains("backward of broken_op returned a gradient of shape [3]"), Error);
}
