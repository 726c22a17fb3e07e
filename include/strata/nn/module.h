// Module: the node of a model tree. A module owns its parameters and its child
// modules, each under a local name; walking the tree joins the names with dots, so
// a parameter is known by its path from the root ("layers.3.mixer.in_proj.weight").
// That path is what checkpoints store, what the optimizer's state is keyed by and
// what error messages print.
//
// Every walk (named_parameters, named_modules, ...) visits a module's own
// parameters first, then its children, each in registration order, so the order is
// the same on every run and every rank.
//
// Modules are held by std::shared_ptr and are not copyable. A layer defines its
// own forward(...) (signatures differ between layers, so the base class has none).
//
// Parameters are float32 master weights (see include/strata/optim/optimizer.h for
// how mixed precision fits together).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "strata/core/tensor.h"

namespace strata::nn {

struct NamedParameter {
  std::string name;    // full dotted path from the module the walk started at
  Tensor tensor;       // a leaf that requires grad
  bool weight_decay;   // false for norm weights and biases: the optimizer skips their decay
};

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Parameters of this module and all its descendants, own ones first, then each
  // child's in registration order. A tensor registered in several modules (tied
  // weights) is listed once, under its first path, so the optimizer updates it once.
  // Each tensor's name() is set to its path (relative to this module), so messages
  // about it say which parameter it is.
  std::vector<NamedParameter> named_parameters() const;
  std::vector<Tensor> parameters() const;
  int64_t num_parameters() const;  // total elements

  // This module (named "") and every descendant, pre-order. The pointers live as
  // long as the tree does.
  std::vector<std::pair<std::string, Module*>> named_modules();
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const { return children_; }

  // Training mode (dropout is active) for this module and all descendants.
  void train(bool training = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Moves (or casts) every parameter of the tree. The parameter tensors are
  // REPLACED by new leaves on the target device (or of the target dtype); any
  // Tensor handle taken earlier still refers to the old values. So: move the model
  // before building its optimizer or registering grad hooks, and have layers read
  // their parameters through parameter(name) (the layers here do) rather than keep
  // copies. Gradients move along, tied parameters stay tied, and a parameter with
  // grad hooks is an error.
  void to(Device device);
  void to(DType dtype);  // floating dtypes only

  // Drops every parameter's gradient (the next backward pass starts from none).
  void zero_grad();

  // A parameter registered on this module under its local name ("weight").
  const Tensor& parameter(const std::string& local_name) const;

 protected:
  // Takes `tensor` as a parameter named `name` (no dots: paths are built by the
  // tree). It becomes a contiguous leaf that requires grad. Returns it.
  Tensor register_parameter(const std::string& name, Tensor tensor, bool weight_decay = true);

  // Adds `module` as the child `name`; returns it, typed as given.
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }

 private:
  struct Slot {
    std::string name;
    Tensor tensor;
    bool weight_decay;
  };

  void add_child(const std::string& name, std::shared_ptr<Module> module);
  void check_new_name(const std::string& name) const;
  void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out,
                          std::unordered_set<const TensorImpl*>& seen) const;
  void collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out);
  template <class Convert>
  void replace_parameters(const Convert& convert);

  std::vector<Slot> parameters_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// A sequence of modules named "0", "1", ... (so layer k of a stack is
// "layers.k.*" when the list is registered as "layers").
class ModuleList : public Module {
 public:
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    register_module(std::to_string(modules_.size()), module);
    modules_.push_back(module);
    return module;
  }
  size_t size() const { return modules_.size(); }
  bool empty() const { return modules_.empty(); }
  const std::shared_ptr<Module>& operator[](size_t index) const;
  // Element `index` as an M; an error when it is out of range or of another type.
  template <class M>
  std::shared_ptr<M> get(size_t index) const {
    auto typed = std::dynamic_pointer_cast<M>((*this)[index]);
    STRATA_CHECK(typed != nullptr, "ModuleList: element {} is not of the requested type", index);
    return typed;
  }
  auto begin() const { return modules_.begin(); }
  auto end() const { return modules_.end(); }

 private:
  std::vector<std::shared_ptr<Module>> modules_;
};

}  // namespace strata::nn
