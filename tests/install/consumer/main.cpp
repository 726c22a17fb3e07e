// Trains y = 3x by gradient descent on one weight through the installed library.
#include <cstdio>

#include "strata/autograd/autograd.h"
#include "strata/ops/ops.h"

int main() {
  using namespace strata;
  Tensor w = Tensor::zeros({1}).set_requires_grad(true);
  Tensor x = Tensor::from_vector<float>({1, 2, 3}, {3});
  Tensor y = ops::mul(x, 3.0);
  for (int step = 0; step < 100; ++step) {
    Tensor error = ops::sub(ops::mul(x, w), y);
    autograd::backward(ops::mean(ops::mul(error, error)));
    Tensor update = ops::mul(w.grad(), -0.05);
    w.copy_(ops::add(w.detach(), update));
    w.zero_grad();
  }
  std::printf("w = %.4f\n", w.item());
  return w.item() > 2.99 && w.item() < 3.01 ? 0 : 1;
}
