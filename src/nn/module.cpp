#include "strata/nn/module.h"

#include <unordered_map>
#include <unordered_set>

namespace strata::nn {

namespace {
std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}
}  // namespace

void Module::check_new_name(const std::string& name) const {
  STRATA_CHECK(!name.empty() && name.find('.') == std::string::npos,
               "module: name '{}' must be non-empty and contain no '.' (paths are joined with dots)", name);
  for (const Slot& slot : parameters_)
    STRATA_CHECK(slot.name != name, "module: '{}' is already registered as a parameter", name);
  for (const auto& [child_name, child] : children_)
    STRATA_CHECK(child_name != name, "module: '{}' is already registered as a child module", name);
}

Tensor Module::register_parameter(const std::string& name, Tensor tensor, bool weight_decay) {
  check_new_name(name);
  STRATA_CHECK(tensor.defined(), "module: parameter '{}' is an undefined tensor", name);
  STRATA_CHECK(is_floating(tensor.dtype()), "module: parameter '{}' is {}, not a floating tensor", name,
               tensor.str());
  // A contiguous leaf (the tensor itself when it is one): optimizers update it in place.
  Tensor leaf = tensor.is_leaf() && tensor.is_contiguous() ? tensor : tensor.detach().contiguous();
  leaf.set_requires_grad(true);
  leaf.set_name(name);
  parameters_.push_back(Slot{name, leaf, weight_decay});
  return leaf;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name(name);
  STRATA_CHECK(module != nullptr, "module: child '{}' is null", name);
  children_.emplace_back(name, std::move(module));
}

const Tensor& Module::parameter(const std::string& local_name) const {
  for (const Slot& slot : parameters_)
    if (slot.name == local_name) return slot.tensor;
  STRATA_FAIL("module: no parameter named '{}' on this module", local_name);
}

void Module::collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out,
                                std::unordered_set<const TensorImpl*>& seen) const {
  for (const Slot& slot : parameters_) {
    if (!seen.insert(slot.tensor.impl()).second) continue;  // shared: listed once, under its first path
    std::string path = join(prefix, slot.name);
    Tensor tensor = slot.tensor;
    tensor.set_name(path);
    out.push_back(NamedParameter{std::move(path), tensor, slot.weight_decay});
  }
  for (const auto& [name, child] : children_) child->collect_parameters(join(prefix, name), out, seen);
}

std::vector<NamedParameter> Module::named_parameters() const {
  std::vector<NamedParameter> out;
  std::unordered_set<const TensorImpl*> seen;
  collect_parameters("", out, seen);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (NamedParameter& p : named_parameters()) out.push_back(std::move(p.tensor));
  return out;
}

int64_t Module::num_parameters() const {
  int64_t total = 0;
  for (const NamedParameter& p : named_parameters()) total += p.tensor.numel();
  return total;
}

void Module::collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out) {
  out.emplace_back(prefix, this);
  for (const auto& [name, child] : children_) child->collect_modules(join(prefix, name), out);
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out;
  collect_modules("", out);
  return out;
}

void Module::train(bool training) {
  training_ = training;
  for (const auto& [name, child] : children_) child->train(training);
}

template <class Convert>
void Module::replace_parameters(const Convert& convert) {
  // A tensor registered in several places is converted once, so it stays shared.
  std::unordered_map<const TensorImpl*, Tensor> converted;
  for (auto& [path, module] : named_modules()) {
    for (Slot& slot : module->parameters_) {
      const Tensor& old = slot.tensor;
      if (auto done = converted.find(old.impl()); done != converted.end()) {
        slot.tensor = done->second;
        continue;
      }
      STRATA_CHECK(old.impl()->grad_hooks.empty(),
                   "module: parameter {} has grad hooks; move the model before registering them", old.name());
      Tensor moved = convert(old);
      if (moved.impl()->storage == old.impl()->storage) continue;  // already on that device, of that dtype
      moved.set_requires_grad(true);
      moved.set_name(old.name());
      if (old.grad().defined()) moved.set_grad(convert(old.grad()));
      converted.emplace(old.impl(), moved);
      slot.tensor = moved;
    }
  }
}

void Module::to(Device device) {
  replace_parameters([device](const Tensor& t) { return t.to(device); });
}

void Module::to(DType dtype) {
  STRATA_CHECK(is_floating(dtype), "module: cannot cast parameters to {}, not a floating dtype", dtype_name(dtype));
  replace_parameters([dtype](const Tensor& t) { return t.to(dtype); });
}

void Module::zero_grad() {
  for (const NamedParameter& p : named_parameters()) p.tensor.impl()->grad.reset();
}

const std::shared_ptr<Module>& ModuleList::operator[](size_t index) const {
  STRATA_CHECK(index < modules_.size(), "ModuleList: index {} out of range for a list of {}", index, modules_.size());
  return modules_[index];
}

}  // namespace strata::nn
