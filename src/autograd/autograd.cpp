#include "strata/autograd/autograd.h"

#include <atomic>
#include <queue>
#include <unordered_map>

#include "strata/core/rng.h"
#include "strata/kernels/accumulate.h"

namespace strata::autograd {

namespace {
std::atomic<uint64_t> next_sequence{0};
thread_local bool grad_mode = true;

Edge edge_for(const Tensor& input) {
  if (!input.defined()) return {};
  if (input.grad_fn()) return Edge{input.grad_fn(), input.impl()->output_index, nullptr};
  if (input.requires_grad()) return Edge{nullptr, 0, input.impl_ptr()};
  return {};
}

// Adds `grad` into `slot`. The first gradient is kept as it is (gradients are never
// written in place while they may be shared); later ones make a fresh sum.
void add_into(Tensor& slot, const Tensor& grad) {
  if (!slot.defined()) {
    slot = grad;
    return;
  }
  Tensor sum = slot.clone();
  kernels::accumulate(sum, grad);
  slot = sum;
}

void check_grad(const Node& node, size_t input, const Tensor& grad, const Shape& expected) {
  STRATA_CHECK(grad.shape() == expected, "backward of {} returned a gradient of shape {} for input {} of shape {}",
               node.name(), shape_str(grad.shape()), input, shape_str(expected));
}

Shape input_shape(const Edge& edge) {
  return edge.node ? edge.node->output_shapes()[edge.output_index] : edge.leaf->shape;
}

// The engine: counts, for every node and leaf reachable from the roots, how many
// edges lead to it, then runs nodes in reverse tape order as their counts reach zero.
void run_backward(const std::vector<std::pair<Tensor, Tensor>>& roots, bool retain_graph) {
  std::unordered_map<Node*, int> pending;
  std::unordered_map<TensorImpl*, int> pending_leaf;
  std::vector<Node*> stack;
  auto visit = [&](const Edge& edge) {
    if (edge.leaf) {
      ++pending_leaf[edge.leaf.get()];
    } else if (edge.node) {
      if (pending[edge.node.get()]++ == 0) stack.push_back(edge.node.get());
    }
  };
  for (const auto& [root, grad] : roots) visit(edge_for(root));
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    for (const Edge& edge : node->inputs()) visit(edge);
  }

  auto by_sequence = [](Node* a, Node* b) { return a->sequence() < b->sequence(); };
  std::priority_queue<Node*, std::vector<Node*>, decltype(by_sequence)> ready(by_sequence);
  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  std::unordered_map<Node*, std::shared_ptr<Node>> keep_alive;

  auto deliver = [&](const Edge& edge, const Tensor& grad) {
    if (edge.leaf) {
      Tensor leaf(edge.leaf);
      if (grad.defined()) {
        Tensor accumulated = leaf.grad();
        if (accumulated.defined()) {
          kernels::accumulate(accumulated, grad);
        } else {
          leaf.set_grad(grad.clone());  // owned, so later passes may accumulate in place
        }
      }
      if (--pending_leaf[edge.leaf.get()] == 0 && leaf.grad().defined())
        for (const GradHook& hook : edge.leaf->grad_hooks) hook(leaf.grad());
      return;
    }
    Node* node = edge.node.get();
    keep_alive.emplace(node, edge.node);
    auto& buffer = buffers[node];
    if (buffer.empty()) buffer.resize(node->output_shapes().size());
    if (grad.defined()) add_into(buffer[edge.output_index], grad);
    if (--pending[node] == 0) ready.push(node);
  };

  for (const auto& [root, grad] : roots) {
    Tensor seed = grad;
    if (!seed.defined()) {
      STRATA_CHECK(root.numel() == 1, "backward: root {} is not a scalar, so its gradient must be given", root.str());
      seed = Tensor::ones(root.shape(), root.dtype(), root.device());
    }
    STRATA_CHECK(seed.shape() == root.shape(), "backward: gradient {} does not match root {}", seed.str(), root.str());
    Edge edge = edge_for(root);
    STRATA_CHECK(edge.defined(), "backward: tensor {} does not require grad and has no grad_fn", root.str());
    deliver(edge, seed);
  }

  NoGradGuard no_grad;
  while (!ready.empty()) {
    Node* node = ready.top();
    ready.pop();
    STRATA_CHECK(!node->released(),
                 "backward through {} a second time: its saved tensors were freed (pass retain_graph=true)",
                 node->name());
    std::vector<Tensor> grads = node->apply(std::move(buffers[node]));
    buffers.erase(node);
    if (!retain_graph) node->release();
    STRATA_CHECK(grads.size() == node->inputs().size(), "backward of {} returned {} gradients for {} inputs",
                 node->name(), grads.size(), node->inputs().size());
    for (size_t i = 0; i < grads.size(); ++i) {
      const Edge& edge = node->inputs()[i];
      if (!edge.defined()) continue;
      if (grads[i].defined()) check_grad(*node, i, grads[i], input_shape(edge));
      deliver(edge, grads[i]);
    }
    keep_alive.erase(node);
  }
}

}  // namespace

Node::Node(std::string name, std::vector<Edge> inputs, std::vector<Shape> output_shapes, DType dtype, Device device,
           BackwardFunction backward)
    : name_(std::move(name)),
      sequence_(next_sequence.fetch_add(1)),
      inputs_(std::move(inputs)),
      output_shapes_(std::move(output_shapes)),
      dtype_(dtype),
      device_(device),
      backward_(std::move(backward)) {}

std::vector<Tensor> Node::apply(std::vector<Tensor> grad_outputs) {
  grad_outputs.resize(output_shapes_.size());
  for (size_t k = 0; k < grad_outputs.size(); ++k)
    if (!grad_outputs[k].defined()) grad_outputs[k] = Tensor::zeros(output_shapes_[k], dtype_, device_);
  return with_context("backward of " + name_, [&] { return backward_(grad_outputs); });
}

bool grad_enabled() { return grad_mode; }
NoGradGuard::NoGradGuard() : previous_(grad_mode) { grad_mode = false; }
NoGradGuard::~NoGradGuard() { grad_mode = previous_; }
EnableGradGuard::EnableGradGuard() : previous_(grad_mode) { grad_mode = true; }
EnableGradGuard::~EnableGradGuard() { grad_mode = previous_; }

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!grad_mode) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && (t->requires_grad() || t->grad_fn())) return true;
  return false;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!grad_mode) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && (t.requires_grad() || t.grad_fn())) return true;
  return false;
}

namespace {
void attach(const std::string& name, const std::vector<Tensor>& inputs, std::vector<Tensor>& outputs,
            BackwardFunction backward) {
  std::vector<Edge> edges;
  edges.reserve(inputs.size());
  for (const Tensor& input : inputs) edges.push_back(edge_for(input));
  std::vector<Shape> shapes;
  for (const Tensor& output : outputs) shapes.push_back(output.shape());
  auto node = std::make_shared<Node>(name, std::move(edges), std::move(shapes), outputs.at(0).dtype(),
                                     outputs.at(0).device(), std::move(backward));
  for (size_t k = 0; k < outputs.size(); ++k) {
    // A fresh handle, so an op that returns its input unchanged never rewires the input.
    outputs[k] = outputs[k].detach();
    outputs[k].impl()->grad_fn = node;
    outputs[k].impl()->output_index = static_cast<int>(k);
  }
}
}  // namespace

void record(const std::string& name, const std::vector<Tensor>& inputs, std::vector<Tensor>& outputs,
            BackwardFunction backward) {
  if (!needs_grad(inputs)) return;
  attach(name, inputs, outputs, std::move(backward));
}

void backward(const Tensor& root, const Tensor& grad, bool retain_graph) { run_backward({{root, grad}}, retain_graph); }

std::vector<Tensor> checkpoint(const std::function<std::vector<Tensor>(const std::vector<Tensor>&)>& block,
                               const std::vector<Tensor>& inputs, const std::string& name) {
  if (!grad_mode) return block(inputs);
  Generator generator_before = default_generator();
  std::vector<Tensor> outputs;
  {
    NoGradGuard no_grad;
    outputs = block(inputs);
  }
  auto backward_fn = [block, inputs, generator_before](const std::vector<Tensor>& grad_outputs) {
    std::vector<Tensor> detached;
    for (const Tensor& input : inputs) {
      Tensor d = input.detach();
      if (input.requires_grad() || input.grad_fn()) d.set_requires_grad(true);
      detached.push_back(d);
    }
    Generator generator_now = default_generator();
    default_generator() = generator_before;
    std::vector<Tensor> recomputed;
    {
      EnableGradGuard enable;
      recomputed = block(detached);
    }
    default_generator() = generator_now;
    std::vector<std::pair<Tensor, Tensor>> roots;
    for (size_t k = 0; k < recomputed.size(); ++k)
      if (recomputed[k].grad_fn() || recomputed[k].requires_grad()) roots.emplace_back(recomputed[k], grad_outputs[k]);
    if (!roots.empty()) run_backward(roots, false);
    std::vector<Tensor> grads;
    for (const Tensor& d : detached) grads.push_back(d.requires_grad() ? d.grad() : Tensor());
    return grads;
  };
  attach(name, inputs, outputs, backward_fn);
  return outputs;
}

}  // namespace strata::autograd
