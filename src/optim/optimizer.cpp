#include "strata/optim/optimizer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

namespace strata::optim {

namespace {
constexpr const char* kStepKey = "step";

// "a, b, c and 4 more": error lists stay readable for a whole model.
std::string summarise(const std::vector<std::string>& items) {
  constexpr size_t kShown = 8;
  std::vector<std::string> shown(items.begin(), items.begin() + std::min(items.size(), kShown));
  std::string text = fmt::format("{}", fmt::join(shown, ", "));
  if (items.size() > kShown) text += fmt::format(" and {} more", items.size() - kShown);
  return text;
}
}  // namespace

Optimizer::Optimizer(std::vector<nn::NamedParameter> parameters, double lr, std::vector<std::string> slot_names)
    : parameters_(std::move(parameters)), slot_names_(std::move(slot_names)), lr_(0.0) {
  set_lr(lr);
  std::set<std::string> seen;
  for (const nn::NamedParameter& p : parameters_) {
    STRATA_CHECK(p.tensor.defined(), "optimizer: parameter '{}' is undefined", p.name);
    STRATA_CHECK(seen.insert(p.name).second, "optimizer: parameter '{}' is given twice", p.name);
    STRATA_CHECK(p.tensor.is_leaf() && p.tensor.requires_grad(),
                 "optimizer: parameter '{}' ({}) is not a leaf that requires grad", p.name, p.tensor.str());
    STRATA_CHECK(p.tensor.is_contiguous(), "optimizer: parameter '{}' ({}) is not contiguous", p.name,
                 p.tensor.str());
    std::vector<Tensor> state;
    for (size_t s = 0; s < slot_names_.size(); ++s)
      state.push_back(Tensor::zeros(p.tensor.shape(), p.tensor.dtype(), p.tensor.device()));
    slots_.push_back(std::move(state));
  }
}

void Optimizer::set_lr(double lr) {
  STRATA_CHECK(std::isfinite(lr) && lr >= 0.0, "optimizer: learning rate {} is not a finite non-negative number", lr);
  lr_ = lr;
}

void Optimizer::step() {
  ++steps_taken_;
  update();
}

void Optimizer::zero_grad() {
  for (const nn::NamedParameter& p : parameters_) p.tensor.impl()->grad.reset();
}

Tensor Optimizer::gradient_of(size_t parameter) const {
  const nn::NamedParameter& p = parameters_[parameter];
  Tensor grad = p.tensor.grad();
  if (!grad.defined()) return grad;
  STRATA_CHECK(grad.shape() == p.tensor.shape() && grad.device() == p.tensor.device(),
               "optimizer: gradient {} of parameter '{}' does not match the parameter {}", grad.str(), p.name,
               p.tensor.str());
  return grad.contiguous();
}

NamedState Optimizer::state() const {
  NamedState out;
  for (size_t i = 0; i < parameters_.size(); ++i)
    for (size_t s = 0; s < slot_names_.size(); ++s)
      out.emplace_back(parameters_[i].name + "." + slot_names_[s], slots_[i][s]);
  out.emplace_back(kStepKey, Tensor::scalar(static_cast<double>(steps_taken_), DType::Int64));
  return out;
}

void Optimizer::load_state(const NamedState& state) {
  std::map<std::string, Tensor> given;
  std::vector<std::string> duplicated;
  for (const auto& [name, tensor] : state)
    if (!given.emplace(name, tensor).second) duplicated.push_back(name);

  std::vector<std::string> missing, mismatched;
  std::set<std::string> expected;
  for (const auto& [name, mine] : this->state()) {
    expected.insert(name);
    auto found = given.find(name);
    if (found == given.end()) {
      missing.push_back(name);
    } else if (!found->second.defined() || found->second.shape() != mine.shape()) {
      mismatched.push_back(fmt::format("{} (expected {}, got {})", name, shape_str(mine.shape()),
                                       found->second.defined() ? shape_str(found->second.shape()) : "undefined"));
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, tensor] : given)
    if (!expected.count(name)) unexpected.push_back(name);

  if (!missing.empty() || !unexpected.empty() || !mismatched.empty() || !duplicated.empty()) {
    std::vector<std::string> problems;
    if (!missing.empty()) problems.push_back(fmt::format("missing {}", summarise(missing)));
    if (!unexpected.empty()) problems.push_back(fmt::format("unexpected {}", summarise(unexpected)));
    if (!mismatched.empty()) problems.push_back(fmt::format("wrong shape {}", summarise(mismatched)));
    if (!duplicated.empty()) problems.push_back(fmt::format("given twice {}", summarise(duplicated)));
    STRATA_FAIL("optimizer state does not match this optimizer: {}", fmt::join(problems, "; "));
  }

  double steps = given.at(kStepKey).item();
  STRATA_CHECK(steps >= 0 && steps == std::floor(steps), "optimizer state: step {} is not a non-negative integer",
               steps);
  for (size_t i = 0; i < parameters_.size(); ++i)
    for (size_t s = 0; s < slot_names_.size(); ++s)
      slots_[i][s].copy_(given.at(parameters_[i].name + "." + slot_names_[s]));
  steps_taken_ = static_cast<int64_t>(steps);
}

}  // namespace strata::optim
