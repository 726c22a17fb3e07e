#include <map>

#include "strata/models/model.h"

namespace strata::models {

namespace {
std::map<std::string, ModelFactory>& registry() {
  static std::map<std::string, ModelFactory> families;
  return families;
}
}  // namespace

bool register_family(const std::string& name, ModelFactory factory) {
  registry()[name] = std::move(factory);
  return true;
}

std::vector<std::string> families() {
  std::vector<std::string> names;
  for (const auto& [name, factory] : registry()) names.push_back(name);
  return names;
}

std::shared_ptr<Model> build_model(const config::Config& config, Generator& generator) {
  std::string family = config.get_choice("model.family", families());
  return with_context("building model '" + family + "'", [&] { return registry().at(family)(config, generator); });
}

}  // namespace strata::models
