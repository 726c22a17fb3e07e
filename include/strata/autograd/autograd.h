// The tape. Every differentiable op that runs while grad mode is on, with at least
// one input that requires grad, records a Node: its backward function (a closure
// holding exactly the tensors it saved) and edges to the nodes or leaves that
// produced its inputs. Nodes get increasing sequence numbers, so the tape is the
// creation order; backward(loss) walks the part of the tape reachable from the
// loss in reverse sequence order, once every consumer of a value has delivered
// its gradient. A node's closure is destroyed as soon as it has run, which
// releases its saved tensors.
//
// Gradients of leaves accumulate (+=) into Tensor::grad(); a leaf's grad hooks
// run as soon as its gradient for this pass is complete, which lets data
// parallelism start an all-reduce while the rest of the backward pass runs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "strata/core/tensor.h"

namespace strata::autograd {

using BackwardFunction = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)>;

// Where the gradient of one input goes: a node's output, or a leaf tensor.
struct Edge {
  std::shared_ptr<Node> node;         // set when the input came out of a recorded op
  int output_index = 0;               // which output of `node`
  std::shared_ptr<TensorImpl> leaf;   // set when the input is a leaf that requires grad
  bool defined() const { return node || leaf; }
};

class Node {
 public:
  Node(std::string name, std::vector<Edge> inputs, std::vector<Shape> output_shapes, DType dtype, Device device,
       BackwardFunction backward);

  const std::string& name() const { return name_; }
  uint64_t sequence() const { return sequence_; }
  const std::vector<Edge>& inputs() const { return inputs_; }
  const std::vector<Shape>& output_shapes() const { return output_shapes_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool released() const { return !backward_; }

  // Gradients for each input (undefined where an input needs none). Outputs that got
  // no gradient are given zeros.
  std::vector<Tensor> apply(std::vector<Tensor> grad_outputs);
  void release() { backward_ = nullptr; }

 private:
  std::string name_;
  uint64_t sequence_;
  std::vector<Edge> inputs_;
  std::vector<Shape> output_shapes_;
  DType dtype_;
  Device device_;
  BackwardFunction backward_;
};

// Grad mode (thread-local). Ops record nodes only while it is on.
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool previous_;
};

// True when grad mode is on and some input requires grad: the op must record.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);

// Records one node for `outputs` computed from `inputs`. The backward function gets
// one gradient per output (never undefined) and returns one per input, undefined
// where that input needs none. Does nothing unless needs_grad(inputs).
void record(const std::string& name, const std::vector<Tensor>& inputs, std::vector<Tensor>& outputs,
            BackwardFunction backward);
inline void record(const std::string& name, const std::vector<Tensor>& inputs, Tensor& output,
                   std::function<std::vector<Tensor>(const Tensor& grad_output)> backward) {
  std::vector<Tensor> outputs{output};
  record(name, inputs, outputs,
         [backward = std::move(backward)](const std::vector<Tensor>& grads) { return backward(grads[0]); });
  output = outputs[0];
}

// Runs the backward pass from `root` (gradient `grad`, ones for a scalar root when
// undefined). With retain_graph the nodes keep their saved tensors for another pass.
void backward(const Tensor& root, const Tensor& grad = Tensor(), bool retain_graph = false);

// Activation checkpointing: runs `block` without recording, keeps only its inputs,
// and in the backward pass runs it again with grad on (with the default generator
// rewound, so dropout draws the same masks) to get the gradients. Parameters used
// inside the block receive their gradients during that recomputation.
std::vector<Tensor> checkpoint(const std::function<std::vector<Tensor>(const std::vector<Tensor>&)>& block,
                               const std::vector<Tensor>& inputs, const std::string& name = "checkpoint");

}  // namespace strata::autograd
